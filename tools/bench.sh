#!/usr/bin/env bash
# difforge vs PyTorch on the same machine, one after the other, with the same network (ref6m,
# the 6.1 M-parameter reference UNet), batch, steps and threads; prints one Markdown table.
#
#   tools/bench.sh [--batch 16] [--steps 10] [--warmup 3] [--threads N] [--device auto|cpu|cuda]
#                  [--sample-batch B] [--sample-steps 50] [--precision fp32|tf32|bf16]
#                  [--compile] [--out DIR]
#
# --compile adds a PyTorch torch.compile row; --out keeps the three JSON reports in DIR.
# Needs target/release/difforge (make build) and the torch 2.11.0 venv (tools/setup_venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source ./env.sh

batch=16 steps=10 warmup=3 threads=0 device=auto sample_batch="" sample_steps=50 precision=fp32
compile=0 out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --batch) batch="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --sample-batch) sample_batch="$2"; shift 2 ;;
        --sample-steps) sample_steps="$2"; shift 2 ;;
        --precision) precision="$2"; shift 2 ;;
        --compile) compile=1; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
sample_batch="${sample_batch:-$batch}"
if [ "$threads" = 0 ]; then threads="$(nproc)"; fi

bin=target/release/difforge
py="$DIFFORGE_TORCH_VENV/bin/python"
[ -x "$bin" ] || { echo "bench.sh: $bin is missing: run make build first" >&2; exit 1; }
[ -x "$py" ] || { echo "bench.sh: $py is missing: run tools/setup_venv.sh first" >&2; exit 1; }

if [ -n "$out" ]; then mkdir -p "$out"; dir="$out"; else dir="$(mktemp -d)"; trap 'rm -rf "$dir"' EXIT; fi
common=(--batch "$batch" --steps "$steps" --warmup "$warmup" --threads "$threads" --device "$device"
        --sample-batch "$sample_batch" --sample-steps "$sample_steps")

load_before="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')"
echo "difforge bench (ref6m, batch $batch, $steps steps, $threads threads, $precision)..." >&2
"$bin" bench --model ref6m "${common[@]}" --precision "$precision" --json > "$dir/difforge.json"
echo "PyTorch eager..." >&2
"$py" tools/bench_torch.py "${common[@]}" --mode "$precision" > "$dir/torch-eager.json"
files=("$dir/difforge.json" "$dir/torch-eager.json")
if [ "$compile" = 1 ]; then
    echo "PyTorch torch.compile..." >&2
    "$py" tools/bench_torch.py "${common[@]}" --mode "$precision" --compile > "$dir/torch-compile.json"
    files+=("$dir/torch-compile.json")
fi

load_after="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')"
"$py" - "$load_before" "$load_after" "${files[@]}" <<'EOF'
import json, sys
load_before, load_after = sys.argv[1:3]
rows = [json.load(open(p)) for p in sys.argv[3:]]
def mem(r):
    b = r.get("peak_memory_bytes")
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"
names = {"difforge": "difforge (Rust, tch 0.24)", "pytorch-eager": "PyTorch eager", "pytorch-compile": "PyTorch torch.compile"}
print("| engine | train img/s | s/step | sample img/s | peak memory |")
print("|---|---:|---:|---:|---:|")
for r in rows:
    print(f"| {names.get(r['engine'], r['engine'])} | {r['train_images_per_s']:,.1f} | {r['train_step_s']:.4f} | "
          f"{r['sample_images_per_s']:,.2f} | {mem(r)} |")
r0 = rows[0]
print()
print(f"ref6m ({r0['parameters']:,} parameters, 3x32x32), {r0['device']}, {r0['threads']} threads, {r0['precision']}; "
      f"training: batch {r0['batch']}, {r0['timed_steps']} timed steps after {r0['warmup_steps']} warm-up; "
      f"sampling: DDIM {r0['sample_steps']} steps at batch {r0['sample_batch']}, guidance 1 (no CFG doubling). "
      f"Forward FLOPs/image: {r0['flops_per_image_forward'] / 1e9:.3f} G (difforge, analytic) vs "
      f"{rows[1]['flops_per_image_forward'] / 1e9:.3f} G (torch FlopCounterMode). "
      f"Peak memory: {r0['peak_memory_source']}. "
      f"1-minute load average before / after: {load_before} / {load_after} (anything else running skews the numbers).")
EOF
