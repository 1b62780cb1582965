#!/usr/bin/env python3
"""The PyTorch side of `difforge bench`: the same UNet doing the same work per training step and
per sampling step, in PyTorch eager or with torch.compile.

Without --config: the network of `difforge bench --model ref6m`, the 6.1 M-parameter UNet at
32x32 RGB (the network of ../shared/reference/unet_bench.py, 6,140,675 parameters), trained as
difforge trains that preset: cosine schedule, epsilon target, no loss weighting, unconditional,
clipping to 1.0, AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, no weight decay), EMA decay 0.999.

With --config PATH (a difforge run config TOML, as `difforge bench --model PATH`): a mirror of
difforge's UNet built from the config's [model] section (crates/difforge-nn/src/unet: block
order, attention placement, scale-shift conditioning, class embedding with its null row, init of
the zeroed layers), trained with the config's schedule, prediction type, min-SNR-gamma weights,
class dropout, gradient accumulation, clipping, AdamW settings, learning-rate schedule and EMA
decay. Keys the file leaves out take difforge's built-in defaults.

Training step (as difforge's trainer): fresh timesteps and Gaussian noise per micro-batch, x_t
on the schedule, the prediction target, per-image MSE weighted and averaged, backward, global
gradient norm and clipping, AdamW, EMA of a copy of the weights (decay min(ema_decay,
(1+n)/(10+n)), torch._foreach_lerp_), on one fixed batch of uniform random images (and random
labels for a class-conditional model). Written the idiomatic PyTorch way: no host sync inside a
step (difforge reads the loss and the gradient norm back each step).

Sampling: DDIM, eta 0, the config's spacing (trailing for ref6m) and clamp of the predicted x0,
guidance 1 (one forward per step; classes in turn for a class-conditional model), with the EMA
network, at --sample-batch; the result is copied to the CPU.

Prints one JSON line whose field names are those of difforge's BenchReport where they overlap.
"""
import argparse
import copy
import json
import math
import sys
import time
import tomllib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

MULT = [1, 2, 2]
TIMESTEPS = 1000


def conv3(i, o):
    return nn.Conv2d(i, o, 3, padding=1)


# The ref6m network, as ../shared/reference/unet_bench.py writes it.


class ResBlock(nn.Module):
    def __init__(s, i, o, td):
        super().__init__()
        s.n1 = nn.GroupNorm(32, i)
        s.c1 = conv3(i, o)
        s.t = nn.Linear(td, o)
        s.n2 = nn.GroupNorm(32, o)
        s.c2 = conv3(o, o)
        s.skip = nn.Conv2d(i, o, 1) if i != o else None

    def forward(s, x, temb):
        h = s.c1(F.silu(s.n1(x)))
        h = h + s.t(F.silu(temb))[:, :, None, None]
        h = s.c2(F.silu(s.n2(h)))
        return h + (s.skip(x) if s.skip is not None else x)


