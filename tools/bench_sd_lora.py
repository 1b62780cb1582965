"""The training loop of diffusers' examples/text_to_image/train_text_to_image_lora.py (0.35), timed
on the CPU, as the reference for `difforge train` with model.family = "stable-diffusion" and a
[lora] section (tools/bench_sd_lora.sh runs the two side by side).

What one step does, as that script (accelerate, logging, validation and checkpoints left out):
frozen VAE encode -> latent_dist.sample() * scaling_factor, randn noise, uniform timesteps,
DDPMScheduler.add_noise, frozen CLIP text encoder on the tokenized captions, UNet with PEFT LoRA
(init_lora_weights="gaussian", to_q/to_k/to_v/to_out.0) forward, F.mse_loss(mean), backward,
clip_grad_norm_ over the LoRA parameters, AdamW step, zero_grad, loss.item(). Plus (on by default,
--no-ema turns it off) an EMA of the LoRA parameters after each step, because difforge always keeps
one (train.ema_decay, warm-up min(decay, (1+n)/(10+n))); the diffusers LoRA script has no EMA.

Data: every image of --data (PNG/JPEG/WebP + a .txt caption beside it) is read with PIL, resized to
--size (bilinear; the script's Resize + CenterCrop on a square image), scaled to [-1, 1] and held
in memory, as difforge holds its decoded set; the captions are tokenized once (the script
tokenizes in its dataset preprocessing). Each step takes the next --batch images of a shuffled
epoch. The script's random flip is off by default there and here.

Prints one JSON object (per-step wall times, median s/step and img/s over the timed steps, peak RSS
of this process) on stdout.

Run:   PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/bench_sd_lora.py \\
           --base crates/difforge-nn/tests/fixtures/sd/tiny-sd15 --data /tmp/sdcap --size 32 --batch 4 \\
           --rank 4 --alpha 4 --warmup 2 --steps 10 --threads 2
"""
import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_data(folder, size):
    """(pixels [N,3,size,size] in [-1,1], captions): images with a .txt sidecar (else the empty caption)."""
    import numpy as np
    import torch
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        sys.exit(f"bench_sd_lora.py: no images in {folder}")
    images, captions = [], []
    for f in files:
        img = Image.open(f).convert("RGB")
        if img.size != (size, size):
            # The script: Resize(size, bilinear) on the short side, then CenterCrop(size).
            w, h = img.size
            s = size / min(w, h)
            img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        images.append(torch.from_numpy(arr).permute(2, 0, 1).contiguous())
        txt = f.with_suffix(".txt")
        captions.append(txt.read_text().strip() if txt.exists() else "")
    return torch.stack(images), captions


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a diffusers SD 1.x/2.x folder")
    ap.add_argument("--data", required=True, help="a folder of images with .txt captions")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=None, help="lora_alpha (default: --rank, as the script)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=1e-2, help="the script's --adam_weight_decay default")
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--no-ema", action="store_true", help="no EMA of the LoRA parameters (the diffusers script's own loop)")
    ap.add_argument("--latents", choices=["sample", "mean"], default="sample",
                    help="latent_dist.sample() as the script (default) or its mean as difforge")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (times then wait for the GPU at each step's end)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON report here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    t_load = time.perf_counter()
    base = args.base
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    device = torch.device(args.device)
    for net in (text_encoder, vae, unet):
        net.to(device)
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    alpha = args.alpha if args.alpha is not None else args.rank
    unet_lora_config = LoraConfig(r=args.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                  target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    unet.add_adapter(unet_lora_config)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay, eps=1e-8)
    ema = None if args.no_ema else [p.detach().clone() for p in lora_layers]

    pixels, captions = load_data(args.data, args.size)
    input_ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length",
                          truncation=True, return_tensors="pt").input_ids
    load_s = time.perf_counter() - t_load

    n = pixels.shape[0]
    order, pos = [], 0

    def next_batch():
        nonlocal order, pos
        idx = []
        while len(idx) < args.batch:
            if pos >= len(order):
                order, pos = random.sample(range(n), n), 0
            take = min(args.batch - len(idx), len(order) - pos)
            idx += order[pos:pos + take]
            pos += take
        idx = torch.tensor(idx)
        return pixels[idx].to(device), input_ids[idx].to(device)

    unet.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    ema_steps = 0
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        pixel_values, ids = next_batch()
        dist = vae.encode(pixel_values).latent_dist
        latents = (dist.sample() if args.latents == "sample" else dist.mean) * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(ids, return_dict=False)[0]
        target = noise
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_layers, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if ema is not None:
            ema_steps += 1
            decay = min(args.ema_decay, (1 + ema_steps) / (10 + ema_steps))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in lora_layers], 1.0 - decay)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    med = statistics.median(times)
    report = {
        "engine": "diffusers+peft",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "size": args.size,
        "batch": args.batch,
        "rank": args.rank,
        "alpha": alpha,
        "lora_parameters": sum(p.numel() for p in lora_layers),
        "images": n,
        "ema": ema is not None,
        "latents": args.latents,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "step_s": times,
        "step_s_median": med,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "images_per_s": args.batch / med,
        "load_s": load_s,
        "final_loss": losses[-1],
        "peak_rss_bytes": rss,
        "device": args.device,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
