"""Writes a small fine-tuning set in a new style from the embedded digits sheet: the first
PER_CLASS digits of each class, thickened by a 3x3 dilation ("thick") or inverted ("invert"),
as OUT/<digit>/<i>.png. Prints the mean pixel value of the set on the [-1, 1] scale, the
statistic the LoRA experiment tracks. Needs only numpy (PNG read/written with zlib).

    python tools/make_style_set.py OUT [--style thick|invert] [--per-class 5] [--skip 0] [--suffix=-thick]
"""
import argparse, os, struct, zlib

import numpy as np

SHEET = os.path.join(os.path.dirname(__file__), "..", "assets", "digits.png")


def read_grey_png(path):
    data = open(path, "rb").read()
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour == 0, "expected an 8-bit grey PNG"
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    img, prev, stride = np.zeros((height, width), np.uint8), np.zeros(width, np.int32), width + 1
    for y in range(height):
        f, line = raw[y * stride], np.frombuffer(raw[y * stride + 1:(y + 1) * stride], np.uint8).astype(np.int32)
        out = np.zeros(width, np.int32)
        for x in range(width):
            a = out[x - 1] if x else 0
            b, c = prev[x], (prev[x - 1] if x else 0)
            if f == 0: p = 0
            elif f == 1: p = a
            elif f == 2: p = b
            elif f == 3: p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[x] = (line[x] + p) & 255
        img[y], prev = out, out
    return img


def write_grey_png(path, img):
    raw = b"".join(b"\x00" + row.tobytes() for row in img)
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", img.shape[1], img.shape[0], 8, 0, 0, 0, 0)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def dilate(img):
    p = np.pad(img, 1)
    return np.max([p[dy:dy + img.shape[0], dx:dx + img.shape[1]] for dy in range(3) for dx in range(3)], axis=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--style", default="thick", choices=["thick", "invert"])
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--skip", type=int, default=0, help="start at this index within each class")
    ap.add_argument("--suffix", default="", help="class folder suffix, e.g. --suffix=-thick for new classes 0-thick .. 9-thick")
    a = ap.parse_args()
    sheet = read_grey_png(SHEET)
    values = []
    for d in range(10):
        folder = os.path.join(a.out, f"{d}{a.suffix}")
        os.makedirs(folder, exist_ok=True)
        for i in range(a.skip, a.skip + a.per_class):
            cell = sheet[d * 100 + (i // 100) * 20:d * 100 + (i // 100) * 20 + 20, (i % 100) * 20:(i % 100) * 20 + 20]
            styled = dilate(cell) if a.style == "thick" else 255 - cell
            write_grey_png(os.path.join(folder, f"{i:03}.png"), styled)
            values.append(styled.astype(np.float64) / 127.5 - 1.0)
    print(f"{10 * a.per_class} {a.style} digits in {a.out}; mean pixel {np.mean(values):.4f} (on [-1, 1], at 20x20)")


main()
