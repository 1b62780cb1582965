"""Loads the VAE a `difforge vae train` run exported into diffusers and checks it against difforge.

The run folder holds `vae/` (a diffusers AutoencoderKL folder) and `vae-parity.safetensors`:
a few validation images, difforge's posterior means of them and difforge's decoding of those
means. This script loads `vae/` with `diffusers.AutoencoderKL.from_pretrained`, encodes the same
images and decodes the same means, and exits non-zero when either differs from difforge's by more
than --tol (absolute, on the [-1, 1] pixel scale), or when the config's scaling factor is not the
one in the run's summary.

    PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python \\
        tools/check_vae_export.py RUN_DIR
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(args.run / "vae").eval()
    ref = load_file(args.run / "vae-parity.safetensors")
    with torch.no_grad():
        latents = vae.encode(ref["images"]).latent_dist.mean
        decoded = vae.decode(ref["latents"]).sample
    errors = {
        "posterior mean": (latents - ref["latents"]).abs().max().item(),
        "decoded image": (decoded - ref["decoded"]).abs().max().item(),
    }
    summary = json.loads((args.run / "summary.json").read_text())
    scaling = vae.config.scaling_factor
    ok = True
    for what, err in errors.items():
        good = err <= args.tol
        ok &= good
        print(f"{what:15s} max |diffusers - difforge| = {err:.3e} ({'ok' if good else 'FAIL'}, tol {args.tol:g})")
    if abs(scaling - summary["scaling_factor"]) > 1e-9 * abs(scaling):
        print(f"scaling_factor {scaling} in vae/config.json, {summary['scaling_factor']} in summary.json: FAIL")
        ok = False
    else:
        print(f"scaling_factor {scaling:.6f} (1 / std of the training latents, {summary['latents']['std']:.6f})")
    print(f"{ref['images'].shape[0]} images {tuple(ref['images'].shape[1:])}, latents {tuple(ref['latents'].shape[1:])}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
