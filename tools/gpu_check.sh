#!/usr/bin/env bash
# The GPU check: the one verdict a session with a lent GPU gets from a single call, with a
# prebuilt difforge binary carried to the device (it builds nothing there). Three phases, each
# row printed as it comes ("| check | verdict | detail |") and collected in $OUT/verdict.json:
#   1. environment: python >= 3.11 (tomllib), torch 2.11.0 (+cu130 on a GPU), the binary's
#      shared libraries (glibc, GLIBCXX, libtorch), gcc and Python.h (torch.compile's Triton);
#   2. correctness (all of --quick, about 3 minutes): two runs give the same bytes, a CPU and a
#      GPU run agree, bf16 autocast is really on, CUDA graphs capture (train and sample), two
#      processes train together (NCCL on a GPU, Gloo on the CPU);
#   3. speed (not with --quick): for the 6 M reference UNet (ref6m, 32x32, batch 128) and the
#      35 M UNet (big64, 64x64, batch 64), `difforge bench` in tf32, bf16, bf16 channels_last and
#      bf16 with CUDA graphs against tools/bench_torch.py (PyTorch eager at the same precisions,
#      cuDNN autotuning off as in difforge's portable mode, and torch.compile): train and sample
#      images/s, MFU, peak memory, ratio to eager, as a Markdown table.
# A check that needs what the machine lacks (a GPU, gcc) is reported as skipped, with the reason.
#
#   tools/gpu_check.sh [--quick]            on the device: BIN, PYTHON, OUT, DEVICE may be set
#   DEVICE=cpu BIN=target/debug/difforge tools/gpu_check.sh --quick
#                                            the script itself on a CPU (GPU rows skipped)
#   DEVICE=cpu STEPS=1 WARMUP=1 MODELS="ref6m:2 big64:1" COMPILE=0 tools/gpu_check.sh
#                                            a smoke test of the speed phase on a CPU
#
# MFU uses the dense peak of an H100/H200 SXM (989 TFLOP/s bf16, 494 tf32); set PEAK_BF16 and
# PEAK_TF32 for another card. Exit status: 1 if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
BIN=${BIN:-target/release/difforge}
PYTHON=${PYTHON:-$(command -v python3)}
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
MODELS=${MODELS:-ref6m:128 big64:64}
COMPILE=${COMPILE:-1}
SAMPLE_STEPS=${SAMPLE_STEPS:-20}
PEAK_BF16=${PEAK_BF16:-989}
PEAK_TF32=${PEAK_TF32:-494}
LIMIT=${LIMIT:-120}   # seconds per run: a hung or slow run cannot eat the whole check
mkdir -p "$OUT"
rm -f "$OUT/verdict.jsonl"
failed=0
gpu=0
[ "$DEVICE" != cpu ] && gpu=1

# row CHECK VERDICT DETAIL: one line of the verdict, printed now and kept for the JSON.
row() {
    printf '| %s | %s | %s |\n' "$1" "$2" "$3"
    local detail=${3//\\/\\\\}
    printf '{"check": "%s", "verdict": "%s", "detail": "%s"}\n' "$1" "$2" "${detail//\"/\\\"}" >> "$OUT/verdict.jsonl"
    [ "$2" = FAIL ] && failed=1
    return 0
}

# run NAME COMMAND...: stdout into $OUT/NAME.json, stderr into $OUT/NAME.log; false on failure.
run() {
    local name="$1"; shift
    if ! timeout "$LIMIT" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"; then
        rm -f "$OUT/$name.json"
        return 1
    fi
}

# json FILE KEY: a top-level value of a JSON file.
json() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))' "$1" "$2" 2>/dev/null; }

echo "| check | verdict | detail |"
echo "|---|---|---|"

# 1. Environment.
if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    row python FAIL "python >= 3.11 is needed (tomllib); set PYTHON"
    echo "gpu_check: no usable python" >&2; exit 1
fi
row python ok "$("$PYTHON" --version 2>&1)"
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null) || torch_version=""
case "$torch_version" in
    "") row torch FAIL "$PYTHON has no torch (pip install torch==2.11.0)"; exit 1 ;;
    2.11.0*) if [ $gpu = 1 ] && [[ "$torch_version" != *cu13* ]]; then row torch FAIL "$torch_version: a CUDA 13 build (+cu130) is expected"; else row torch ok "$torch_version"; fi ;;
    *) row torch FAIL "$torch_version: difforge links libtorch 2.11.0" ;;
esac
# The binary was linked against another machine's libtorch path: use this machine's torch.
torch_lib="$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -x "$BIN" ]; then
    row binary FAIL "$BIN is missing (build it where the sources are, carry it)"; exit 1
fi
missing=$(ldd "$BIN" 2>&1 | grep -E "not found|GLIBC|GLIBCXX" | tr '\n' ' ')
if [ -n "$missing" ]; then
    row binary FAIL "shared libraries: $missing"; exit 1
