#!/usr/bin/env bash
# difforge vs PyTorch on the same machine, one after the other, with the same network, batch,
# steps and threads; prints one Markdown table. The network is ref6m (the 6.1 M-parameter
# reference UNet) or, with --model CONFIG, the UNet and training recipe of a difforge run config,
# which tools/bench_torch.py mirrors in PyTorch (e.g. --model configs/digits.toml, the demo's).
#
#   tools/bench.sh [--model ref6m|CONFIG.toml] [--batch 16] [--steps 10] [--warmup 3] [--threads N] [--device auto|cpu|cuda]
#                  [--sample-batch B] [--sample-steps 50] [--precision fp32|tf32|bf16]
#                  [--compile] [--repeat N] [--out DIR]
#
# --compile adds a PyTorch torch.compile row; --repeat N runs the engines N times in turn and
# reports the median of each (a shared machine's speed drifts by 20% from minute to minute, so a
# single pass can favour whichever engine ran in a fast minute); --out keeps the JSON reports.
# Needs target/release/difforge (make build) and the torch 2.11.0 venv (tools/setup_venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source ./env.sh

batch=16 steps=10 warmup=3 threads=0 device=auto sample_batch="" sample_steps=50 precision=fp32
compile=0 out="" model=ref6m repeat=1
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --sample-batch) sample_batch="$2"; shift 2 ;;
        --sample-steps) sample_steps="$2"; shift 2 ;;
        --precision) precision="$2"; shift 2 ;;
        --compile) compile=1; shift ;;
        --repeat) repeat="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
sample_batch="${sample_batch:-$batch}"
case "$model" in
    ref6m) torch_model=() ;;
    *.toml) [ -f "$model" ] || { echo "bench.sh: --model $model: no such file" >&2; exit 2; }; torch_model=(--config "$model") ;;
    *) echo "bench.sh: --model $model: expected ref6m or a run config .toml (bench_torch.py mirrors only those)" >&2; exit 2 ;;
esac
if [ "$threads" = 0 ]; then threads="$(nproc)"; fi

bin=target/release/difforge
py="$DIFFORGE_TORCH_VENV/bin/python"
[ -x "$bin" ] || { echo "bench.sh: $bin is missing: run make build first" >&2; exit 1; }
[ -x "$py" ] || { echo "bench.sh: $py is missing: run tools/setup_venv.sh first" >&2; exit 1; }

if [ -n "$out" ]; then mkdir -p "$out"; dir="$out"; else dir="$(mktemp -d)"; trap 'rm -rf "$dir"' EXIT; fi
common=(--batch "$batch" --steps "$steps" --warmup "$warmup" --threads "$threads" --device "$device"
        --sample-batch "$sample_batch" --sample-steps "$sample_steps")

# CPU time that other processes took while each engine ran (from /proc/stat, minus our own):
# a shared machine skews the numbers, and this says by how much.
hz="$(getconf CLK_TCK)"
busy_s() { awk -v hz="$hz" '/^cpu /{printf "%.2f", ($2+$3+$4+$7+$8)/hz}' /proc/stat 2>/dev/null || echo 0; }
# Our own children's CPU seconds: `times` must run in this shell (not in a $(...) subshell).
children_s() { times > "$dir/times.txt"; tail -1 "$dir/times.txt" | awk '{n=0; for(i=1;i<=2;i++){split($i,a,"m"); sub("s","",a[2]); n+=a[1]*60+a[2]} printf "%.2f", n}'; }
run_engine() {  # run_engine LABEL OUT_JSON COMMAND...
    local label="$1" json="$2"; shift 2
    echo "$label..." >&2
    local b0 c0 t0 b1 c1 t1
    b0="$(busy_s)"; children_s > "$dir/c0.txt"; t0="$(date +%s.%N)"
    "$@" > "$json"
    b1="$(busy_s)"; children_s > "$dir/c1.txt"; t1="$(date +%s.%N)"
    c0="$(cat "$dir/c0.txt")"; c1="$(cat "$dir/c1.txt")"
    awk -v b="$b1" -v b0="$b0" -v c="$c1" -v c0="$c0" -v w="$t1" -v w0="$t0" -v l="$(basename "$json" .json)" \
        'BEGIN{o=(b-b0)-(c-c0); if(o<0)o=0; printf "%s: %.1f s of %.0f s wall\n", l, o, w-w0}' >> "$dir/others.txt"
}
: > "$dir/others.txt"

