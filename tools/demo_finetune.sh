#!/usr/bin/env bash
# `make demo-finetune`: a measurable fine-tune. A text-to-image model that already draws shapes
# of four colours learns a fifth colour from a small captioned set, and the shapes judge measures
# both sides: the prompts with the new colour now produce it, the old prompts still produce what
# they did.
#
#   1. data: a base set of captioned shapes with every purple combination withheld (the base
#      never meets the word "purple" nor a purple shape), and a second set with every colour
#      (another seed) from which the fine-tuning set is taken: its purple shapes and as many
#      shapes of the old colours (replay);
#   2. the VAE (configs/shapes-vae.toml) on the second set: an image codec of every colour, as
#      SD's VAE is; it stays frozen in every run after it;
#   3. the base: configs/shapes-t2i.toml on the base set around that VAE (fresh UNet and CLIP
#      text encoder with a tokenizer learned from purple-free captions);
#   4. the fine-tunes: configs/shapes-finetune.toml from the base's diffusers folder, once with
#      the text encoder trained (the config's) and once with it frozen;
#   5. each model, once trained: 2 samples of each evaluation prompt (the same seeds for every
#      model), judged: the 48 purple prompts (the base set's prompts-withheld.txt) and the 64
#      old ones (prompts-seen.txt).
#
# BIN, RUNS as in tools/demo_t2i.sh; BASE_STEPS, VAE_STEPS, FT_STEPS, REPLAY (old-colour images
# per purple one in the fine-tuning set) and FROZEN=0 (skip the frozen-text-encoder fine-tune)
# change the sizes; THREADS sets train.threads (0: one per core; 1 is faster on a machine
# loaded by other work, where 2 threads on 2 busy cores wait for each other).
set -euo pipefail
BIN=${BIN:-target/release/difforge}
RUNS=${RUNS:-runs}
BASE_STEPS=${BASE_STEPS:-4000} # the steps of configs/shapes-t2i.toml
VAE_STEPS=${VAE_STEPS:-1600} # the steps of configs/shapes-vae.toml
FT_STEPS=${FT_STEPS:-400}
REPLAY=${REPLAY:-1}
FROZEN=${FROZEN:-1}
THREADS=${THREADS:-0}
NEW=purple
W=$RUNS/shapes-finetune
BASE_DATA=$W/base-data FULL_DATA=$W/full-data FT_DATA=$W/ft-data
VAE=$W/vae BASE=$W/base CACHE=$W/latents
if [ -e "$W" ]; then
  echo "replacing the previous demo output in $W" >&2
  rm -rf "$W"
fi
mkdir -p "$W"
t0=$(date +%s)

# 1. Data.
withhold="$NEW circle,$NEW square,$NEW triangle,$NEW diamond"
"$BIN" data synth shapes --out "$BASE_DATA" --n 4000 --seed 0 --withhold "$withhold"
"$BIN" data synth shapes --out "$FULL_DATA" --n 4000 --seed 1 --withhold none
mkdir -p "$FT_DATA"
grep -lw "$NEW" "$FULL_DATA"/[0-9]*.txt > "$W/ft-new.list"
n_new=$(wc -l < "$W/ft-new.list")
{ grep -Lw "$NEW" "$FULL_DATA"/[0-9]*.txt || true; } | head -n $((n_new * REPLAY)) > "$W/ft-replay.list"
n_replay=$(wc -l < "$W/ft-replay.list")
cat "$W/ft-new.list" "$W/ft-replay.list" | while read -r txt; do
  cp "$txt" "${txt%.txt}.png" "$FT_DATA/"
done
echo "fine-tuning set $FT_DATA: $n_new $NEW shapes + $n_replay of the old colours"
t_data=$(date +%s)

# 2. The VAE, on every colour.
"$BIN" vae train --config configs/shapes-vae.toml --set "data.path=\"$FULL_DATA\"" \
  --set "train.steps=$VAE_STEPS" --set "train.threads=$THREADS" --out "$VAE" --overwrite
t_vae=$(date +%s)

# Samples of the same prompts and seeds from a model, judged: the new-colour prompts (the base
# set's withheld ones) and the old ones. Each model is judged as soon as it is trained.
judge_s=0
judge() { # model
  local start set dir
  start=$(date +%s)
  for set in withheld seen; do
    dir=$W/judge/$1-$set
    mkdir -p "$dir"
    "$BIN" sample --checkpoint "$W/$1/diffusers" --prompts "$BASE_DATA/prompts-$set.txt" --n 2 \
      --sampler ddim --steps 25 --guidance 4 --out "$dir/sample.png" > /dev/null
    "$BIN" data judge "$dir" --manifest "$BASE_DATA/shapes.json" | tee "$dir.txt"
    "$BIN" data judge "$dir" --manifest "$BASE_DATA/shapes.json" --json > "$dir.json"
  done
  judge_s=$((judge_s + $(date +%s) - start))
}

