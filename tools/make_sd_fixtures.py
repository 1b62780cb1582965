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


def write_bin_folder():
    """tiny-sd15-bin/: the tiny SD 1.x VAE and text encoder as older folders hold them, torch.save
    `.bin` files (diffusers' `diffusion_pytorch_model.bin`, transformers' `pytorch_model.bin`)."""
    root = fresh(OUT / "tiny-sd15-bin")
    for part, file in [("vae", "diffusion_pytorch_model"), ("text_encoder", "model")]:
        src = OUT / "tiny-sd15" / part
        (root / part).mkdir()
        shutil.copy(src / "config.json", root / part / "config.json")
        from safetensors.torch import load_file
        name = "pytorch_model.bin" if file == "model" else f"{file}.bin"
        torch.save(load_file(str(src / f"{file}.safetensors")), root / part / name)


def main():
    for name, write in [("tiny-sd15", write_sd15), ("tiny-sd21", write_sd21), ("tiny-sdxl", write_sdxl)]:
        root = fresh(OUT / name)
        with torch.no_grad():
            refs = write(root)
        refs = {k: v.detach().contiguous() for k, v in refs.items()}
        save_file(refs, str(root / "reference.safetensors"), metadata={"about": "made by tools/make_sd_fixtures.py"})
        print(name, sorted(refs))
    write_bin_folder()
    write_single_files()


