"""Fixtures for the Stable Diffusion parity tests (crates/difforge-nn/tests/it/sd_*.rs).

Builds tiny, randomly initialised Stable Diffusion components with diffusers and transformers,
in the shapes diffusers' own tests use (`get_dummy_components` in tests/pipelines/stable_diffusion:
UNet block_out_channels (4, 8), norm_num_groups 2, a 32-wide CLIP text encoder), plus an SD 2.x
style UNet (linear projections, per-level head dims, v-prediction) and a tiny SDXL UNet
(text_time conditioning, two text encoders, two transformer layers per block). Every parameter
gets a random offset so that no norm is the identity and no bias is zero: a wrong name or a
missing term shows in the numbers.

Each component is saved as diffusers saves it (`config.json` + `*.safetensors`), the tiny SD 1.x
one as a whole diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
`scheduler/`), and beside it `reference.safetensors`: the inputs and diffusers' outputs
(text-encoder hidden states and pooled output, one UNet forward, VAE encode and decode).

Needs (fixture generation only, not at run time or in CI): torch 2.11, diffusers 0.35.2,
transformers 4.57.1. `tools/setup_sd_tools.sh` installs them beside the project venv's torch.
Run: tools/setup_sd_tools.sh && PYTHONPATH=~/.cache/difforge/sd-tools \\
     ~/.cache/difforge/torch-2.11.0/bin/python tools/make_sd_fixtures.py
"""
import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from make_tokenizer_fixtures import write_folder as write_tokenizer

OUT = Path(__file__).resolve().parent.parent / "crates" / "difforge-nn" / "tests" / "fixtures" / "sd"
TEXT_LEN = 77
BOS, EOS = 998, 999  # the tiny vocabulary's last ids, as CLIP's start/end tokens are its last
TINY_MERGES = 1000 - 512 - 2  # CLIP's first merges: a 1000-id vocabulary of CLIP's form
PROMPT = "a photo of an astronaut riding a horse on mars, (masterpiece:1.2)"
NEGATIVE = "blurry, low quality"


def perturb(module, seed):
    """Adds N(0, 0.1) to every parameter: norms stop being the identity, biases stop being zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def text_config(act, projection_dim=None):
    cfg = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS, hidden_size=32, intermediate_size=37,
               layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=3, vocab_size=1000,
               max_position_embeddings=TEXT_LEN, hidden_act=act)
    if projection_dim is not None:
        cfg["projection_dim"] = projection_dim
    return CLIPTextConfig(**cfg)


def token_ids(seed, lengths):
    """Prompts as CLIP tokenises them: start, words, end, then end tokens as padding (SD 1.x)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        words = torch.randint(0, BOS, (n,), generator=g).tolist()
        row = [BOS] + words + [EOS]
        rows.append(row + [EOS] * (TEXT_LEN - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def text_references(model, ids, prefix):
    out = model(input_ids=ids, output_hidden_states=True)
    refs = {f"{prefix}.input_ids": ids, f"{prefix}.last_hidden_state": out.last_hidden_state}
    # clip_skip = 1 as diffusers applies it: the penultimate layer's output through the final norm.
    refs[f"{prefix}.clip_skip_1"] = model.text_model.final_layer_norm(out.hidden_states[-2])
    refs[f"{prefix}.penultimate_hidden_state"] = out.hidden_states[-2]
    if hasattr(out, "text_embeds"):
        refs[f"{prefix}.text_embeds"] = out.text_embeds
    else:
        refs[f"{prefix}.pooler_output"] = out.pooler_output
    return refs


def unet_references(unet, seed, context_dim, added=None):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, unet.config.in_channels, 16, 16, generator=g)
    timesteps = torch.tensor([10.0, 601.0])
    context = torch.randn(2, 7, context_dim, generator=g)
    refs = {"unet.sample": sample, "unet.timesteps": timesteps, "unet.encoder_hidden_states": context}
    kwargs = {}
    if added is not None:
        text_embeds = torch.randn(2, added, generator=g)
        time_ids = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0], [48.0, 40.0, 4.0, 2.0, 32.0, 32.0]])
        kwargs["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": time_ids}
        refs.update({"unet.text_embeds": text_embeds, "unet.time_ids": time_ids})
    refs["unet.output"] = unet(sample, timesteps, context, **kwargs).sample
    return refs


