#!/usr/bin/env bash
# Stable Diffusion LoRA training on the CPU: `difforge train` (model.family = "stable-diffusion",
# [lora]) beside the loop of diffusers' train_text_to_image_lora.py (tools/bench_sd_lora.py), on the
# same base folder, captioned image folder, size, batch, rank, alpha, lr and threads; the engines
# run in turn --repeat times (the order flips every repeat) and one Markdown table is printed.
#
#   tools/bench_sd_lora.sh --base SD_FOLDER --data IMAGE_FOLDER [--size 32] [--batch 4] [--rank 4]
#                          [--alpha RANK] [--lr 1e-4] [--warmup 2] [--steps 10] [--repeat 1]
#                          [--threads 2] [--kernels native|portable] [--no-ema] [--latents sample|mean]
#                          [--device cpu|cuda] [--bin target/release/difforge] [--out DIR]
#
# What is timed, on both sides: the wall time of each optimiser step (batch assembly from images
# already decoded in memory, VAE encode, noise and timesteps, CLIP text encoder, UNet forward,
# MSE loss, backward, grad-norm clip, AdamW, EMA of the LoRA parameters, reading the loss back),
# the first --warmup steps left out; s/step is the median of the timed steps of all repeats pooled,
# img/s = batch / that; the best run's median is shown too (the least disturbed run on a busy machine).
# difforge's per-step times come from its metrics.jsonl (train.log_every = 1: elapsed_s is
# measured from just before the first step, after the model and data are loaded); its summary's
# images_per_s is NOT used, because it counts the first (warm-up) steps and the final checkpoint,
# preview grid and adapter export. Model loading, data decoding, checkpoints, validation (off) and
# previews are outside the timed steps on both sides. Peak memory is each process's maximum
# resident set (GNU time), loading included.
#
# Both engines run the same libtorch 2.11 libraries (difforge links the venv's, LIBTORCH_USE_PYTORCH)
# with the same thread count and OMP/MKL settings. Differences that remain: difforge uses the VAE
# posterior's mean, the script samples it (--latents mean makes the Python side take the mean);
# difforge tokenizes the captions every step, the script once; difforge keeps a full EMA copy of
# the UNet (only its LoRA part is updated), which counts in its peak memory, while Python's peak
# includes the interpreter and the diffusers/transformers/peft imports. --no-ema drops the
# Python EMA; difforge then still runs its (decay 0) EMA update, a copy of the LoRA weights.
#
# The data folder needs .txt caption sidecars (the Python side reads only those). The test
# fixture crates/difforge-nn/tests/fixtures/sd/tiny-sd15 has a 21 k-parameter UNet: its steps
# measure per-operator overhead; tools/make_sd_bench_base.py writes random-weight SD 1.5-shaped
# bases (full size, or scaled down) for compute-bound runs.
#
# Needs a difforge binary with the stable-diffusion family (make build; a debug binary works but
# its Rust side is slower), the torch 2.11.0 venv and the diffusers tools (tools/setup_sd_tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source ./env.sh

base="" data="" size=32 batch=4 rank=4 alpha="" lr=1e-4 warmup=2 steps=10 repeat=1 threads=2 device=cpu
kernels=native ema=1 latents=sample bin=target/release/difforge out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --size) size="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --rank) rank="$2"; shift 2 ;;
        --alpha) alpha="$2"; shift 2 ;;
        --lr) lr="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --repeat) repeat="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --kernels) kernels="$2"; shift 2 ;;
        --no-ema) ema=0; shift ;;
        --latents) latents="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
        *) echo "bench_sd_lora.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$base" ] && [ -n "$data" ] || { echo "bench_sd_lora.sh: --base and --data are required (see --help)" >&2; exit 2; }
