"""A full-size check of single-file loading, beside the tiny fixtures the tests use: builds a
random SD 1.5 (the `sd15` preset's configs, read from crates/difforge-nn/src/sd/presets.rs) with
diffusers, saves it as a diffusers folder and as an original-format single file (the reverse key
map of tools/make_sd_fixtures.py, checked by diffusers' own from_single_file), generates one
image with diffusers from the folder, then has difforge generate the same image from the single
file alone (its family's preset, built-in tokenizer) and compares the pixels.

Needs about 12 GB of disk in --work and 6 GB of memory; takes minutes on a CPU.
Run: PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/check_sd_full_size.py --work /tmp/full
"""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sd import preset_json, TOKENIZER  # noqa: E402
from make_sd_fixtures import _check_single_file, _single_file_state  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT, SEED, STEPS, SIZE = "a lighthouse at dusk", 7, 3, 256


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "difforge"))
    args = ap.parse_args()
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    work = Path(args.work)
    folder, single = work / "sd15-random", work / "sd15-random.safetensors"
    torch.manual_seed(0)
    text_cfg = preset_json("CLIP_L")
    text_cfg.pop("architectures")
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**preset_json("SD_VAE")), text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
                                   tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER), unet=UNet2DConditionModel(**preset_json("SD15_UNET")),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in _single_file_state(folder, False).items()}, str(single))
    _check_single_file(single, folder, StableDiffusionPipeline, False)
    print("single file written and equal to the folder through diffusers' from_single_file", flush=True)
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator("cpu").manual_seed(SEED))
    with torch.no_grad():
        image = pipe(prompt=PROMPT, latents=latents, num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE,
                     output_type="np").images[0]
    want = (image * 255).round().astype(np.uint8)
    out = work / "difforge.png"
    subprocess.run([args.bin, "sample", "--checkpoint", str(single), "--prompt", PROMPT, "--seed", str(SEED), "--noise", "torch",
                    "--steps", str(STEPS), "--size", f"{SIZE}x{SIZE}", "--sampler", "ddim", "--out", str(out)], check=True)
    got = np.asarray(Image.open(out).convert("RGB"))
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"difforge from the single file alone vs diffusers from the folder: max |pixel difference| {diff.max()} of 255, "
          f"mean {diff.mean():.4f}")


if __name__ == "__main__":
    main()
