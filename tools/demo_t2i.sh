#!/usr/bin/env bash
# `make demo-t2i`: a text-to-image model trained from scratch on a CPU, judged for whether it draws
# what its prompts ask for. A synthetic captioned set of coloured shapes (with three colour-kind
# combinations withheld), a VAE trained on it, a new Stable Diffusion model around that VAE (fresh
# UNet and CLIP text encoder), both trained on the captions, exported as a diffusers folder, then
# 2 samples of every evaluation prompt judged from their pixels (colour, kind, size, position,
# background): the prompts seen in training and, apart, the withheld combinations.
set -euo pipefail
BIN=${BIN:-target/release/difforge}
RUNS=${RUNS:-runs}
DATA=${DATA:-data/shapes}
VAE=$RUNS/shapes-vae BASE=$RUNS/shapes-base T2I=$RUNS/shapes-t2i
for old in "$VAE" "$BASE" "$T2I"; do
  if [ -e "$old" ]; then
    echo "removing the previous demo output in $old" >&2
    rm -rf "$old"
  fi
done
start=$(date +%s)
"$BIN" data synth shapes --out "$DATA" --n 4000
"$BIN" vae train --config configs/shapes-vae.toml --set "data.path=\"$DATA\"" --out "$VAE"
vae_done=$(date +%s)
"$BIN" sd init --vae "$VAE/vae" --out "$BASE" --image-size 32 \
  --unet-channels 32,64 --unet-heads 4 --norm-groups 16 --text-width 64 --text-layers 2 --text-heads 2
"$BIN" train --config configs/shapes-t2i.toml --set "data.path=\"$DATA\"" --set "model.base=\"$BASE\"" \
  --set "model.cache_dir=\"$RUNS/shapes-latents\"" --out "$T2I"
trained=$(date +%s)
for set in seen withheld; do
  mkdir -p "$T2I/judge-$set"
  "$BIN" sample --checkpoint "$T2I/diffusers" --prompts "$DATA/prompts-$set.txt" --n 2 \
    --sampler ddim --steps 25 --guidance 4 --out "$T2I/judge-$set/sample.png"
  if [ "$set" = seen ]; then label="prompts whose colour-kind combination was in training"; else label="withheld colour-kind combinations (never in training)"; fi
  echo "$label:" | tee "$T2I/judge-$set.txt"
  "$BIN" data judge "$T2I/judge-$set" --manifest "$DATA/shapes.json" | tee -a "$T2I/judge-$set.txt"
done
end=$(date +%s)
echo
echo "demo-t2i finished in $((end - start)) s (VAE $((vae_done - start)) s, UNet and text encoder $((trained - vae_done)) s, sampling and judging $((end - trained)) s). Outputs:"
echo "  $DATA/                     the captioned shapes (shapes.json, prompts-seen.txt, prompts-withheld.txt)"
echo "  $VAE/vae/          the VAE as a diffusers AutoencoderKL folder; reconstructions.png"
echo "  $T2I/diffusers/    the model as a diffusers StableDiffusionPipeline folder"
echo "  $T2I/samples/      preview grids written during training"
echo "  $T2I/judge-seen/, judge-withheld/   the judged samples; judge-*.txt the scores"