# 3. The base: UNet and text encoder from scratch, never a purple caption or shape.
"$BIN" train --config configs/shapes-t2i.toml --set "data.path=\"$BASE_DATA\"" \
  --set "model.new.vae=\"$VAE/vae\"" --set "model.cache_dir=\"$CACHE\"" \
  --set "train.steps=$BASE_STEPS" --set "train.threads=$THREADS" --out "$BASE" --overwrite
t_base=$(date +%s)
judge base

# 4. The fine-tunes: the text encoder trained (the config's), then frozen.
finetune() { # name, extra --set...
  local name=$1 start
  shift
  start=$(date +%s)
  "$BIN" train --config configs/shapes-finetune.toml --set "data.path=\"$FT_DATA\"" \
    --set "model.base=\"$BASE/diffusers\"" --set "model.cache_dir=\"$CACHE\"" \
    --set "train.steps=$FT_STEPS" --set "train.threads=$THREADS" "$@" --out "$W/$name" --overwrite
  echo $(($(date +%s) - start)) > "$W/$name.wall_s"
  judge "$name"
}
finetune ft-text
variants="base ft-text"
if [ "$FROZEN" = 1 ]; then
  finetune ft-frozen --set model.train_text_encoder=false
  variants="$variants ft-frozen"
fi
t_end=$(date +%s)

row() { # label, judge json
  jq -r --arg name "$1" 'def pct(c; n): (1000 * c / n) as $x | ($x | floor) as $f
      | (if $x - $f == 0.5 then $f + ($f % 2) elif $x - $f > 0.5 then $f + 1 else $f end) as $t
      | "\($t / 10 | floor).\($t % 10)%"; # rounded half to even, as the judge prints
    .report.overall as $g
    | [$g.colour, $g.kind, $g.size, $g.position, $g.background]
    | map(if .named > 0 then pct(.correct; .named) else "-" end)
    | "| \($name) (\($g.images) images) | " + join(" | ") + " | " + pct($g.all_correct; $g.images) + " |"' "$2"
}
label() {
  case $1 in
    base) echo "base" ;;
    ft-text) echo "fine-tuned (UNet + text encoder)" ;;
    ft-frozen) echo "fine-tuned (UNet, text encoder frozen)" ;;
  esac
}
{
  echo
  echo "Prompt adherence as the shapes judge reads it (2 samples per prompt, DDIM 25 steps, guidance 4,"
  echo "the same seeds for every model; adherence = every attribute the caption names right):"
  echo
  echo "| model, prompts | colour | kind | size | position | background | adherence |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for set in withheld seen; do
    for model in $variants; do
      if [ "$set" = withheld ]; then what="new-colour ($NEW) prompts"; else what="old prompts"; fi
      row "$(label "$model"), $what" "$W/judge/$model-$set.json"
    done
  done
  echo
  echo "demo-finetune finished in $((t_end - t0)) s: data $((t_data - t0)) s, VAE $((t_vae - t_data)) s ($VAE_STEPS steps),"
  echo "base $((t_base - t_vae)) s ($BASE_STEPS steps), fine-tune with the text encoder $(cat "$W/ft-text.wall_s") s ($FT_STEPS steps),"
  if [ "$FROZEN" = 1 ]; then echo "fine-tune with it frozen $(cat "$W/ft-frozen.wall_s") s ($FT_STEPS steps),"; fi
  echo "sampling and judging $judge_s s. Fine-tuning set: $n_new $NEW shapes + $n_replay replay."
} | tee "$W/results.md"
echo
echo "Outputs:"
echo "  $BASE_DATA/   the base's captioned shapes (no $NEW), prompts-seen.txt, prompts-withheld.txt"
echo "  $FT_DATA/     the fine-tuning set (from $FULL_DATA/)"
echo "  $VAE/vae/     the VAE; $BASE/diffusers/ the base; $W/ft-*/diffusers/ the fine-tuned models"
echo "  $W/judge/     the judged samples (MODEL-withheld: $NEW prompts, MODEL-seen: old prompts) and scores"
echo "  $W/results.md the table above"
