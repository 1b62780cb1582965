"""A picture of a text-to-image model on a captioned image folder: for each prompt of a prompts
file, the folder's image whose caption sidecar (.txt) is exactly that prompt (top row) above the
model's samples of the prompt, upscaled without smoothing. The samples are those `difforge
sample --prompts FILE --n K --out DIR/sample.png` wrote, K per prompt, in prompt order.

    python3 tools/make_caption_figure.py --data data/emoji-t2i --prompts prompts.txt \\
        --samples runs/emoji-t2i/figure --per-prompt 2 --out docs/t2i-emoji.png

Needs only Pillow (the sd-tools folder of tools/setup_sd_tools.sh has it).
"""
import argparse
from pathlib import Path

from PIL import Image

SCALE, PAD = 4, 2


def captions(folder: Path) -> dict:
    """Caption -> image, for every image with a .txt sidecar under `folder`."""
    out = {}
    for txt in sorted(folder.rglob("*.txt")):
        image = txt.with_suffix(".png")
        if image.exists():
            out.setdefault(" ".join(txt.read_text().split()), image)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--per-prompt", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    prompts = [p for p in args.prompts.read_text().splitlines() if p.strip()]
    figure(args.data, prompts, args.samples, args.per_prompt, args.out)


def figure(data: Path, prompts, samples_dir: Path, per_prompt: int, out: Path):
    """Writes the figure of `prompts` to `out`: per prompt, the image of `data` captioned exactly
    so (if any) above the `per_prompt` samples of it in `samples_dir`."""
    by_caption = captions(data)
    samples = sorted(samples_dir.glob("*.png"))
    if len(samples) < len(prompts) * per_prompt:
        raise SystemExit(f"{samples_dir}: {len(samples)} PNG files for {len(prompts)} prompts x {per_prompt}")
    size = Image.open(samples[0]).width
    columns = []
    for x, prompt in enumerate(prompts):
        real = by_caption.get(prompt)
        # The real image at the model's resolution, as training saw it.
        column = [flatten(Image.open(real)).resize((size, size), Image.BOX) if real else None]
        column += [Image.open(samples[per_prompt * x + k]).convert("RGB") for k in range(per_prompt)]
        columns.append(column)
    grid = grid_of(columns, size * SCALE)
    grid.save(out, optimize=True)
    print(f"{out}: {len(prompts)} prompts")
    for j, p in enumerate(prompts):
        print(f"  {j + 1}. {p}{'' if by_caption.get(p) else ' (no image with this exact caption)'}")


def grid_of(columns, side: int) -> Image.Image:
    """Columns of images (None: left empty), each scaled to side x side without smoothing, on a
    dark background."""
    rows = max(len(c) for c in columns)
    grid = Image.new("RGB", (len(columns) * (side + PAD) + PAD, rows * (side + PAD) + PAD), (40, 40, 40))
    for x, column in enumerate(columns):
        for y, im in enumerate(column):
            if im is not None:
                grid.paste(im.resize((side, side), Image.NEAREST), (PAD + x * (side + PAD), PAD + y * (side + PAD)))
    return grid


def flatten(im: Image.Image) -> Image.Image:
    """Transparent pixels on white, as difforge's folder loader composites them."""
    im = im.convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im).convert("RGB")


if __name__ == "__main__":
    main()