def vae_references(vae, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    dist = vae.encode(image).latent_dist
    latents = torch.randn(2, vae.config.latent_channels, 8, 8, generator=g)
    refs = {"vae.image": image, "vae.mean": dist.mean, "vae.logvar": dist.logvar, "vae.latents": latents,
            "vae.decoded": vae.decode(latents).sample}
    # Tiled decoding at diffusers' defaults (tiles of sample_size = 32 pixels, 16 latents, overlap 0.25) on
    # latents two tiles high and three wide, the last column (2 latents) narrower than the blend.
    tiled_latents = torch.randn(1, vae.config.latent_channels, 20, 26, generator=g)
    vae.enable_tiling()
    refs.update({"vae.tiled_latents": tiled_latents, "vae.tiled_decoded": vae.decode(tiled_latents).sample})
    vae.disable_tiling()
    return refs


def ddim_references(scheduler, seed):
    """DDIM's timesteps and every step's result for fixed model outputs (SD 1.x settings:
    scaled_linear betas, leading spacing with steps_offset 1, final alpha alphas_cumprod[0])."""
    g = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(10)
    x = torch.randn(1, 4, 4, 4, generator=g)
    refs = {"ddim.timesteps": scheduler.timesteps.clone(), "ddim.start": x.clone()}
    outputs, states = [], []
    for t in scheduler.timesteps:
        out = torch.randn(1, 4, 4, 4, generator=g)
        x = scheduler.step(out, t, x).prev_sample
        outputs.append(out)
        states.append(x)
    refs.update({"ddim.model_outputs": torch.stack(outputs), "ddim.samples": torch.stack(states)})
    return refs


def sd_scheduler():
    """Stable Diffusion's DDIM settings (scaled_linear betas, leading spacing, steps_offset 1)."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def pipeline_references(pipe, refs, negative):
    """A whole 4-step guided image (32x32) from a prompt, through the folder's tokenizer(s), text
    encoder(s), UNet, DDIM and VAE, from the latents of torch.Generator("cpu").manual_seed(42)."""
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator("cpu").manual_seed(42))
    image = pipe(prompt=PROMPT, negative_prompt=negative, latents=latents, num_inference_steps=4, guidance_scale=7.5,
                 height=32, width=32, output_type="pt").images
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=TEXT_LEN, truncation=True, return_tensors="pt").input_ids
    refs.update({"pipeline.latents": latents, "pipeline.image": image, "pipeline.prompt_ids": ids})


def tiny_sd15_unet():
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2)


def tiny_sd21_unet():
    return UNet2DConditionModel(
        block_out_channels=(8, 16, 16), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=(2, 4, 4), use_linear_projection=True,
        upcast_attention=True, flip_sin_to_cos=True, freq_shift=0)


def tiny_sdxl_unet():
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, norm_num_groups=4, attention_head_dim=(2, 4), use_linear_projection=True,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32)


def tiny_vae():
    return AutoencoderKL(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1, sample_size=32)


def fresh(path):
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_sd15(root):
    torch.manual_seed(0)
    unet = perturb(tiny_sd15_unet(), 1)
    vae = perturb(tiny_vae(), 2)
    text = perturb(CLIPTextModel(text_config("quick_gelu")), 3)
    write_tokenizer(root / "tokenizer", TINY_MERGES)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
                                   unet=unet, scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root, safe_serialization=True)
    refs = {}
    refs.update(text_references(text, token_ids(4, [3, 20]), "text"))
    refs.update(unet_references(unet, 5, 32))
    refs.update(vae_references(vae, 6))
    pipeline_references(pipe, refs, NEGATIVE)
    refs.update(ddim_references(sd_scheduler(), 8))
    return refs


def write_sd21(root):
    torch.manual_seed(0)
    unet = perturb(tiny_sd21_unet(), 11)
    unet.save_pretrained(root / "unet")
    return unet_references(unet, 12, 32)


def write_sdxl(root):
    torch.manual_seed(0)
    unet = perturb(tiny_sdxl_unet(), 21)
    text = perturb(CLIPTextModel(text_config("quick_gelu")), 22)
    text2 = perturb(CLIPTextModelWithProjection(text_config("gelu", projection_dim=32)), 23)
    vae = perturb(tiny_vae(), 26)
    write_tokenizer(root / "tokenizer", TINY_MERGES)
    write_tokenizer(root / "tokenizer_2", TINY_MERGES, pad="!")  # SDXL's second tokenizer pads with "!"
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text2, unet=unet, scheduler=sd_scheduler(),
                                     tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
                                     tokenizer_2=CLIPTokenizer.from_pretrained(root / "tokenizer_2"))
    pipe.save_pretrained(root, safe_serialization=True)
    refs = unet_references(unet, 24, 64, added=32)
    refs.update(text_references(text2, token_ids(25, [5, 40]), "text2"))
    # No negative prompt: SDXL (force_zeros_for_empty_prompt) then guides against zero embeddings.
    pipeline_references(pipe, refs, None)
    return refs


def main():
    for name, write in [("tiny-sd15", write_sd15), ("tiny-sd21", write_sd21), ("tiny-sdxl", write_sdxl)]:
        root = fresh(OUT / name)
        with torch.no_grad():
            refs = write(root)
        refs = {k: v.detach().contiguous() for k, v in refs.items()}
        save_file(refs, str(root / "reference.safetensors"), metadata={"about": "made by tools/make_sd_fixtures.py"})
        print(name, sorted(refs))


if __name__ == "__main__":
    main()