# Single-file checkpoints: the tiny folders again as one file with the original (CompVis / SGM / OpenCLIP)
# tensor names, written by the reverse mapping below and checked by loading them back with diffusers.
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
OPEN_CLIP_FIXED = {"embeddings.token_embedding.weight": "token_embedding.weight",
                   "embeddings.position_embedding.weight": "positional_embedding",
                   "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}


def _per_level(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _unet_modules(cfg):
    """diffusers module -> (CompVis module, renames of the names below it), from the UNet's config."""
    n = len(cfg["block_out_channels"])
    layers = _per_level(cfg["layers_per_block"], n)
    attention = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
    m = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
         "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
         "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
         "mid_block.resnets.1": "middle_block.2"}
    k = 1
    for i in range(n):
        for j in range(layers[i]):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{k}.0"
            m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{k}.1"
            k += 1
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{k}.0.op"
            k += 1
    k = 0
    for u in range(n):
        i = n - 1 - u
        for j in range(layers[i] + 1):
            m[f"up_blocks.{u}.resnets.{j}"] = f"output_blocks.{k}.0"
            m[f"up_blocks.{u}.attentions.{j}"] = f"output_blocks.{k}.1"
            if j == layers[i] and u < n - 1:  # the upsampler follows the attention, if the level has one
                m[f"up_blocks.{u}.upsamplers.0.conv"] = f"output_blocks.{k}.{2 if attention[i] else 1}.conv"
            k += 1
    return {d: (o, UNET_RESNET if ".resnets." in d else {}) for d, o in m.items()}


def _vae_modules(cfg):
    n = len(cfg["block_out_channels"])
    m = {f"{half}.{name}": f"{half}.{orig}" for half in ("encoder", "decoder")
         for name, orig in [("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out"),
                            ("mid_block.resnets.0", "mid.block_1"), ("mid_block.resnets.1", "mid.block_2"),
                            ("mid_block.attentions.0", "mid.attn_1")]}
    m.update({"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"})
    for i in range(n):
        for j in range(cfg["layers_per_block"]):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        m[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        for j in range(cfg["layers_per_block"] + 1):  # the decoder's levels run the other way
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        m[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    return {d: (o, VAE_RESNET if ".resnets." in d else VAE_ATTENTION if ".attentions." in d else {}) for d, o in m.items()}


def _rename_modules(state, modules, prefix):
    """Each key's longest module prefix swapped for the original's, and the module below it renamed."""
    out = {}
    for key, value in state.items():
        module = max((d for d in modules if key.startswith(d + ".")), key=len)
        original, renames = modules[module]
        sub, _, param = key[len(module) + 1:].rpartition(".")
        out[f"{prefix}{original}.{renames.get(sub, sub) + '.' if sub else ''}{param}"] = value
    return out


def _vae_to_original(state, cfg):
    out = _rename_modules(state, _vae_modules(cfg), "first_stage_model.")
    for key in out:  # the original's mid-block attention projections are 1x1 convolutions
        if ".mid.attn_1." in key and key.endswith(".weight") and ".norm." not in key:
            out[key] = out[key][:, :, None, None]
    return out


def _open_clip_to_original(state, prefix):
    out = {}
    for key, value in state.items():
        if key == "text_projection.weight":  # OpenCLIP multiplies by it (x @ P): the transpose of a linear weight
            out[prefix + "text_projection"] = value.T.contiguous()
            continue
        key = key.removeprefix("text_model.")
        if key in OPEN_CLIP_FIXED:
            out[prefix + OPEN_CLIP_FIXED[key]] = value
            continue
        layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
        sub, param = rest.rsplit(".", 1)
        base = f"{prefix}transformer.resblocks.{layer}."
        if sub == "self_attn.q_proj":  # q, k and v are one fused projection in OpenCLIP
            parts = [state[f"text_model.encoder.layers.{layer}.self_attn.{p}_proj.{param}"] for p in "qkv"]
            out[f"{base}attn.in_proj_{param}"] = torch.cat(parts)
        elif sub not in ("self_attn.k_proj", "self_attn.v_proj"):
            out[f"{base}{OPEN_CLIP_LAYER[sub]}.{param}"] = value
    return out


def _folder_component(root, name):
    file = "model.safetensors" if name.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file
    return load_file(str(root / name / file)), json.loads((root / name / "config.json").read_text())


def _single_file_state(root, xl):
    unet, unet_config = _folder_component(root, "unet")
    vae, vae_config = _folder_component(root, "vae")
    text, _ = _folder_component(root, "text_encoder")
    state = _rename_modules(unet, _unet_modules(unet_config), "model.diffusion_model.")
    state.update(_vae_to_original(vae, vae_config))
    if xl:
        state.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in text.items()})
        state.update(_open_clip_to_original(_folder_component(root, "text_encoder_2")[0], "conditioner.embedders.1.model."))
    else:
        state.update({f"cond_stage_model.transformer.{k}": v for k, v in text.items()})
    return state


def _check_single_file(path, root, pipeline_class, xl):
    """Loads `path` with diffusers (offline, the folder as its config) and compares every tensor with the
    folder's. SDXL's second text encoder is checked through convert_open_clip_checkpoint instead: diffusers
    tells the two encoders of a single file apart by width, and the tiny ones are both 32 wide, so
    from_single_file would read it from the CLIP-L keys."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint, load_single_file_checkpoint
    pipe = pipeline_class.from_single_file(str(path), config=str(root), local_files_only=True)
    loaded = {name: getattr(pipe, name).state_dict() for name in ("unet", "vae", "text_encoder")}
    if xl:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
        loaded["text_encoder_2"] = convert_open_clip_checkpoint(pipe.text_encoder_2, checkpoint, "conditioner.embedders.1.model.")
    for name, got in loaded.items():
        want = _folder_component(root, name)[0]
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        assert set(got) == set(want), f"{path.name} {name}: {sorted(set(got) ^ set(want))[:5]}"
        bad = [k for k in want if not torch.equal(want[k], got[k])]
        assert not bad, f"{path.name} {name}: {bad[:5]}"


def write_single_files():
    """tiny-sd15.safetensors and tiny-sdxl.safetensors beside the folders, and tiny-sd15.ckpt: the same
    tensors as torch.save writes a CompVis checkpoint ({"state_dict": ...}) with the keys loaders must skip
    (DDPM schedule buffers, EMA counters, CLIP's position_ids)."""
    from safetensors.torch import save_file as save
    for name, xl, pipeline_class in [("tiny-sd15", False, StableDiffusionPipeline), ("tiny-sdxl", True, StableDiffusionXLPipeline)]:
        root = OUT / name
        state = {k: v.contiguous() for k, v in _single_file_state(root, xl).items()}
        path = OUT / f"{name}.safetensors"
        save(state, str(path))
        _check_single_file(path, root, pipeline_class, xl)
        print(path.name, len(state), "tensors, equal to the folder's through diffusers")
        if not xl:
            betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
            alphas_cumprod = torch.cumprod(1 - betas, 0)
            extra = {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(),
                     "alphas_cumprod_prev": torch.cat([torch.ones(1), alphas_cumprod[:-1].float()]),
                     "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
                     "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(TEXT_LEN)[None]}
            ckpt = OUT / f"{name}.ckpt"
            torch.save({"global_step": 0, "state_dict": {**state, **extra}}, ckpt)
            _check_single_file(ckpt, root, pipeline_class, xl)
            print(ckpt.name, len(state) + len(extra), "tensors, equal to the folder's through diffusers")


if __name__ == "__main__":
    main()
