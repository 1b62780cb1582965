"""The README's picture of `make demo-t2i`: for the first N evaluation prompts, a training image
with that caption's colour, kind, size and background (top row) above the demo model's two
samples of the prompt (judge-seen/, written by tools/demo_t2i.sh), upscaled 4x without smoothing.

    PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python \\
        tools/make_t2i_figure.py --data data/shapes --samples runs/shapes-t2i/judge-seen --out docs/t2i-shapes.png
"""
import argparse
import json
from pathlib import Path

from PIL import Image

from make_caption_figure import SCALE, grid_of


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    prompts = (args.data / "prompts-seen.txt").read_text().splitlines()[: args.n]
    files = json.loads((args.data / "shapes.json").read_text())["files"]
    by_caption = {}
    for f in files:
        by_caption.setdefault(" ".join(f["caption"].split()), f["file"])
    samples = sorted(args.samples.glob("*.png"))
    columns = []
    for j, prompt in enumerate(prompts):
        real = by_caption.get(prompt)
        column = [Image.open(args.data / real).convert("RGB") if real else None]
        column += [Image.open(samples[2 * j + k]).convert("RGB") for k in range(2)]
        columns.append(column)
    grid = grid_of(columns, columns[0][1].width * SCALE)
    grid.save(args.out, optimize=True)
    print(f"{args.out}: {len(columns)} prompts")
    for j, p in enumerate(prompts):
        print(f"  {j + 1}. {p}{'' if by_caption.get(p) else ' (no training image with this exact caption)'}")


if __name__ == "__main__":
    main()