alpha="${alpha:-$rank}"
base="$(cd "$base" && pwd)" data="$(cd "$data" && pwd)"
[ -x "$bin" ] || { echo "bench_sd_lora.sh: no difforge binary at $bin (make build, or --bin)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench_sd_lora.sh: needs GNU time (/usr/bin/time) for the peak memory" >&2; exit 2; }
case "$kernels" in native|portable) ;; *) echo "bench_sd_lora.sh: --kernels native|portable" >&2; exit 2 ;; esac
case "$latents" in sample|mean) ;; *) echo "bench_sd_lora.sh: --latents sample|mean" >&2; exit 2 ;; esac
[ "$warmup" -ge 1 ] && [ "$steps" -ge 1 ] || { echo "bench_sd_lora.sh: --warmup and --steps must be at least 1" >&2; exit 2; }

work="${out:-$(mktemp -d)}"
mkdir -p "$work"
py="$DIFFORGE_TORCH_VENV/bin/python"
sd_tools="$HOME/.cache/difforge/sd-tools"
# The same thread settings for both engines; portable kernels are pinned for both too.
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
if [ "$kernels" = portable ]; then
    export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2
fi
ema_decay=0.999
[ "$ema" = 1 ] || ema_decay=0.0  # difforge always runs the EMA update; 0.0 makes it a copy

