"""Fixtures for the LoRA-file parity tests (crates/difforge-model/tests/it/sd_lora.rs).

Adds a random LoRA (rank 4, alpha 8, so scale 2) to the tiny SD 1.5 fixture of
tools/make_sd_fixtures.py with PEFT, as diffusers' training scripts do: on the UNet's attention
projections (to_q, to_k, to_v, to_out.0) and one 3x3 conv (down_blocks.0.resnets.0.conv1, LoCon),
and on the text encoder's q/k/v/out_proj. It is saved three ways:

- `peft.safetensors`: diffusers' `save_lora_weights` (keys `unet.….lora_A.weight`, `text_encoder.…`),
  with the adapter configs in the `lora_adapter_metadata` header entry (lora_alpha 8);
- `peft-nometa.safetensors`: the same tensors without metadata (diffusers then uses scale 1);
- `kohya.safetensors`: kohya's layout (`lora_unet_…​.lora_down.weight`, `.lora_up.weight`,
  `.alpha` as a float16 scalar, `lora_te_…`), as the webui reads it.

Each file is loaded into a fresh pipeline with diffusers' `load_lora_weights` (scale 1), and its
UNet output and text-encoder last hidden state, on the inputs of the tiny SD 1.5
`reference.safetensors`, go to `reference.safetensors` here as `<file stem>.unet.output` and
`<file stem>.text.last_hidden_state`. The script checks that diffusers' loads agree with the
adapters it saved.

Needs torch 2.11, diffusers 0.35.2, transformers 4.57.1 and peft 0.17.1 (tools/setup_sd_tools.sh).
Run: PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/make_sd_lora_fixtures.py
"""
import shutil
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
SD15 = ROOT / "crates" / "difforge-nn" / "tests" / "fixtures" / "sd" / "tiny-sd15"
OUT = ROOT / "crates" / "difforge-model" / "tests" / "fixtures" / "sd-lora"
RANK, ALPHA = 4, 8
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "down_blocks.0.resnets.0.conv1"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(SD15, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return pipe


def outputs(pipe, refs):
    with torch.no_grad():
        unet = pipe.unet(refs["unet.sample"], refs["unet.timesteps"], refs["unet.encoder_hidden_states"]).sample
        text = pipe.text_encoder(input_ids=refs["text.input_ids"]).last_hidden_state
    return unet, text


def randomize(model, seed):
    """PEFT starts lora_B at zero; random halves make every module's change show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def kohya_key(key, prefix):
    """`down_blocks.0.….to_q.lora_A.weight` -> `lora_unet_down_blocks_0_…_to_q.lora_down.weight`."""
    module, half = key.rsplit(".lora_", 1)
    half = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[half]
    return f"{prefix}{module.replace('.', '_')}.{half}"


def main():
    refs = load_file(SD15 / "reference.safetensors")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    pipe = pipeline()
    base_unet, base_text = outputs(pipe, refs)
    unet_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=UNET_TARGETS, init_lora_weights=False)
    text_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TEXT_TARGETS, init_lora_weights=False)
    pipe.unet.add_adapter(unet_config)
    pipe.text_encoder.add_adapter(text_config)
    randomize(pipe.unet, 11)
    randomize(pipe.text_encoder, 12)
    want_unet, want_text = outputs(pipe, refs)
    unet_layers = get_peft_model_state_dict(pipe.unet)
    text_layers = get_peft_model_state_dict(pipe.text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        OUT, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers, weight_name="peft.safetensors",
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict())

    tensors = {f"unet.{k}": v.contiguous() for k, v in unet_layers.items()}
    tensors.update({f"text_encoder.{k}": v.contiguous() for k, v in text_layers.items()})
    save_file(tensors, OUT / "peft-nometa.safetensors")

    kohya = {}
    for layers, prefix in ((unet_layers, "lora_unet_"), (text_layers, "lora_te_")):
        for key, value in layers.items():
            name = kohya_key(key, prefix)
            kohya[name] = value.contiguous()
            kohya[name.split(".")[0] + ".alpha"] = torch.tensor(float(ALPHA), dtype=torch.float16)
    save_file(kohya, OUT / "kohya.safetensors")

    out = {}
    for stem in ("peft", "peft-nometa", "kohya"):
        fresh = pipeline()
        fresh.load_lora_weights(OUT, weight_name=f"{stem}.safetensors")
        unet, text = outputs(fresh, refs)
        out[f"{stem}.unet.output"], out[f"{stem}.text.last_hidden_state"] = unet, text
        scale2 = stem != "peft-nometa"
        for what, got, want, base in (("unet", unet, want_unet, base_unet), ("text", text, want_text, base_text)):
            change = (got - base).abs().max().item()
            err = (got - want).abs().max().item() / want.abs().max().item()
            print(f"{stem} {what}: change from the base {change:.4f}, relative error vs the saved adapters {err:.2e}")
            assert change > 1e-2, f"{stem} {what}: the LoRA changes nothing"
            if scale2:
                assert err < 1e-5, f"{stem} {what}: diffusers' load differs from the adapters it saved"
    assert not torch.allclose(out["peft.unet.output"], out["peft-nometa.unet.output"]), "no metadata: scale 1, not 2"
    save_file({k: v.contiguous() for k, v in out.items()}, OUT / "reference.safetensors")
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