class Attn(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.n = nn.GroupNorm(32, c)
        s.qkv = nn.Conv2d(c, 3 * c, 1)
        s.out = nn.Conv2d(c, c, 1)

    def forward(s, x):
        b, c, h, w = x.shape
        qkv = s.qkv(s.n(x)).reshape(b, 3, c, h * w).transpose(2, 3)
        q, k, v = qkv[:, 0:1], qkv[:, 1:2], qkv[:, 2:3]
        o = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + s.out(o)


class UNet(nn.Module):
    def __init__(s, c):
        super().__init__()
        td = 4 * c
        s.c = c
        s.t1 = nn.Linear(c, td)
        s.t2 = nn.Linear(td, td)
        s.cin = conv3(3, c)
        s.down = nn.ModuleList()
        s.ds = nn.ModuleList()
        chans = [c]
        ch = c
        for l, m in enumerate(MULT):
            for _ in range(2):
                s.down.append(ResBlock(ch, c * m, td))
                ch = c * m
                chans.append(ch)
            if l + 1 < len(MULT):
                s.ds.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                chans.append(ch)
        s.mid1 = ResBlock(ch, ch, td)
        s.mattn = Attn(ch)
        s.mid2 = ResBlock(ch, ch, td)
        s.up = nn.ModuleList()
        s.us = nn.ModuleList()
        for l in reversed(range(len(MULT))):
            m = MULT[l]
            for _ in range(3):
                sk = chans.pop()
                s.up.append(ResBlock(ch + sk, c * m, td))
                ch = c * m
            if l > 0:
                s.us.append(conv3(ch, ch))
        s.nout = nn.GroupNorm(32, ch)
        s.cout = conv3(ch, 3)

    def forward(s, x, t):
        half = s.c // 2
        freqs = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * (-math.log(10000.0) / half))
        a = t[:, None] * freqs[None]
        temb = torch.cat([a.sin(), a.cos()], 1)
        temb = s.t2(F.silu(s.t1(temb)))
        h = s.cin(x)
        hs = [h]
        bi = 0
        for l in range(len(MULT)):
            for _ in range(2):
                h = s.down[bi](h, temb)
                bi += 1
                hs.append(h)
            if l + 1 < len(MULT):
                h = s.ds[l](h)
                hs.append(h)
        h = s.mid2(s.mattn(s.mid1(h, temb)), temb)
        bi = 0
        for l in reversed(range(len(MULT))):
            for _ in range(3):
                h = s.up[bi](torch.cat([h, hs.pop()], 1), temb)
                bi += 1
            if l > 0:
                h = s.us[len(MULT) - 1 - l](F.interpolate(h, scale_factor=2, mode="nearest"))
        return s.cout(F.silu(s.nout(h)))


# The mirror of difforge's UNet (crates/difforge-nn/src/unet), built from resolved [model]
# settings `m`. Layer names are difforge's, so that a difference is easy to trace.

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "mish": F.mish}


def zeroed(layer):
    """difforge starts these layers at zero weight (bias left as initialised), so that each
    residual branch starts as the identity and the untrained network predicts zero."""
    nn.init.zeros_(layer.weight)
    return layer


class DfResBlock(nn.Module):
    def __init__(s, cin, cout, m):
        super().__init__()
        s.act, s.dropout, s.scale_shift = ACTIVATIONS[m["activation"]], m["dropout"], m["scale_shift"]
        s.norm1 = nn.GroupNorm(m["groups"], cin)
        s.conv1 = conv3(cin, cout)
        s.emb_proj = nn.Linear(4 * m["channels"], 2 * cout if s.scale_shift else cout)
        s.norm2 = nn.GroupNorm(m["groups"], cout)
        s.conv2 = zeroed(conv3(cout, cout))
        s.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(s, x, emb):
        h = s.conv1(s.act(s.norm1(x)))
        e = s.emb_proj(s.act(emb))[:, :, None, None]
        if s.scale_shift:
            scale, shift = e.chunk(2, 1)
            h = s.norm2(h) * (scale + 1) + shift
        else:
            h = s.norm2(h + e)
        h = s.conv2(F.dropout(s.act(h), s.dropout, s.training))
        return (x if s.skip is None else s.skip(x)) + h


