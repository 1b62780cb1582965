"""A random-weight SD 1.5 diffusers folder for tools/bench_sd_lora.sh, so that the LoRA training
benchmark can run on a network of real shape rather than only on the tiny test fixture (whose
UNet has 4 and 8 channels, so that its steps measure per-operator overhead, not compute).

The configs are the `sd15` preset's (crates/difforge-nn/src/sd/presets.rs: SD15_UNET, SD_VAE,
CLIP_L); --div N divides the UNet's channel widths by N (each must stay a multiple of 32 for its group
norms: N = 1, 2, 5 or 10) to get a mid-size network of the same structure; --vae-div (1, 2 or
4) does the same for the VAE and --clip-layers keeps only that many of the text encoder's 12
layers, so that the frozen parts, which at small image sizes take most of a LoRA step, can be
shrunk with the UNet. The text encoder is otherwise CLIP ViT-L/14's shape, with the full
CLIP tokenizer (crates/difforge-nn/tests/fixtures/sd/clip-tokenizer), and the scheduler the SD
1.5 one (scaled_linear, 0.00085..0.012, epsilon).

Run:   PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/make_sd_bench_base.py \\
           --out /tmp/sd15-div5 --div 5 [--vae-div 4 --clip-layers 2]
(--div 1, the full SD 1.5, writes about 4.3 GB and needs about 8 GB of memory to train in difforge.)
"""
import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sd import TOKENIZER, preset_json  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--div", type=int, default=1, help="divide the UNet's channel widths by this (1, 2, 5 or 10)")
    ap.add_argument("--vae-div", type=int, default=1, help="divide the VAE's channel widths by this (1, 2 or 4)")
    ap.add_argument("--clip-layers", type=int, default=12, help="text encoder layers (CLIP ViT-L/14 has 12)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(args.seed)
    unet_cfg = preset_json("SD15_UNET")
    vae_cfg = preset_json("SD_VAE")
    widths = [c // args.div for c in unet_cfg["block_out_channels"]]
    if any(c * args.div != w or c % 32 for c, w in zip(widths, unet_cfg["block_out_channels"])):
        sys.exit(f"make_sd_bench_base.py: --div {args.div} leaves UNet widths {widths}: each must be a multiple of 32")
    unet_cfg["block_out_channels"] = widths
    vae_widths = [c // args.vae_div for c in vae_cfg["block_out_channels"]]
    if any(c * args.vae_div != w or c % 32 for c, w in zip(vae_widths, vae_cfg["block_out_channels"])):
        sys.exit(f"make_sd_bench_base.py: --vae-div {args.vae_div} leaves VAE widths {vae_widths}: each must be a multiple of 32")
    vae_cfg["block_out_channels"] = vae_widths
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg)
    clip = preset_json("CLIP_L")
    clip.pop("architectures")
    clip["num_hidden_layers"] = args.clip_layers
    text_encoder = CLIPTextModel(CLIPTextConfig(**clip))
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    print(f"wrote {out}: UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters "
          f"(widths {unet_cfg['block_out_channels']}), VAE widths {vae_cfg['block_out_channels']}, "
          f"CLIP ViT-L/14 text encoder with {args.clip_layers} layers")


if __name__ == "__main__":
    main()
