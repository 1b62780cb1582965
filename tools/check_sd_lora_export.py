"""Checks LoRA files exported by difforge against diffusers' `load_lora_weights`.

For each of DIR/kohya.safetensors and DIR/diffusers.safetensors (written by the Rust test
`sd_lora_export` when DIFFORGE_LORA_EXPORT_DIR=DIR), or of the files named after DIR (a run
folder of a LoRA run on the tiny SD 1.5 fixture: `lora.safetensors
pytorch_lora_weights.safetensors`, e.g. with text-encoder, projection, feed-forward and conv
adapters), the tiny SD 1.5 fixture pipeline loads the
file with diffusers' `load_lora_weights`, and its UNet output and text encoder last hidden state
on the inputs of the fixture's reference.safetensors are compared with those of the base
pipeline with W += alpha / rank * up @ down merged by hand from the file's raw tensors (alpha
from the `.alpha` tensors, or from the `lora_adapter_metadata` header for diffusers' layout).
So a loader that missed a module, or read the scale as 1, shows up as a large error. If
DIR/difforge_unet_output.safetensors is there (key `output`: difforge's UNet after applying the
LoRA), it is compared with the hand-merged UNet too.

Prints the largest relative errors (max |a - b| / max |b|) and exits nonzero above 1e-4.

Needs torch 2.11, diffusers 0.35.2, transformers 4.57.1 and peft 0.17.1 (tools/setup_sd_tools.sh).
Run: PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/check_sd_lora_export.py DIR [FILE...]
"""
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

# The tiny SD 1.5 pipeline and its reference outputs, as the fixture maker loads them.
from make_sd_lora_fixtures import SD15, outputs, pipeline
LIMIT = 1e-4
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder"}
HALVES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_A.weight": "down",
          ".lora_B.weight": "up", ".alpha": "alpha"}


def relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def module_of(key, networks):
    """(network name, module path, half) of a key of either layout."""
    stem, half = next((key[: -len(s)], h) for s, h in HALVES.items() if key.endswith(s))
    for prefix, net in KOHYA_PREFIXES.items():
        if stem.startswith(prefix):
            underscored = stem[len(prefix):]
            paths = [n for n, m in networks[net].named_modules() if hasattr(m, "weight") and n.replace(".", "_") == underscored]
            assert len(paths) == 1, f"{key}: modules {paths}"
            return net, paths[0], half
    net, path = stem.split(".", 1)
    return net, path, half


def merge_by_hand(pipe, path):
    """W += alpha / rank * up @ down for every module of the file; returns the modules merged."""
    with safe_open(path, framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    networks = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    modules = {}
    for key, tensor in load_file(path).items():
        net, module, half = module_of(key, networks)
        modules.setdefault((net, module), {})[half] = tensor.float()
    with torch.no_grad():
        for (net, module), m in modules.items():
            weight = networks[net].get_submodule(module).weight
            rank = m["down"].shape[0]
            alpha = m["alpha"].item() if "alpha" in m else config.get(f"{net}.lora_alpha")
            if alpha is None:
                sys.exit(f"{path}: no alpha for {net}.{module} (no .alpha tensor, no {net}.lora_alpha in lora_adapter_metadata)")
            delta = (m["up"].flatten(1) @ m["down"].flatten(1)).reshape(weight.shape)
            weight += alpha / rank * delta
    return len(modules)


def main():
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} DIR [FILE...]")
    folder = Path(sys.argv[1])
    names = sys.argv[2:] or ["kohya.safetensors", "diffusers.safetensors"]
    refs = load_file(SD15 / "reference.safetensors")
    base_unet, _ = outputs(pipeline(), refs)
    difforge = folder / "difforge_unet_output.safetensors"
    difforge = load_file(difforge)["output"] if difforge.exists() else None
    worst = 0.0
    for name in names:
        loaded = pipeline()
        loaded.load_lora_weights(str(folder), weight_name=name)
        got_unet, got_text = outputs(loaded, refs)
        by_hand = pipeline()
        n = merge_by_hand(by_hand, folder / name)
        want_unet, want_text = outputs(by_hand, refs)
        errors = {"diffusers UNet": relative_error(got_unet, want_unet),
                  "diffusers text encoder": relative_error(got_text, want_text)}
        if difforge is not None:
            errors["difforge UNet"] = relative_error(difforge, want_unet)
        change = relative_error(want_unet, base_unet)
        print(f"{name}: {n} modules, UNet change from the base {change:.3f}; relative errors vs merged by hand: "
              + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        if change < 1e-3:
            sys.exit(f"{name}: the LoRA does not change the UNet; nothing is checked")
        worst = max(worst, *errors.values())
    if worst > LIMIT:
        sys.exit(f"largest relative error {worst:.2e} > {LIMIT:.0e}")
    print(f"ok: largest relative error {worst:.2e}")


if __name__ == "__main__":
    main()