# The first caption, as the (untimed) preview prompt.
prompt="$(cat "$(ls "$data"/*.txt | head -n1)" 2>/dev/null | head -n1 | tr -d '"\\' || true)"
config="$work/difforge.toml"
cat > "$config" <<EOF
seed = 0

[data]
source = "folder"
path = "$data"
image_size = $size
channels = 3
val_fraction = 0.0

[model]
family = "stable-diffusion"
base = "$base"
preview_prompts = ["$prompt"]

[diffusion]
schedule = "scaled_linear"
beta_start = 0.00085
beta_end = 0.012
prediction = "epsilon"
class_dropout = 0.0

[train]
steps = $((warmup + steps))
batch_size = $batch
lr = $lr
warmup_steps = 0
lr_schedule = "constant"
weight_decay = 0.01
grad_clip = 1.0
ema_decay = $ema_decay
checkpoint_every = 0
sample_every = 0
sample_per_class = 1
val_every = 0
log_every = 1
threads = $threads
device = "$device"
cpu_kernels = "$kernels"

[sample]
sampler = "ddim"
steps = 1

[lora]
rank = $rank
alpha = $alpha
EOF

# difforge: per-step times from metrics.jsonl; peak RSS from GNU time.
run_difforge() {
    local i="$1" dir="$work/difforge-$1"
    rm -rf "$dir"
    /usr/bin/time -v "$bin" train --config "$config" --out "$dir" --json > "$work/difforge-$i.summary.json" 2> "$work/difforge-$i.stderr" \
        || { echo "bench_sd_lora.sh: difforge failed:" >&2; tail -n 20 "$work/difforge-$i.stderr" >&2; exit 1; }
    "$py" - "$dir/metrics.jsonl" "$work/difforge-$i.stderr" "$warmup" "$batch" "$work/difforge-$i.summary.json" > "$work/difforge-$i.json" <<'PY'
import json, re, statistics, sys
metrics, stderr, warmup, batch, summary = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
recs = [json.loads(l) for l in open(metrics) if l.strip()]
elapsed = {r["step"]: r["elapsed_s"] for r in recs}
last = max(elapsed)
assert all(s in elapsed for s in range(1, last + 1)), "metrics.jsonl lacks steps: log_every must be 1"
times = [elapsed[s] - elapsed.get(s - 1, 0.0) for s in range(warmup + 1, last + 1)]
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(stderr).read()).group(1)) * 1024
med = statistics.median(times)
print(json.dumps({"engine": "difforge", "step_s": times, "step_s_median": med, "step_s_min": min(times),
                  "step_s_max": max(times), "images_per_s": batch / med, "peak_rss_bytes": rss,
                  "peak_gpu_bytes": json.load(open(summary)).get("peak_gpu_memory_bytes"),
                  "first_step_s": elapsed[1], "final_loss": recs[-1]["loss"]}))
PY
}

run_diffusers() {
    local i="$1" no_ema=""
    [ "$ema" = 1 ] || no_ema=--no-ema
    /usr/bin/time -v env PYTHONPATH="$sd_tools${PYTHONPATH:+:$PYTHONPATH}" "$py" tools/bench_sd_lora.py \
        --base "$base" --data "$data" --size "$size" --batch "$batch" --rank "$rank" --alpha "$alpha" --lr "$lr" \
        --warmup "$warmup" --steps "$steps" --threads "$threads" --device "$device" --latents "$latents" $no_ema \
        --out "$work/diffusers-$i.raw.json" > /dev/null 2> "$work/diffusers-$i.stderr" \
        || { echo "bench_sd_lora.sh: bench_sd_lora.py failed:" >&2; tail -n 20 "$work/diffusers-$i.stderr" >&2; exit 1; }
    "$py" - "$work/diffusers-$i.raw.json" "$work/diffusers-$i.stderr" > "$work/diffusers-$i.json" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
r["peak_rss_bytes"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(sys.argv[2]).read()).group(1)) * 1024
print(json.dumps(r))
PY
}

for i in $(seq 1 "$repeat"); do
    if [ $((i % 2)) = 1 ]; then
        echo "repeat $i/$repeat: difforge, then diffusers" >&2
        run_difforge "$i"; run_diffusers "$i"
    else
        echo "repeat $i/$repeat: diffusers, then difforge" >&2
        run_diffusers "$i"; run_difforge "$i"
    fi
done

"$py" - "$work" "$repeat" "$size" "$batch" "$rank" "$alpha" "$warmup" "$steps" "$threads" "$kernels" "$ema" "$bin" "$latents" "$base" "$device" <<'PY'
import json, statistics, sys
work, repeat = sys.argv[1], int(sys.argv[2])
size, batch, rank, alpha, warmup, steps, threads, kernels, ema, binary, latents, base, device = sys.argv[3:16]
print(f"SD LoRA training, {device}, base {base}: {size}x{size}, batch {batch}, rank {rank}, alpha {alpha}, {threads} threads, "
      f"{kernels} kernels, EMA {'on' if ema == '1' else 'off'}, diffusers latents {latents}; "
      f"{warmup} warm-up + {steps} timed steps, {repeat} repeat(s); difforge = {binary}")
print()
print("| engine | img/s | s/step median | s/step best run | s/step range | peak RSS | peak GPU memory |")
print("|---|---:|---:|---:|---:|---:|---:|")
for engine in ("difforge", "diffusers"):
    runs = [json.load(open(f"{work}/{engine}-{i}.json")) for i in range(1, repeat + 1)]
    all_steps = [t for r in runs for t in r["step_s"]]
    med = statistics.median(all_steps)
    best = min(r["step_s_median"] for r in runs)
    rss = max(r["peak_rss_bytes"] for r in runs)
    name = "difforge" if engine == "difforge" else "diffusers 0.35 + peft (train_text_to_image_lora loop)"
    gpu = [r.get("peak_gpu_bytes") for r in runs if r.get("peak_gpu_bytes")]
    gpu = f"{max(gpu) / 2**20:.0f} MiB" if gpu else "-"
    print(f"| {name} | {int(batch) / med:.2f} | {med:.4f} | {best:.4f} | {min(all_steps):.4f}-{max(all_steps):.4f} | {rss / 2**20:.0f} MiB | {gpu} |")
print()
print("s/step median: over the timed steps of all runs pooled; img/s = batch / that. Best run: the lowest per-run median "
      "(on a busy machine the least disturbed run). Range: the fastest and slowest timed step. Peak RSS: the largest of "
      "the runs (whole process, loading included). Peak GPU memory: the CUDA caching allocator's peak of tensors "
      "(torch.cuda.max_memory_allocated on both sides).")
print(f"JSON per run: {work}")
PY