class DfAttention(nn.Module):
    """Multi-head self-attention over pixels with separate q/k/v/out linears, as difforge's."""

    def __init__(s, ch, m):
        super().__init__()
        s.heads = m["heads"]
        s.norm = nn.GroupNorm(m["groups"], ch)
        s.to_q, s.to_k, s.to_v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        s.to_out = zeroed(nn.Linear(ch, ch))

    def split_heads(s, x):
        b, n, c = x.shape
        return x.view(b, n, s.heads, c // s.heads).transpose(1, 2)

    def forward(s, x):
        b, c, h, w = x.shape
        tokens = s.norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = (s.split_heads(proj(tokens)) for proj in (s.to_q, s.to_k, s.to_v))
        o = F.scaled_dot_product_attention(q, k, v)
        o = s.to_out(o.transpose(1, 2).reshape(b, h * w, c))
        return x + o.transpose(1, 2).view(b, c, h, w)


class DfEmbedding(nn.Module):
    """Sinusoidal timestep features ([cos, sin], as difforge) through an MLP, plus a learnt class
    row; the extra row num_classes is the null class."""

    def __init__(s, m):
        super().__init__()
        ch, emb = m["channels"], 4 * m["channels"]
        s.features, s.act = ch, ACTIVATIONS[m["activation"]]
        s.linear_1 = nn.Linear(ch, emb)
        s.linear_2 = nn.Linear(emb, emb)
        s.class_embedding = nn.Embedding(m["num_classes"] + 1, emb) if m["num_classes"] > 0 else None

    def forward(s, t, classes):
        half = s.features // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / half))
        a = t.float()[:, None] * freqs[None]
        emb = s.linear_2(s.act(s.linear_1(torch.cat([a.cos(), a.sin()], 1))))
        if s.class_embedding is not None and classes is not None:
            emb = emb + s.class_embedding(classes)
        return emb


class DfStage(nn.Module):
    """One residual block and the attention that may follow it."""

    def __init__(s, res, attn):
        super().__init__()
        s.res, s.attn = res, attn

    def forward(s, x, emb):
        h = s.res(x, emb)
        return h if s.attn is None else s.attn(h)


class DfLevel(nn.Module):
    def __init__(s, stages, resample):
        super().__init__()
        s.stages, s.resample = nn.ModuleList(stages), resample


class DfUNet(nn.Module):
    def __init__(s, m):
        super().__init__()
        c, mult, levels = m["channels"], m["channel_mult"], len(m["channel_mult"])
        sides = [m["image_size"] >> i for i in range(levels)]

        def stage(cin, cout, side):
            attn = DfAttention(cout, m) if side in m["attention_resolutions"] else None
            return DfStage(DfResBlock(cin, cout, m), attn)

        s.act = ACTIVATIONS[m["activation"]]
        s.cond = DfEmbedding(m)
        s.conv_in = conv3(m["in_channels"], c)
        skips, ch = [c], c
        s.down = nn.ModuleList()
        for i, side in enumerate(sides):
            stages = []
            for _ in range(m["res_blocks"]):
                stages.append(stage(ch, c * mult[i], side))
                ch = c * mult[i]
                skips.append(ch)
            down = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i + 1 < levels else None
            if down is not None:
                skips.append(ch)
            s.down.append(DfLevel(stages, down))
        s.mid_res1 = DfResBlock(ch, ch, m)
        s.mid_attn = DfAttention(ch, m) if m["mid_attention"] else None
        s.mid_res2 = DfResBlock(ch, ch, m)
        s.up = nn.ModuleList()
        for i in reversed(range(levels)):
            # One more block than on the way down: it takes the downsampler's skip.
            stages = []
            for _ in range(m["res_blocks"] + 1):
                stages.append(stage(ch + skips.pop(), c * mult[i], sides[i]))
                ch = c * mult[i]
            s.up.append(DfLevel(stages, conv3(ch, ch) if i > 0 else None))
        s.norm_out = nn.GroupNorm(m["groups"], ch)
        s.conv_out = zeroed(conv3(ch, m["out_channels"]))

    def forward(s, x, t, classes=None):
        emb = s.cond(t, classes)
        h = s.conv_in(x)
        skips = [h]
        for level in s.down:
            for st in level.stages:
                h = st(h, emb)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = s.mid_res1(h, emb)
        if s.mid_attn is not None:
            h = s.mid_attn(h)
        h = s.mid_res2(h, emb)
        for level in s.up:
            for st in level.stages:
                h = st(torch.cat([h, skips.pop()], 1), emb)
            if level.resample is not None:
                h = level.resample(F.interpolate(h, scale_factor=2, mode="nearest"))
        return s.conv_out(s.act(s.norm_out(h)))


# Schedules and samplers' timesteps, as crates/difforge-diffusion computes them (in float64).


def linspace(a, b, n):
    return [a] if n == 1 else [a + (b - a) * i / (n - 1) for i in range(n)]


def alphas_cumprod(kind="cosine", n=TIMESTEPS, beta_start=1e-4, beta_end=0.02):
    """diffusers' definitions, as difforge's ScheduleKind (cosine is squaredcos_cap_v2)."""
    if kind == "linear":
        betas = linspace(beta_start, beta_end, n)
    elif kind == "cosine":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = [min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)]
    else:
        betas = [1 / (1 + math.exp(-x)) * (beta_end - beta_start) + beta_start for x in linspace(-6.0, 6.0, n)]
    out, acc = [], 1.0
    for b in betas:
        acc *= 1 - b
        out.append(acc)
    return out


