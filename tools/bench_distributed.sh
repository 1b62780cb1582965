#!/usr/bin/env bash
# Data-parallel throughput on this machine's CPU: the same training run as 1 process and as 2
# processes (`difforge launch`, Gloo on loopback, the global batch split in two), for the demo
# model (configs/digits.toml) and the 35 M-parameter big64 UNet (tools/gpu/big64.toml on 64x64
# digits). Prints images/s of each and the mean gradient all-reduce time per step.
# Usage: tools/bench_distributed.sh [steps] (default 30; big64 runs a sixth of them at batch 4)
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh
cargo build --release -p difforge >&2
BIN=target/release/difforge
STEPS="${1:-30}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CORES=$(nproc)

# run NAME PROCS STEPS THREADS_PER_PROCESS CONFIG [--set ...]
run() {
  local name="$1" procs="$2" steps="$3" threads="$4" config="$5"; shift 5
  local args=(train --config "$config" --set "train.steps=$steps" --set "train.threads=$threads" --set train.val_every=0
    --set train.checkpoint_every=0 --set train.sample_every=0 --set train.warmup_steps=1
    # The run's closing sample grid is not what is measured: one image, one sampler step.
    --set train.sample_per_class=1 --set sample.steps=1 "$@" --out "$WORK/$name" --json)
  if [ "$procs" = 1 ]; then "$BIN" "${args[@]}" > "$WORK/$name.json" 2> "$WORK/$name.err"
  else "$BIN" launch --nproc-per-node "$procs" -- "${args[@]}" > "$WORK/$name.json" 2> "$WORK/$name.err"; fi
  python3 - "$WORK/$name.json" "$name" "$procs" "$threads" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p = s.get("parallel") or {}
reduce = f"{p['allreduce_ms_per_step']:.1f}" if p else "-"
print(f"| {sys.argv[2]} | {sys.argv[3]} x {sys.argv[4]} threads | {s['parameters']/1e6:.2f} M | {s['images_per_s']:.1f} | {reduce} |")
PY
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $CORES cores; steps: $STEPS"
echo "| run | processes | parameters | images/s | all-reduce ms/step |"
echo "|---|---|---|---|---|"
run demo-1proc 1 "$STEPS" "$CORES" configs/digits.toml
run demo-2proc 2 "$STEPS" $((CORES / 2 > 0 ? CORES / 2 : 1)) configs/digits.toml
BIG=(--set 'data.source="digits"' --set train.batch_size=4 --set model.num_classes=0)
run big64-1proc 1 $((STEPS / 6)) "$CORES" tools/gpu/big64.toml "${BIG[@]}"
run big64-2proc 2 $((STEPS / 6)) $((CORES / 2 > 0 ? CORES / 2 : 1)) tools/gpu/big64.toml "${BIG[@]}"
