"""difforge beside diffusers on a Stable Diffusion architecture with random weights, in one run on
one machine: one UNet forward (batch 1, 64x64 latents, median of --repeat after one warm-up) and
one guided text-to-image generation (text encoder, --steps DDIM steps at guidance 7.5, VAE
decode) at --size, each engine in its own fresh process so that its peak resident memory is its
own. Both build the same configs: the preset texts are read out of difforge's
crates/difforge-nn/src/sd/presets.rs.

Needs: torch 2.11 (the project venv), diffusers 0.35.2 and transformers 4.57.1
(tools/setup_sd_tools.sh), and a built difforge binary.
Run:   PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/bench_sd.py \\
           --model sd15 [--bin target/release/difforge] [--size 256x256] [--steps 20] [--repeat 3]
"""
import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "crates" / "difforge-nn" / "src" / "sd" / "presets.rs"
TOKENIZER = ROOT / "crates" / "difforge-nn" / "tests" / "fixtures" / "sd" / "clip-tokenizer"
PARTS = {"sd15": ("SD15_UNET", ["CLIP_L"]), "sd21": ("SD21_UNET", ["OPENCLIP_H"]), "sdxl": ("SDXL_UNET", ["CLIP_L", "OPENCLIP_BIGG"])}


def preset_json(name):
    text = PRESETS.read_text()
    match = re.search(r"const " + name + r": &str = r#\"(.*?)\"#;", text, re.S)
    return json.loads(match.group(1))


def diffusers_run(model, size, steps, repeat):
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet_name, encoder_names = PARTS[model]
    start = time.perf_counter()
    unet = UNet2DConditionModel(**preset_json(unet_name)).eval()
    vae_config = preset_json("SD_VAE")
    if model == "sdxl":
        vae_config["scaling_factor"] = 0.13025
    vae = AutoencoderKL(**vae_config).eval()
    encoders = []
    for name in encoder_names:
        cfg = preset_json(name)
        cls = CLIPTextModelWithProjection if cfg.pop("architectures") == ["CLIPTextModelWithProjection"] else CLIPTextModel
        encoders.append(cls(CLIPTextConfig(**cfg)).eval())
    build_s = time.perf_counter() - start
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if model == "sd21" else "epsilon")
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    with torch.no_grad():
        x = torch.randn(1, 4, 64, 64)
        t = torch.tensor([500.0])
        dim = unet.config.cross_attention_dim
        context = torch.randn(1, 77, dim)
        kwargs = {}
        if model == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]])}
        times = []
        for i in range(repeat + 1):
            s = time.perf_counter()
            unet(x, t, context, **kwargs)
            if i > 0:
                times.append(time.perf_counter() - s)
        if model == "sdxl":
            pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizer,
                                             tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
        else:
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        width, height = size
        s = time.perf_counter()
        pipe(prompt="a photo of an astronaut riding a horse", negative_prompt="blurry", num_inference_steps=steps,
             guidance_scale=7.5, width=width, height=height, output_type="pt", generator=torch.Generator("cpu").manual_seed(0))
        generate_s = time.perf_counter() - s
    return {"engine": f"diffusers {__import__('diffusers').__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads)",
            "unet_parameters": sum(p.numel() for p in unet.parameters()), "build_s": build_s,
            "unet_forward_s": statistics.median(times), "generate_s": generate_s,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def difforge_run(binary, model, size, steps, repeat):
    out = subprocess.run([binary, "bench", "--model", model, "--size", f"{size[0]}x{size[1]}", "--sample-steps", str(steps),
                          "--steps", str(repeat), "--warmup", "1", "--device", "cpu", "--json"], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    r["engine"] = f"difforge ({r['threads']} threads)"
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sd15", choices=sorted(PARTS))
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "difforge"))
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--engine", choices=["diffusers"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.engine == "diffusers":
        print(json.dumps(diffusers_run(args.model, size, args.steps, args.repeat)))
        return
    child = subprocess.run([sys.executable, __file__, "--engine", "diffusers", "--model", args.model, "--size", args.size,
                            "--steps", str(args.steps), "--repeat", str(args.repeat)], check=True, capture_output=True, text=True)
    rows = [json.loads(child.stdout.strip().splitlines()[-1]), difforge_run(args.bin, args.model, size, args.steps, args.repeat)]
    print(f"| {args.model}, CPU | UNet params | UNet forward 64x64 latents (s) | {args.size}, {args.steps} steps (s) | peak RSS (GiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['unet_parameters'] / 1e6:.1f} M | {r['unet_forward_s']:.2f} | {r['generate_s']:.1f} | "
              f"{r['peak_rss_bytes'] / 2**30:.2f} |")


if __name__ == "__main__":
    main()
