#!/usr/bin/env bash
# The demo: train the embedded digits default, train the sample judge on the same training
# split, then generate 200 guided samples (20 per class, DDIM 25 steps) and report how many the
# judge classifies as the class asked for, and finally evaluate the model (difforge eval: 1,000
# samples, FD-EffNet, KID, precision/recall, class accuracy, memorisation, consistency) with an
# HTML report. Prints where everything went and the time taken.
set -euo pipefail
BIN=${BIN:-target/release/difforge}
RUN=${RUN:-runs/demo}
if [ -e "$RUN" ]; then
  echo "removing the previous demo run in $RUN" >&2
  rm -rf "$RUN"
fi
start=$(date +%s)
"$BIN" train --out "$RUN"
"$BIN" classifier train --out "$RUN/classifier"
"$BIN" classifier judge --classifier "$RUN/classifier" --checkpoint "$RUN" --per-class 20 \
  --sampler ddim --steps 25 --grid "$RUN/judged-samples.png" | tee "$RUN/judge.txt"
judged=$(date +%s)
"$BIN" eval --checkpoint "$RUN" --report "$RUN/eval" | tee "$RUN/eval.txt"
end=$(date +%s)
echo
echo "demo finished in $((end - start)) s (training and judging $((judged - start)) s, evaluation $((end - judged)) s). Outputs:"
echo "  $RUN/config.toml            the effective config"
echo "  $RUN/checkpoints/           checkpoints (weights, EMA, optimiser state, manifest)"
echo "  $RUN/samples/               sample grids written during training"
echo "  $RUN/metrics.jsonl          loss, learning rate, images/s per step"
echo "  $RUN/validation.jsonl       validation loss per timestep band, raw and EMA"
echo "  $RUN/summary.json           final step, losses, wall time, device"
echo "  $RUN/classifier/            the judge (classifier.safetensors, classifier.json)"
echo "  $RUN/judged-samples.png     the 200 judged samples, one row per class"
echo "  $RUN/eval/report.html       the evaluation report (eval.json: its numbers)"
