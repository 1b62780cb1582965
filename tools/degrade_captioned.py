"""Copies of a captioned image folder's first N images (PNG + .txt sidecar), made harder for the
shapes judge, to check that it reads what is drawn and no more:

- `--mode blur`: a 3x3 box blur (edges repeated), then uniform noise of +-20 levels per channel;
  the judge should still read every attribute;
- `--mode shuffle`: the pixels unchanged, each caption taken from another image (i * 7 + 3); the
  judge should fall to chance.

    python3 tools/degrade_captioned.py data/shapes /tmp/blurred --n 2000 --mode blur
    difforge data judge /tmp/blurred --manifest data/shapes/shapes.json

Needs Pillow and NumPy (the sd-tools folder of tools/setup_sd_tools.sh has both).
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def blurred_noisy(img, rng):
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    blurred = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9
    return np.clip(np.round(blurred) + rng.integers(-20, 21, img.shape), 0, 255)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--mode", choices=["blur", "shuffle"], required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    stems = sorted(p.stem for p in args.src.glob("*.png") if p.with_suffix(".txt").exists())[: args.n]
    for i, stem in enumerate(stems):
        img = np.asarray(Image.open(args.src / f"{stem}.png").convert("RGB")).astype(np.float64)
        caption_of = stem
        if args.mode == "blur":
            img = blurred_noisy(img, rng)
        else:
            caption_of = stems[(i * 7 + 3) % len(stems)]
        Image.fromarray(img.astype(np.uint8)).save(args.out / f"{stem}.png")
        (args.out / f"{stem}.txt").write_text((args.src / f"{caption_of}.txt").read_text())
    print(f"{len(stems)} images ({args.mode}) in {args.out}")


if __name__ == "__main__":
    main()
