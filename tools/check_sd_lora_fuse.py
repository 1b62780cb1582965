"""Loads LoRA files difforge exported into diffusers and checks what diffusers makes of them.

For each file: the base diffusers folder's pipeline (SD 1.x/2.x or SDXL, from its model index),
`load_lora_weights(file)` then `fuse_lora()`, and every adapted UNet weight compared with the
base weight plus alpha/rank * up @ down computed here from the file's own tensors (kohya's
layout: `lora_unet_*` with `.alpha`; diffusers': `unet.*.lora_A/lora_B`, alpha from --alpha).
Exits non-zero when a module is not adapted as the file says (relative error above 1e-5).

    PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python \\
        tools/check_sd_lora_fuse.py --base BASE_FOLDER --alpha ALPHA RUN/lora.safetensors RUN/pytorch_lora_weights.safetensors
"""

import argparse
import sys

from diffusers import DiffusionPipeline
from safetensors.torch import load_file


def expected_deltas(raw, module_names, alpha_default):
    """(module, alpha/rank * up @ down) for every adapter in the file."""
    by_underscores = {m.replace(".", "_"): m for m in module_names}
    for key, down in raw.items():
        if key.endswith(".lora_down.weight"):
            stem = key[: -len(".lora_down.weight")]
            up, alpha = raw[stem + ".lora_up.weight"], raw[stem + ".alpha"].item()
            module = by_underscores[stem[len("lora_unet_"):]]
        elif key.endswith(".lora_A.weight"):
            stem = key[: -len(".lora_A.weight")]
            up, alpha = raw[stem + ".lora_B.weight"], alpha_default
            module = stem[len("unet."):]
        else:
            continue
        yield module, alpha / up.shape[1] * (up.flatten(1) @ down.flatten(1)).view(-1, *down.shape[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--alpha", type=float, required=True, help="the alpha of diffusers-layout files (the run's lora.alpha)")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    worst_all = 0.0
    for path in args.files:
        pipe = DiffusionPipeline.from_pretrained(args.base)
        base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        pipe.load_lora_weights(path)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        fused = pipe.unet.state_dict()
        modules = [k[: -len(".weight")] for k in base if k.endswith(".weight")]
        worst, n = 0.0, 0
        for module, delta in expected_deltas(load_file(path), modules, args.alpha):
            want = base[module + ".weight"] + delta.view_as(base[module + ".weight"])
            worst = max(worst, ((fused[module + ".weight"] - want).abs().max() / want.abs().max()).item())
            n += 1
        print(f"{path}: {n} modules fused by diffusers, largest relative weight error {worst:.2e}")
        worst_all = max(worst_all, worst)
    sys.exit(0 if worst_all < 1e-5 else 1)


if __name__ == "__main__":
    main()