fi
if ! "$BIN" info > "$OUT/info.txt" 2>&1; then
    row binary FAIL "difforge info: $(tail -1 "$OUT/info.txt")"; exit 1
fi
row binary ok "$(head -1 "$OUT/info.txt")"
if [ $gpu = 1 ]; then
    card=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)
    if [ -n "$card" ]; then row gpu ok "$card"; else row gpu FAIL "torch sees no CUDA device"; exit 1; fi
else
    row gpu skipped "DEVICE=cpu"
fi
include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)
if command -v gcc > /dev/null && [ -f "$include/Python.h" ]; then
    row compiler ok "gcc $(gcc -dumpversion), Python.h"
else
    row compiler skipped "torch.compile rows need gcc and Python.h (apt-get install gcc python3-dev)"
    COMPILE=0
fi

# 2. Correctness.
tiny=(train --config configs/tiny.toml --set train.steps=20 --set train.val_every=0 --json)
weights() { sha256sum "$1"/checkpoints/step-*/model.safetensors 2>/dev/null | tail -1 | cut -c1-16; }
if run same-a "$BIN" "${tiny[@]}" --set "train.device=\"$DEVICE\"" --out "$OUT/same-a" --overwrite && run same-b "$BIN" "${tiny[@]}" --set "train.device=\"$DEVICE\"" --out "$OUT/same-b" --overwrite; then
    a=$(weights "$OUT/same-a") b=$(weights "$OUT/same-b")
    if [ -n "$a" ] && [ "$a" = "$b" ]; then row determinism ok "two 20-step runs on $DEVICE: weights $a in both"; else row determinism FAIL "two 20-step runs on $DEVICE: weights $a and $b"; fi
else
    row determinism FAIL "the tiny run failed: see $OUT/same-a.log, $OUT/same-b.log"
fi
if [ $gpu = 1 ]; then
    if run cpu-run "$BIN" "${tiny[@]}" --set 'train.device="cpu"' --out "$OUT/cpu-run" --overwrite; then
        agree=$("$PYTHON" -c 'import json, sys; a, b = (json.load(open(p))["final_loss"] for p in sys.argv[1:]); print(f"{a:.5f} {b:.5f} {abs(a - b) / abs(a):.2e}", "ok" if abs(a - b) <= 0.02 * abs(a) else "FAIL")' "$OUT/same-a.json" "$OUT/cpu-run.json")
        row cpu-vs-gpu "${agree##* }" "final loss $DEVICE, cpu, relative difference: ${agree% *} (20 steps, fp32; at most 2%)"
    else
        row cpu-vs-gpu FAIL "the CPU run failed: see $OUT/cpu-run.log"
    fi
else
    row cpu-vs-gpu skipped "needs a GPU"
fi
quick_bench=(bench --model ref6m --batch 8 --steps 2 --warmup 1 --sample-steps 2 --device "$DEVICE" --json)
if [ $gpu = 1 ]; then
    if run bf16 "$BIN" "${quick_bench[@]}" --precision bf16; then
        [ "$(json "$OUT/bf16.json" autocast_bf16)" = True ] && row bf16-autocast ok "autocast_bf16 true" || row bf16-autocast FAIL "autocast_bf16 is $(json "$OUT/bf16.json" autocast_bf16)"
    else
        row bf16-autocast FAIL "see $OUT/bf16.log"
    fi
    if run graphs "$BIN" "${quick_bench[@]}" --precision bf16 --cuda-graphs; then
        state=$(json "$OUT/graphs.json" cuda_graphs)
        [ "$state" = captured ] && row cuda-graphs ok "train and sample captured" || row cuda-graphs FAIL "cuda_graphs: $state (see $OUT/graphs.log)"
    else
        row cuda-graphs FAIL "see $OUT/graphs.log"
    fi
else
    row bf16-autocast skipped "needs a GPU (bf16 on this CPU is emulated)"
    row cuda-graphs skipped "needs a GPU"
fi
backend=gloo
[ $gpu = 1 ] && backend=nccl
# Two processes on one GPU: NCCL refuses a shared device, so on a GPU the world is 1 process
# unless the card count allows 2.
procs=2
if [ $gpu = 1 ] && [ "$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')" -lt 2 ]; then procs=1; fi
if [ "$procs" = 2 ] || [ $gpu = 1 ]; then
    if run world "$BIN" launch --nproc-per-node "$procs" -- "${tiny[@]}" --set "train.device=\"$DEVICE\"" --set "train.dist_backend=\"$backend\"" --out "$OUT/world" --overwrite; then
        row "$backend-$procs" ok "$procs process(es) trained 20 steps together ($(json "$OUT/world.json" final_loss) final loss)"
    else
        row "$backend-$procs" FAIL "see $OUT/world.log"
    fi
fi
if [ $QUICK = 1 ]; then
    "$PYTHON" -c 'import json, sys; rows = [json.loads(l) for l in open(sys.argv[1])]; json.dump(rows, open(sys.argv[2], "w"), indent=1)' "$OUT/verdict.jsonl" "$OUT/verdict.json"
    exit $failed