def sampling_timesteps(steps, n, spacing):
    steps = min(max(steps, 1), n)
    if spacing == "leading":
        return [i * (n // steps) for i in reversed(range(steps))]
    ratio = n / steps
    # floor(x + 0.5): Rust's round (half away from zero), not Python's round half to even.
    return [max(math.floor(n - i * ratio + 0.5) - 1, 0) for i in range(steps)]


def min_snr_weight(prediction, snr, gamma):
    """The loss weight of a timestep of this signal-to-noise ratio (1 without weighting)."""
    if gamma <= 0:
        return 1.0
    clipped = min(snr, gamma)
    return {"epsilon": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[prediction]


def prediction_target(prediction, x0, eps, a, s):
    return {"epsilon": lambda: eps, "x0": lambda: x0, "v": lambda: a * eps - s * x0}[prediction]()


def split_prediction(prediction, out, x, a, s):
    """(x0, eps) implied by a network output at x."""
    if prediction == "epsilon":
        return (x - s * out) / a, out
    if prediction == "x0":
        return out, (x - a * out) / s
    return a * x - s * out, s * x + a * out


# What a run config makes of a training and a sampling step.


@dataclass
class Recipe:
    name: str
    build: Callable[[], nn.Module]
    channels: int
    image_size: int
    num_classes: int  # 0: unconditional; else class num_classes is the null class
    alphas_cumprod: list
    prediction: str
    min_snr_gamma: float
    class_dropout: float
    grad_accum: int
    lr: Callable[[int], float]  # the learning rate at a step index
    betas: tuple
    adam_eps: float
    weight_decay: float
    grad_clip: float  # 0: the norm is computed but nothing is clipped
    ema_decay: float
    spacing: str
    clip_x0: bool


def ref6m_recipe(channels):
    """As difforge's preset_config (crates/difforge/src/commands/bench.rs), with this script's
    historic constant learning rate of 2e-4."""
    return Recipe(
        name="ref6m" if channels == 64 else f"reference UNet c={channels}",
        build=lambda: UNet(channels), channels=3, image_size=32, num_classes=0,
        alphas_cumprod=alphas_cumprod(), prediction="epsilon", min_snr_gamma=0.0, class_dropout=0.0,
        grad_accum=1, lr=lambda step: 2e-4, betas=(0.9, 0.999), adam_eps=1e-8, weight_decay=0.0,
        grad_clip=1.0, ema_decay=0.999, spacing="trailing", clip_x0=True,
    )


# The defaults of difforge's config structs (UNetConfig::default and presets, DataConfig,
# DiffusionConfig, TrainConfig, SamplerConfig): what a key the file leaves out takes. The
# README's table shows the digits config instead, which is the default only without a file.
UNET_DEFAULTS = {
    "channels": 64, "channel_mult": [1, 2, 2], "res_blocks": 2, "attention_resolutions": [8],
    "mid_attention": True, "scale_shift": True, "heads": 4, "dropout": 0.0, "activation": "silu",
    "groups": 32, "in_channels": 0, "out_channels": 0, "image_size": 0, "num_classes": 0,
}
UNET_PRESETS = {
    "ref6m": {"channels": 64, "channel_mult": [1, 2, 2], "attention_resolutions": [], "heads": 1,
              "scale_shift": False, "in_channels": 3, "image_size": 32},
    "big64": {"channels": 128, "channel_mult": [1, 2, 2, 2], "attention_resolutions": [16, 8],
              "in_channels": 3, "image_size": 64},
}
DATA_DEFAULTS = {"image_size": 32, "channels": 1}
DIFFUSION_DEFAULTS = {"schedule": "cosine", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                      "prediction": "epsilon", "min_snr_gamma": 0.0, "class_dropout": 0.1}
TRAIN_DEFAULTS = {"steps": 10_000, "grad_accum": 1, "lr": 2e-4, "warmup_steps": 200, "lr_schedule": "cosine",
                  "min_lr_ratio": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8,
                  "weight_decay": 0.0, "grad_clip": 1.0, "ema_decay": 0.999}
SAMPLE_DEFAULTS = {"spacing": "trailing", "clip_x0": True}


def pick(value, options, key):
    if value not in options:
        sys.exit(f"bench_torch.py: {key} = {value!r}: expected one of {', '.join(map(repr, options))}")
    return value


def section(cfg, name, defaults):
    return {**defaults, **cfg.get(name, {})}


def unet_settings(cfg):
    """The [model] section as difforge resolves it: family, preset, the keys given over it, and
    the sizes that default to the data's."""
    table = dict(cfg.get("model", {}))
    pick(table.pop("family", "pixel-unet"), ["pixel-unet"], "model.family")
    preset = table.pop("preset", None)
    if preset is not None:
        pick(preset, list(UNET_PRESETS), "model.preset")
    for key in table:
        pick(key, list(UNET_DEFAULTS), "a [model] key")
    m = {**UNET_DEFAULTS, **UNET_PRESETS.get(preset, {}), **table}
    pick(m["activation"], list(ACTIVATIONS), "model.activation")
    data = section(cfg, "data", DATA_DEFAULTS)
    m["in_channels"] = m["in_channels"] or data["channels"]
    m["out_channels"] = m["out_channels"] or m["in_channels"]
    m["image_size"] = m["image_size"] or data["image_size"]
    return m


def learning_rate(t, step):
    """crates/difforge-train/src/lr.rs: linear warm-up, then constant or cosine to a floor."""
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    if t["lr_schedule"] == "constant":
        return t["lr"]
    progress = min((step - t["warmup_steps"]) / max(t["steps"] - t["warmup_steps"], 1), 1.0)
    floor = t["lr"] * t["min_lr_ratio"]
    return floor + (t["lr"] - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def config_recipe(path):
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    m = unet_settings(cfg)
    d = section(cfg, "diffusion", DIFFUSION_DEFAULTS)
    t = section(cfg, "train", TRAIN_DEFAULTS)
    s = section(cfg, "sample", SAMPLE_DEFAULTS)
    pick(t["lr_schedule"], ["constant", "cosine"], "train.lr_schedule")
    return Recipe(
        name=path, build=lambda: DfUNet(m), channels=m["in_channels"], image_size=m["image_size"],
        num_classes=m["num_classes"],
        alphas_cumprod=alphas_cumprod(pick(d["schedule"], ["linear", "cosine", "sigmoid"], "diffusion.schedule"),
                                      d["timesteps"], d["beta_start"], d["beta_end"]),
        prediction=pick(d["prediction"], ["epsilon", "v", "x0"], "diffusion.prediction"),
        min_snr_gamma=d["min_snr_gamma"], class_dropout=d["class_dropout"] if m["num_classes"] > 0 else 0.0,
        grad_accum=t["grad_accum"], lr=lambda step: learning_rate(t, step),
        betas=(t["adam_beta1"], t["adam_beta2"]), adam_eps=t["adam_eps"], weight_decay=t["weight_decay"],
        grad_clip=t["grad_clip"], ema_decay=t["ema_decay"],
        spacing=pick(s["spacing"], ["trailing", "leading"], "sample.spacing"), clip_x0=s["clip_x0"],
    )


# Measuring.


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def class_args(labels):
    """The extra forward argument of a class-conditional network (none for an unconditional one)."""
    return () if labels is None else (labels,)


def forward_flops(model, r, dev):
    """FLOPs of one forward for one image, as PyTorch's own counter sees them (convolutions,
    matmuls, attention), to set against difforge's analytic count. SDPA runs its math backend
    here: the counter does not see the fused CPU kernel (_scaled_dot_product_flash_attention_for_cpu)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    labels = torch.zeros(1, dtype=torch.long, device=dev) if r.num_classes else None
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, r.channels, r.image_size, r.image_size, device=dev), torch.zeros(1, device=dev), *class_args(labels))
    return float(counter.get_total_flops())


class Trainer:
    """difforge's optimiser step (crates/difforge-train/src/step.rs and loss.rs) on one fixed
    batch, with per-phase timing (--profile) as difforge bench's."""

    PHASES = ("data_s", "forward_s", "backward_s", "optimizer_s", "ema_s")

    def __init__(s, r, model, fwd, ema_params, batch, dev, autocast, sync, gen):
        s.r, s.fwd, s.dev, s.autocast, s.sync, s.batch = r, fwd, dev, autocast, sync, batch
        s.params = list(model.parameters())
        s.ema_params = ema_params
        s.opt = torch.optim.AdamW(s.params, lr=r.lr(0), betas=r.betas, eps=r.adam_eps, weight_decay=r.weight_decay)
        s.acp = torch.tensor(r.alphas_cumprod, dtype=torch.float32, device=dev)
        weights = [min_snr_weight(r.prediction, a / (1 - a), r.min_snr_gamma) for a in r.alphas_cumprod]
        s.loss_weights = torch.tensor(weights, dtype=torch.float32, device=dev)
        shape = (batch, r.channels, r.image_size, r.image_size)
        s.x0 = (torch.rand(shape, generator=gen) * 2 - 1).to(dev).contiguous(memory_format=MEMORY_FORMAT)
        s.labels = torch.randint(0, r.num_classes, (batch,), generator=gen).to(dev) if r.num_classes else None
        s.updates = 0
        s.phases = dict.fromkeys(s.PHASES, 0.0)
        s.profiling = False
        s.last = 0.0

    def lap(s, phase):
        if s.profiling:
            s.sync()
            now = time.perf_counter()
            s.phases[phase] += now - s.last
            s.last = now

    def classes(s):
        """The labels with each replaced by the null class at the class-dropout rate."""
        if s.labels is None:
            return None
        drop = torch.rand(s.batch, device=s.dev) < s.r.class_dropout
        return s.labels.masked_fill(drop, s.r.num_classes)

    def micro_loss(s):
        t = torch.randint(0, len(s.r.alphas_cumprod), (s.batch,), device=s.dev)
        eps = torch.randn_like(s.x0)
        ab = s.acp[t].view(-1, 1, 1, 1)
        a, sd = ab.sqrt(), (1 - ab).sqrt()
        xt = s.x0 * a + eps * sd
        target = prediction_target(s.r.prediction, s.x0, eps, a, sd)
        classes = s.classes()
        s.lap("data_s")
        with torch.autocast(s.dev.type, dtype=torch.bfloat16, enabled=s.autocast):
            out = s.fwd(xt, t.float(), *class_args(classes))
        per_image = (out.float() - target).square().mean(dim=(1, 2, 3))
        loss = (per_image * s.loss_weights[t]).mean() / s.r.grad_accum
        s.lap("forward_s")
        return loss

    def step(s, index):
        s.last = time.perf_counter()
        s.opt.zero_grad(set_to_none=True)
        losses = []
        for _ in range(s.r.grad_accum):
            loss = s.micro_loss()
            loss.backward()
            losses.append(loss.detach())
            s.lap("backward_s")
        # difforge always computes the global norm (it logs it), and clips only when asked.
        norm = torch.nn.utils.get_total_norm([p.grad for p in s.params])
        if s.r.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(s.params, s.r.grad_clip, norm)
        for group in s.opt.param_groups:
            group["lr"] = s.r.lr(index)
        s.opt.step()
        s.lap("optimizer_s")
        s.updates += 1
        decay = min(s.r.ema_decay, (1 + s.updates) / (10 + s.updates))
        with torch.no_grad():
            torch._foreach_lerp_(s.ema_params, s.params, 1 - decay)
        s.lap("ema_s")
        # Summed by the caller when it wants the value: summing here would sync or add kernels.
        return losses

    def phases_per_step(s, steps):
        return dict(steps=steps, **{k: v / steps for k, v in s.phases.items()})


# torch.contiguous_format, or torch.channels_last with --channels-last.
MEMORY_FORMAT = torch.contiguous_format


@torch.no_grad()
def sample(r, fwd_ema, acp, batch, steps, dev, autocast):
    """DDIM (eta 0) with guidance 1 as difforge's sampling loop (crates/difforge-diffusion/src/sample.rs)."""
    ts = sampling_timesteps(steps, len(r.alphas_cumprod), r.spacing)
    x = torch.randn(batch, r.channels, r.image_size, r.image_size, device=dev).contiguous(memory_format=MEMORY_FORMAT)
    labels = torch.arange(batch, device=dev) % r.num_classes if r.num_classes else None
    for i, t in enumerate(ts):
        ab = acp[t]
        abn = acp[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=dev)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        tt = torch.full((batch,), float(t), device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            out = fwd_ema(x, tt, *class_args(labels))
        x0p, e = split_prediction(r.prediction, out.float(), x, a, s)
        if r.clip_x0:
            x0p = x0p.clamp(-1, 1)
            e = (x - x0p * a) / s
        x = x0p * abn.sqrt() + e * (1 - abn).clamp(min=0).sqrt()
    return x.cpu()


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="a difforge run config TOML: mirror its network and training (default: ref6m)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    ap.add_argument("--sample-batch", type=int, default=None, help="default: --batch")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--mode", choices=["fp32", "tf32", "bf16"], default="fp32",
                    help="fp32: TF32 off; tf32: TF32 matmuls and convolutions; bf16: bf16 autocast (CUDA or CPU) with TF32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument("--channels-last", action="store_true", help="weights and images in channels_last (NHWC) memory format")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--channels", type=int, default=None, help="base channels of the reference UNet (default 64 = ref6m; not with --config)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick kernels by timing (difforge's native mode does)")
    ap.add_argument("--profile", action="store_true",
                    help="also time each phase of the training step (as difforge bench --profile), synchronising at each boundary")
    args = ap.parse_args()
    for name in ["batch", "steps", "sample_steps"]:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected at least 1")
    if args.config and args.channels is not None:
        ap.error("--channels sizes the reference UNet; with --config the config's model.channels does")
    return args


def main():
    args = parse_args()
    sample_batch = args.sample_batch or args.batch
    r = config_recipe(args.config) if args.config else ref6m_recipe(args.channels or 64)

    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(dev)
    cuda = dev.type == "cuda"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tf32 = args.mode != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    # Off unless asked, as in difforge's portable mode (the default a difforge run compares with).
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    # bf16 autocast on the device the run is on, CUDA or CPU (as in difforge).
    autocast = args.mode == "bf16"
    notes = []
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)

    torch.manual_seed(args.seed)
    global MEMORY_FORMAT
    if args.channels_last:
        MEMORY_FORMAT = torch.channels_last
        notes.append("channels_last memory format for the weights and the images")
    model = r.build().to(dev, memory_format=MEMORY_FORMAT)
    # Sampling runs the EMA copy without dropout, as difforge's (train = false).
    ema_model = copy.deepcopy(model).requires_grad_(False).eval()
    n_params = sum(p.numel() for p in model.parameters())
    flops_fwd = forward_flops(model, r, dev)

    fwd = torch.compile(model) if args.compile else model
    fwd_ema = torch.compile(ema_model) if args.compile else ema_model
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    trainer = Trainer(r, model, fwd, list(ema_model.parameters()), args.batch, dev, autocast, sync, gen)

    compile_start = time.perf_counter()
    for i in range(args.warmup):
        trainer.step(i)
    sync()
    warmup_s = time.perf_counter() - compile_start
    times = []
    trainer.profiling = args.profile
    start = time.perf_counter()
    for i in range(args.steps):
        t0 = time.perf_counter()
        losses = trainer.step(args.warmup + i)
        times.append(time.perf_counter() - t0)
    sync()
    train_wall = time.perf_counter() - start
    trainer.profiling = False
    final_loss = sum(l.item() for l in losses)

    if args.warmup > 0:
        sample(r, fwd_ema, trainer.acp, sample_batch, min(args.sample_steps, 2), dev, autocast)
    sync()
    start = time.perf_counter()
    images = sample(r, fwd_ema, trainer.acp, sample_batch, args.sample_steps, dev, autocast)
    sync()
    sample_s = time.perf_counter() - start
    assert images.shape[0] == sample_batch

    train_step_s = train_wall / args.steps
    train_ips = args.batch * r.grad_accum / train_step_s
    train_tflops = 3 * flops_fwd * train_ips / 1e12
    sample_ips = sample_batch / sample_s
    sample_tflops = flops_fwd * args.sample_steps * sample_ips / 1e12
    peak = args.peak_tflops if args.peak_tflops and args.peak_tflops > 0 else None
    if cuda:
        peak_mem, mem_src = torch.cuda.max_memory_allocated(dev), "torch.cuda.max_memory_allocated (tensors only, not the process)"
    else:
        peak_mem, mem_src = peak_rss_bytes(), "VmHWM: peak resident set of the whole process (Python and libtorch included)"
    if args.compile:
        notes.append(f"torch.compile of the network (training and EMA copies); warm-up (including compilation) took {warmup_s:.1f} s")
    if args.config:
        notes.append(f"network and training from {args.config}: {len(r.alphas_cumprod)} timesteps, {r.prediction} target, "
                     f"min-SNR gamma {r.min_snr_gamma}, {r.num_classes} classes (class dropout {r.class_dropout}), "
                     f"grad_accum {r.grad_accum}, clip {r.grad_clip}, EMA decay {r.ema_decay}")
    notes.append("flops_per_image_forward from torch.utils.flop_counter.FlopCounterMode on one forward pass at batch 1")
    report = {
        "engine": "pytorch-compile" if args.compile else "pytorch-eager",
        "torch": torch.__version__,
        "model": r.name,
        "device": str(dev) if not cuda else f"cuda:{dev.index or 0}",
        "threads": torch.get_num_threads(),
        "precision": args.mode,
        "channels_last": args.channels_last,
        "autocast_bf16": autocast,
        "parameters": n_params,
        "image_size": r.image_size,
        "channels": r.channels,
        "batch": args.batch,
        "grad_accum": r.grad_accum,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "warmup_s": warmup_s,
        "train_step_s": train_step_s,
        "train_step_min_s": min(times),
        "train_step_max_s": max(times),
        "train_images_per_s": train_ips,
        "train_phases": trainer.phases_per_step(args.steps) if args.profile else None,
        "final_loss": final_loss,
        "flops_per_image_forward": flops_fwd,
        "flops_per_image_train": 3 * flops_fwd,
        "train_tflops": train_tflops,
        "sample_batch": sample_batch,
        "sample_steps": args.sample_steps,
        "sampler": "ddim",
        "guidance": 1.0,
        "sample_s": sample_s,
        "sample_images_per_s": sample_ips,
        "sample_tflops": sample_tflops,
        "peak_tflops": peak,
        "mfu": train_tflops / peak if peak else None,
        "sample_mfu": sample_tflops / peak if peak else None,
        "peak_memory_bytes": peak_mem,
        "peak_memory_source": mem_src,
        "notes": notes,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
