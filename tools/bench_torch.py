#!/usr/bin/env python3
"""The PyTorch side of `difforge bench --model ref6m`: the same 6.1 M-parameter UNet (32x32 RGB;
the network of ../shared/reference/unet_bench.py, 6,140,675 parameters) doing the same work per
training step and per sampling step, in PyTorch eager or with torch.compile.

Training step (as difforge's trainer): fresh timesteps and Gaussian noise, x_t on the cosine
schedule, epsilon target, per-image MSE then mean, backward, global-norm clipping to 1.0,
AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, no weight decay), EMA of a copy of the weights
(decay min(0.999, (1+n)/(10+n)), torch._foreach_lerp_), on one fixed batch of uniform random
images. Written the idiomatic PyTorch way: no host sync inside a step (difforge reads the loss
and the gradient norm back each step).

Sampling: DDIM, eta 0, trailing spacing, clamp of the predicted x0, guidance 1 (one forward per
step), with the EMA network, at --sample-batch; the result is copied to the CPU.

Prints one JSON line whose field names are those of difforge's BenchReport where they overlap.
"""
import argparse
import copy
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MULT = [1, 2, 2]
TIMESTEPS = 1000


def conv3(i, o):
    return nn.Conv2d(i, o, 3, padding=1)


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


def cosine_alphas_cumprod(n=TIMESTEPS):
    """diffusers' squaredcos_cap_v2, as difforge's ScheduleKind::Cosine."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = [min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)]
    out, acc = [], 1.0
    for b in betas:
        acc *= 1 - b
        out.append(acc)
    return out


def trailing_timesteps(steps, n=TIMESTEPS):
    ratio = n / steps
    return [max(int(round(n - i * ratio)) - 1, 0) for i in range(steps)]


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    ap.add_argument("--sample-batch", type=int, default=None, help="default: --batch")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--mode", choices=["fp32", "tf32", "bf16"], default="fp32",
                    help="fp32: TF32 off; tf32: TF32 matmuls and convolutions; bf16: bf16 autocast (CUDA only) with TF32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--channels", type=int, default=64, help="base channels (64 = ref6m)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in ["batch", "steps", "sample_steps"]:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected at least 1")
    sample_batch = args.sample_batch or args.batch

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
    torch.backends.cudnn.benchmark = True
    autocast = args.mode == "bf16" and cuda
    notes = []
    if args.mode == "bf16" and not cuda:
        notes.append("bf16 autocast applies on CUDA only (as in difforge): this CPU run is float32")
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)

    torch.manual_seed(args.seed)
    model = UNet(args.channels).to(dev)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    params = [p for p in model.parameters()]
    ema_params = [p for p in ema_model.parameters()]
    n_params = sum(p.numel() for p in params)

    # FLOPs of one forward for one image, as PyTorch's own counter sees them (convolutions,
    # matmuls, SDPA), to set against difforge's analytic count.
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32, device=dev), torch.zeros(1, device=dev))
    flops_fwd = float(counter.get_total_flops())

    fwd = torch.compile(model) if args.compile else model
    fwd_ema = torch.compile(ema_model) if args.compile else ema_model
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    acp = torch.tensor(cosine_alphas_cumprod(), dtype=torch.float32, device=dev)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    x0 = (torch.rand(args.batch, 3, 32, 32, generator=gen) * 2 - 1).to(dev)
    weights = torch.ones(args.batch, device=dev)
    ema_updates = [0]

    def step():
        t = torch.randint(0, TIMESTEPS, (args.batch,), device=dev)
        eps = torch.randn_like(x0)
        ab = acp[t].view(-1, 1, 1, 1)
        xt = x0 * ab.sqrt() + eps * (1 - ab).sqrt()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            out = fwd(xt, t.float())
        per_image = (out.float() - eps).square().mean(dim=(1, 2, 3))
        loss = (per_image * weights).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_updates[0] += 1
        n = ema_updates[0]
        decay = min(0.999, (1 + n) / (10 + n))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        return loss.detach()

    compile_start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - compile_start
    times = []
    start = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    sync()
    train_wall = time.perf_counter() - start
    final_loss = loss.item()

    @torch.no_grad()
    def sample(steps):
        ts = trailing_timesteps(steps)
        x = torch.randn(sample_batch, 3, 32, 32, device=dev)
        for i, t in enumerate(ts):
            ab = acp[t]
            abn = acp[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=dev)
            a, s = ab.sqrt(), (1 - ab).sqrt()
            tt = torch.full((sample_batch,), float(t), device=dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                out = fwd_ema(x, tt)
            out = out.float()
            x0p = ((x - s * out) / a).clamp(-1, 1)
            e = (x - x0p * a) / s
            x = x0p * abn.sqrt() + e * (1 - abn).clamp(min=0).sqrt()
        return x.cpu()

    if args.warmup > 0:
        sample(min(args.sample_steps, 2))
    sync()
    start = time.perf_counter()
    images = sample(args.sample_steps)
    sync()
    sample_s = time.perf_counter() - start
    assert images.shape[0] == sample_batch

    train_step_s = train_wall / args.steps
    train_ips = args.batch / train_step_s
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
    notes.append("flops_per_image_forward from torch.utils.flop_counter.FlopCounterMode on one forward pass at batch 1")
    report = {
        "engine": "pytorch-compile" if args.compile else "pytorch-eager",
        "torch": torch.__version__,
        "model": "ref6m" if args.channels == 64 else f"reference UNet c={args.channels}",
        "device": str(dev) if not cuda else f"cuda:{dev.index or 0}",
        "threads": torch.get_num_threads(),
        "precision": args.mode,
        "autocast_bf16": autocast,
        "parameters": n_params,
        "image_size": 32,
        "channels": 3,
        "batch": args.batch,
        "grad_accum": 1,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "warmup_s": warmup_s,
        "train_step_s": train_step_s,
        "train_step_min_s": min(times),
        "train_step_max_s": max(times),
        "train_images_per_s": train_ips,
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
