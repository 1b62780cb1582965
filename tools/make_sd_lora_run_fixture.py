"""diffusers' image of a LoRA file difforge trained and exported (test: difforge
`it/sd_previews.rs`, `a_trained_loras_file_renders_in_difforge_as_in_diffusers`).

crates/difforge/tests/fixtures/sd-lora-run/lora.safetensors is the kohya-layout file of a
difforge LoRA run on the tiny SD 1.5 fixture (made as this docstring's last line says). The tiny
SD 1.5 pipeline loads it with diffusers' `load_lora_weights` and renders PROMPT at SEED with its
own scheduler (DDIM, leading spacing, offset 1), STEPS steps at GUIDANCE, from
`torch.Generator("cpu").manual_seed(SEED)` as difforge's default noise for Stable Diffusion.
The image (float, [0, 1], 1x3x32x32) goes to `reference.safetensors` as `image`, with the base's
image without the LoRA as `base_image` (so the test can see the LoRA matters).

Needs torch 2.11, diffusers 0.35.2, transformers 4.57.1 and peft 0.17.1 (tools/setup_sd_tools.sh).
Run: PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/make_sd_lora_run_fixture.py
The LoRA file: difforge data synth shapes --out shapes --n 24 && difforge finetune --from
crates/difforge-nn/tests/fixtures/sd/tiny-sd15 --data shapes --out run --set train.steps=30
--set train.lr=1e-2 --set train.batch_size=4 --set lora.rank=4 --set lora.alpha=4.0, then
run/lora.safetensors copied here.
"""
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
SD15 = ROOT / "crates" / "difforge-nn" / "tests" / "fixtures" / "sd" / "tiny-sd15"
OUT = ROOT / "crates" / "difforge" / "tests" / "fixtures" / "sd-lora-run"
PROMPT, SEED, STEPS, GUIDANCE = "a small blue circle at the center on a white background", 42, 4, 3.0


def render(pipe):
    generator = torch.Generator("cpu").manual_seed(SEED)
    with torch.no_grad():
        return pipe(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=32, width=32,
                    generator=generator, output_type="pt").images


def main():
    pipe = StableDiffusionPipeline.from_pretrained(SD15, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    base = render(pipe)
    pipe.load_lora_weights(str(OUT / "lora.safetensors"))
    image = render(pipe)
    difference = (image - base).abs().max().item() * 255
    print(f"{type(pipe.scheduler).__name__}; the LoRA moves the image by up to {difference:.1f}/255")
    assert difference > 2, "the LoRA must change the image"
    save_file({"image": image.contiguous(), "base_image": base.contiguous()}, str(OUT / "reference.safetensors"))


if __name__ == "__main__":
    main()