fi

# 3. Speed, each row as it comes, then the table.
common=(--steps "$STEPS" --warmup "$WARMUP" --sample-steps "$SAMPLE_STEPS" --device "$DEVICE")
speed() {
    local name=$1; shift
    if run "$name" "$@"; then
        row "$name" ok "train $(json "$OUT/$name.json" train_images_per_s | cut -d. -f1) img/s, sample $(json "$OUT/$name.json" sample_images_per_s | cut -d. -f1) img/s"
    else
        row "$name" FAIL "failed or ran past ${LIMIT}s: see $OUT/$name.log"
    fi
}
for spec in $MODELS; do
    model="${spec%%:*}" batch="${spec##*:}"
    if [ "$model" = ref6m ]; then df_model=ref6m; torch_model=(); else df_model=tools/gpu/big64.toml; torch_model=(--config tools/gpu/big64.toml); fi
    args=("${common[@]}" --batch "$batch")
    speed "$model-difforge-tf32" "$BIN" bench --model "$df_model" "${args[@]}" --precision tf32 --peak-tflops "$PEAK_TF32" --json
    speed "$model-difforge-bf16" "$BIN" bench --model "$df_model" "${args[@]}" --precision bf16 --peak-tflops "$PEAK_BF16" --json
    speed "$model-difforge-bf16-channels-last" "$BIN" bench --model "$df_model" "${args[@]}" --precision bf16 --channels-last --peak-tflops "$PEAK_BF16" --json
    [ $gpu = 1 ] && speed "$model-difforge-bf16-graphs" "$BIN" bench --model "$df_model" "${args[@]}" --precision bf16 --cuda-graphs --peak-tflops "$PEAK_BF16" --json
    speed "$model-eager-tf32" "$PYTHON" tools/bench_torch.py "${torch_model[@]}" "${args[@]}" --mode tf32 --peak-tflops "$PEAK_TF32"
    speed "$model-eager-bf16" "$PYTHON" tools/bench_torch.py "${torch_model[@]}" "${args[@]}" --mode bf16 --peak-tflops "$PEAK_BF16"
    speed "$model-eager-bf16-channels-last" "$PYTHON" tools/bench_torch.py "${torch_model[@]}" "${args[@]}" --mode bf16 --channels-last --peak-tflops "$PEAK_BF16"
    [ "$COMPILE" = 1 ] && speed "$model-compile-bf16" "$PYTHON" tools/bench_torch.py "${torch_model[@]}" "${args[@]}" --mode bf16 --compile --peak-tflops "$PEAK_BF16"
done
"$PYTHON" -c 'import json, sys; rows = [json.loads(l) for l in open(sys.argv[1])]; json.dump(rows, open(sys.argv[2], "w"), indent=1)' "$OUT/verdict.jsonl" "$OUT/verdict.json"

"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for p in sorted(out.glob("*.json")):
    try:
        r = json.loads(p.read_text())
    except ValueError:
        continue
    if isinstance(r, dict) and "train_images_per_s" in r:
        rows[p.stem] = r
print("| model | engine | precision | train img/s | vs eager | sample img/s | vs eager | train MFU | peak memory |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for model in ["ref6m", "big64"]:
    for name in ["difforge-tf32", "eager-tf32", "difforge-bf16", "eager-bf16", "difforge-bf16-channels-last", "eager-bf16-channels-last", "difforge-bf16-graphs", "compile-bf16"]:
        r = rows.get(f"{model}-{name}")
        if r is None:
            print(f"| {model} | {name} | | no result (not run, or see {model}-{name}.log) | | | | | |")
            continue
        eager = rows.get(f"{model}-eager-{r['precision']}")
        ratio = lambda k: f"{r[k] / eager[k]:.2f}x" if eager else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        mem = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r.get("peak_memory_bytes") else "-"
        engine = r["engine"] + (" channels_last" if r.get("channels_last") else "")
        if r.get("cuda_graphs", "off") != "off":
            engine += " CUDA graphs" if r["cuda_graphs"] == "captured" else f" CUDA graphs {r['cuda_graphs']} (eager)"
        print(f"| {model} ({r['parameters'] / 1e6:.1f} M, {r['image_size']}px, batch {r['batch']}) | {engine} | {r['precision']} | "
              f"{r['train_images_per_s']:,.0f} | {ratio('train_images_per_s')} | {r['sample_images_per_s']:,.0f} | "
              f"{ratio('sample_images_per_s')} | {mfu} | {mem} |")
print()
print(f"DDIM {next(iter(rows.values()))['sample_steps'] if rows else '?'} steps for sampling; MFU against the card's dense peak at the precision used;")
print("the CUDA-graphs row includes its one capture; PyTorch runs with cuDNN autotuning off, as difforge's portable mode.")
PY
exit $failed
