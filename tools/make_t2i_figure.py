"""The README's picture of `make demo-t2i`: for the first N seen evaluation prompts, the training
image with exactly that caption (top row) above the demo model's two samples of the prompt
(judge-seen/, written by tools/demo_t2i.sh), upscaled 4x without smoothing. It is
make_caption_figure.py with the shapes set's prompts file.

    PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python \\
        tools/make_t2i_figure.py --data data/shapes --samples runs/shapes-t2i/judge-seen --out docs/t2i-shapes.png
"""
import argparse
from pathlib import Path

from make_caption_figure import figure


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    prompts = (args.data / "prompts-seen.txt").read_text().splitlines()[: args.n]
    figure(args.data, prompts, args.samples, 2, args.out)


if __name__ == "__main__":
    main()
