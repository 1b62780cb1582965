#!/usr/bin/env bash
# `make demo-t2i`: a text-to-image model trained from scratch on a CPU, judged for whether it draws
# what its prompts ask for. A synthetic captioned set of coloured shapes (with three colour-kind
# combinations withheld); then one config (configs/shapes-t2i.toml) runs every stage: a VAE trained
# on the shapes, a new Stable Diffusion model around that VAE (fresh UNet and CLIP text encoder),
# both trained on the captions, exported as a diffusers folder. Then
# 2 samples of every evaluation prompt judged from their pixels (colour, kind, size, position,
# background): the prompts seen in training and, apart, the withheld combinations.
set -euo pipefail
BIN=${BIN:-target/release/difforge}
RUNS=${RUNS:-runs}
# The path both configs read (configs/shapes-vae.toml, configs/shapes-t2i.toml).
DATA=data/shapes
T2I=$RUNS/shapes-t2i VAE=$RUNS/shapes-t2i/stages/vae
if [ -e "$T2I" ]; then
  echo "replacing the previous demo output in $T2I" >&2
fi
start=$(date +%s)
"$BIN" data synth shapes --out "$DATA" --n 4000
synthesised=$(date +%s)
"$BIN" train --config configs/shapes-t2i.toml --set "model.cache_dir=\"$RUNS/shapes-latents\"" --out "$T2I" --overwrite
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
vae_s=$(grep -o '"wall_time_s": *[0-9.]*' "$VAE/summary.json" | grep -o '[0-9.]*$' | cut -d. -f1)
echo "demo-t2i finished in $((end - start)) s (data $((synthesised - start)) s, training $((trained - synthesised)) s of which the VAE ${vae_s} s, sampling and judging $((end - trained)) s). Outputs:"
echo "  $DATA/                     the captioned shapes (shapes.json, prompts-seen.txt, prompts-withheld.txt)"
echo "  $VAE/vae/   the VAE as a diffusers AutoencoderKL folder; reconstructions.png"
echo "  $T2I/stages/base/  the new model before training (what difforge sd init writes)"
echo "  $T2I/diffusers/    the model as a diffusers StableDiffusionPipeline folder"
echo "  $T2I/samples/      preview grids written during training"
echo "  $T2I/judge-seen/, judge-withheld/   the judged samples; judge-*.txt the scores"