case "$repeat" in ''|*[!0-9]*|0) echo "bench.sh: --repeat $repeat: expected a whole number of at least 1" >&2; exit 2 ;; esac
files=()
for r in $(seq 1 "$repeat"); do
    run_engine "[$r/$repeat] difforge bench ($model, batch $batch, $steps steps, $threads threads, $precision)" "$dir/difforge-$r.json" \
        "$bin" bench --model "$model" "${common[@]}" --precision "$precision" --json
    run_engine "[$r/$repeat] PyTorch eager" "$dir/torch-eager-$r.json" "$py" tools/bench_torch.py "${torch_model[@]}" "${common[@]}" --mode "$precision"
    files+=("$dir/difforge-$r.json" "$dir/torch-eager-$r.json")
    if [ "$compile" = 1 ]; then
        run_engine "[$r/$repeat] PyTorch torch.compile" "$dir/torch-compile-$r.json" "$py" tools/bench_torch.py "${torch_model[@]}" "${common[@]}" --mode "$precision" --compile
        files+=("$dir/torch-compile-$r.json")
    fi
done

"$py" - "$dir/others.txt" "${files[@]}" <<'EOF'
import json, sys
others = "; ".join(l.strip() for l in open(sys.argv[1]) if l.strip())
import statistics
runs = {}
for p in sys.argv[2:]:
    r = json.load(open(p))
    runs.setdefault(r["engine"], []).append(r)
def median_row(rs):
    # Each number is the median over the repeats; the rest is the first run's.
    out = dict(rs[0])
    for k in ["train_step_s", "train_images_per_s", "sample_images_per_s", "peak_memory_bytes"]:
        vals = [r[k] for r in rs if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    out["spread"] = (min(r["train_step_s"] for r in rs), max(r["train_step_s"] for r in rs))
    out["repeats"] = len(rs)
    return out
rows = [median_row(rs) for rs in runs.values()]
eager = next((r for r in rows if r["engine"] == "pytorch-eager"), None)
def mem(r):
    b = r.get("peak_memory_bytes")
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"
names = {"difforge": "difforge (Rust, tch 0.24)", "pytorch-eager": "PyTorch eager", "pytorch-compile": "PyTorch torch.compile"}
def ratio(r, k):
    return f"{r[k] / eager[k]:.2f}x" if eager else "-"
print("| engine | train img/s | vs eager | s/step (range over repeats) | sample img/s | vs eager | peak memory |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    lo, hi = r["spread"]
    spread = f" ({lo:.3f}-{hi:.3f})" if r["repeats"] > 1 else ""
    print(f"| {names.get(r['engine'], r['engine'])} | {r['train_images_per_s']:,.1f} | {ratio(r, 'train_images_per_s')} | "
          f"{r['train_step_s']:.4f}{spread} | {r['sample_images_per_s']:,.2f} | {ratio(r, 'sample_images_per_s')} | {mem(r)} |")
r0 = rows[0]
print()
print(f"{r0['model']} ({r0['parameters']:,} parameters, {r0['channels']}x{r0['image_size']}x{r0['image_size']}), {r0['device']}, {r0['threads']} threads, {r0['precision']}; "
      f"medians of {r0['repeats']} runs of each engine, in turn; "
      f"training: batch {r0['batch']}, {r0['timed_steps']} timed steps after {r0['warmup_steps']} warm-up; "
      f"sampling: DDIM {r0['sample_steps']} steps at batch {r0['sample_batch']}, guidance 1 (no CFG doubling). "
      f"Forward FLOPs/image: {r0['flops_per_image_forward'] / 1e9:.3f} G (difforge, analytic) vs "
      f"{rows[1]['flops_per_image_forward'] / 1e9:.3f} G (torch FlopCounterMode). "
      f"Peak memory: {r0['peak_memory_source']}. "
      f"CPU time taken by other processes during each run: {others}.")
EOF
