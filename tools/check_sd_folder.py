"""Checks that diffusers' StableDiffusionPipeline loads a diffusers folder difforge wrote (a model
from `difforge sd init`, or RUN/diffusers of a trained one) and makes the same image as
`difforge sample` from the same starting latents (torch.Generator("cpu").manual_seed(SEED), which
difforge draws with --noise torch), with DDIM and classifier-free guidance.

Both images are 8-bit PNG pixels, so the tightest agreement possible is one level of 255 where the
two float results fall on either side of a rounding boundary. Exits non-zero above --max-diff.

    PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python \\
        tools/check_sd_folder.py MODEL_FOLDER --prompt "a small red circle at the center on a white background"
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--prompt", default="a large blue square at the top left on a black background")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--max-diff", type=int, default=1, help="largest allowed |pixel difference| (of 255)")
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "difforge"))
    args = ap.parse_args()
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(args.folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(args.seed))
    with torch.no_grad():
        image = pipe(prompt=args.prompt, latents=latents, num_inference_steps=args.steps, guidance_scale=args.guidance,
                     height=size, width=size, output_type="np").images[0]
    want = (image * 255).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "difforge.png"
        subprocess.run([args.bin, "sample", "--checkpoint", str(args.folder), "--prompt", args.prompt, "--seed", str(args.seed),
                        "--noise", "torch", "--steps", str(args.steps), "--guidance", str(args.guidance), "--sampler", "ddim",
                        "--size", f"{size}x{size}", "--out", str(out)], check=True, capture_output=True)
        got = np.asarray(Image.open(out).convert("RGB"))
    diff = np.abs(got.astype(int) - want.astype(int))
    ok = diff.max() <= args.max_diff
    print(f"{args.folder}: {size}x{size}, DDIM {args.steps} steps, guidance {args.guidance}: difforge vs diffusers "
          f"max |pixel difference| {diff.max()} of 255, mean {diff.mean():.4f} ({'ok' if ok else 'FAIL'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
