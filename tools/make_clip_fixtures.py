"""Fixtures for the CLIP model and CLIP score tests (the tests of crates/difforge-nn/src/sd/clip_model.rs
and clip_vision.rs; `cargo test -p difforge-nn --lib clip_`).

Builds a tiny, randomly initialised transformers `CLIPModel` (text tower 32 wide, vision tower 24
wide on 30x30 images in 5x5 patches, both 2 layers of 4 heads, projection 16; quick_gelu in the text
tower and gelu in the vision tower, so that a tower using the other's activation shows). Every
parameter gets a random N(0, 0.1) offset, so that no layer norm is the identity and no bias is zero.
The text tower uses the tiny 1000-id CLIP tokenizer of the SD fixtures
(`tests/fixtures/sd/tiny-sd15/tokenizer`, start/end tokens 998/999).

Writes `tests/fixtures/clip/tiny-clip/` as `CLIPModel.save_pretrained` and
`CLIPProcessor.save_pretrained` write a model folder (config.json, model.safetensors, the tokenizer
files, preprocessor_config.json), and `tests/fixtures/clip/tiny-clip-refs.safetensors`:
  pixel_values              (2, 3, 30, 30) seeded random, already preprocessed (the first seed
                            whose first pair scores above 0 and second below)
  vision.last_hidden_state  the vision tower's last layer (before post_layernorm)
  vision.pooler_output      post_layernorm of the CLS token
  image_embeds              get_image_features: pooler_output through visual_projection (not normalised)
  input_ids                 (2, 77) the two PROMPTS as CLIPTokenizer pads them (max_length 77)
  text_embeds               get_text_features (not normalised)
  logits_per_image          CLIPModel's output: exp(logit_scale) * cos, (2 images, 2 prompts)
  clip_score_raw            100 * cos(image_embeds[i], text_embeds[i]), torchmetrics' per-image score
                            before its clamp at 0
  preprocess.image          (1, 3, 52, 40) uint8, a smooth image
  preprocess.pixel_values   what CLIPImageProcessor (PIL bicubic resize to shortest side 30, centre
                            crop 30, rescale, OpenAI mean/std) makes of it

Deterministic: running it again writes the same tensors.
Needs (fixture generation only): torch 2.11, transformers 4.57.1 (tools/setup_sd_tools.sh).
Run: PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/make_clip_fixtures.py
"""
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

NN = Path(__file__).resolve().parent.parent / "crates" / "difforge-nn" / "tests" / "fixtures"
OUT = NN / "clip"
TOKENIZER = NN / "sd" / "tiny-sd15" / "tokenizer"
BOS, EOS = 998, 999  # the tiny vocabulary's start and end tokens
IMAGE_SIZE = 30
PROMPTS = ["the quick brown fox jumps over the lazy dog", "a photo of a cat on a red sofa"]


def perturb(module, seed):
    """Adds N(0, 0.1) to every parameter: norms stop being the identity, biases stop being zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def tiny_config():
    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    vision = dict(hidden_size=24, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, num_channels=3,
                  image_size=IMAGE_SIZE, patch_size=5, hidden_act="gelu", layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, logit_scale_init_value=2.6592)


def smooth_image():
    """A (1, 3, 52, 40) uint8 image of low-frequency waves: resampling it is well defined, so
    that PIL's and a tensor resize differ by little more than PIL's rounding to 8 bits."""
    y = torch.linspace(0, 1, 52).view(52, 1)
    x = torch.linspace(0, 1, 40).view(1, 40)
    channels = [0.5 + 0.4 * torch.sin(6.0 * x + 4.0 * y + c) * torch.cos(3.0 * y - 2.0 * x + 2 * c) for c in range(3)]
    return (torch.stack(channels).unsqueeze(0) * 255).round().clamp(0, 255).to(torch.uint8)


def main():
    torch.manual_seed(0)
    model = perturb(CLIPModel(tiny_config()), seed=1)
    root = OUT / "tiny-clip"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    model.save_pretrained(root, safe_serialization=True)

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS, EOS)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root)

    input_ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    # The first pixel seed from 2 on whose pairs score one above and one below zero, so that the
    # clamp at 0 is seen to act and not to act.
    for seed in range(2, 100):
        pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            vision = model.vision_model(pixel_values=pixel_values)
            image_embeds = model.get_image_features(pixel_values=pixel_values)
            text_embeds = model.get_text_features(input_ids=input_ids)
            out = model(input_ids=input_ids, pixel_values=pixel_values)
        cos = torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1)
        if cos[0] > 0.05 and cos[1] < -0.05:
            break
    else:
        raise SystemExit("no pixel seed gives one positive and one negative score")
    print("pixel seed", seed)

    image = smooth_image()
    processed = image_processor(images=[image[0].permute(1, 2, 0).numpy()], return_tensors="pt").pixel_values

    refs = {
        "pixel_values": pixel_values,
        "vision.last_hidden_state": vision.last_hidden_state,
        "vision.pooler_output": vision.pooler_output,
        "image_embeds": image_embeds,
        "input_ids": input_ids,
        "text_embeds": text_embeds,
        "logits_per_image": out.logits_per_image,
        "clip_score_raw": 100 * cos,
        "preprocess.image": image,
        "preprocess.pixel_values": processed,
    }
    refs = {k: v.contiguous() for k, v in refs.items()}
    save_file(refs, str(OUT / "tiny-clip-refs.safetensors"), metadata={"about": "made by tools/make_clip_fixtures.py"})
    print("clip_score_raw", refs["clip_score_raw"].tolist())
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size:8d} {f.relative_to(OUT)}")


if __name__ == "__main__":
    main()
