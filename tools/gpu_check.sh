#!/usr/bin/env bash
# The GPU check: one script a session with a lent GPU runs in a single call (under 8 minutes),
# with a prebuilt difforge binary carried to the device (it builds nothing there). For the 6 M
# reference UNet (ref6m, 32x32, batch 128) and the 35 M UNet (big64, 64x64, batch 64) it runs,
# one after the other on the same card:
#   difforge bench            tf32, bf16, bf16 channels_last and bf16 with CUDA graphs
#   tools/bench_torch.py      eager tf32, eager bf16, eager bf16 channels_last, torch.compile bf16
# and prints one Markdown table (train and sample images/s, MFU, peak memory, ratio to PyTorch
# eager at the same precision). JSON reports and logs go to $OUT (default /tmp/gpu-check).
#
#   tools/gpu_check.sh                       on the device: BIN, PYTHON, OUT, DEVICE may be set
#   DEVICE=cpu STEPS=1 WARMUP=1 MODELS="ref6m:2 big64:1" COMPILE=0 tools/gpu_check.sh
#                                            a smoke test of the script itself on a CPU
#
# MFU uses the dense peak of an H100/H200 SXM (989 TFLOP/s bf16, 494 tf32); set PEAK_BF16 and
# PEAK_TF32 for another card.
set -uo pipefail
cd "$(dirname "$0")/.."
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
LIMIT=${LIMIT:-120}   # seconds per engine run: a hung or slow run cannot eat the whole check
mkdir -p "$OUT"

# The binary was linked against another machine's libtorch path: use the device's torch.
torch_lib="$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" || {
    echo "gpu_check: $PYTHON has no torch" >&2; exit 1; }
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x "$BIN" ] || { echo "gpu_check: $BIN is missing (build it here, carry it)" >&2; exit 1; }
"$BIN" info | tee "$OUT/info.txt"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' | tee -a "$OUT/info.txt"

# run NAME COMMAND...: JSON on stdout into $OUT/NAME.json, stderr into $OUT/NAME.log.
run() {
    local name="$1"; shift
    echo "$(date +%T) $name" >&2
    if ! timeout "$LIMIT" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"; then
        echo "  $name failed or ran past ${LIMIT}s: see $OUT/$name.log" >&2
        rm -f "$OUT/$name.json"
    fi
}

common=(--steps "$STEPS" --warmup "$WARMUP" --sample-steps "$SAMPLE_STEPS" --device "$DEVICE")
for spec in $MODELS; do
    model="${spec%%:*}" batch="${spec##*:}"
    if [ "$model" = ref6m ]; then df_model=ref6m; torch_model=(); else df_model=tools/gpu/big64.toml; torch_model=(--config tools/gpu/big64.toml); fi
    args=("${common[@]}" --batch "$batch")
    run "$model-difforge-tf32" "$BIN" bench --model "$df_model" "${args[@]}" --precision tf32 --peak-tflops "$PEAK_TF32" --json
    run "$model-difforge-bf16" "$BIN" bench --model "$df_model" "${args[@]}" --precision bf16 --peak-tflops "$PEAK_BF16" --json
    run "$model-difforge-bf16-channels-last" "$BIN" bench --model "$df_model" "${args[@]}" --precision bf16 --channels-last --peak-tflops "$PEAK_BF16" --json
    [ "$DEVICE" != cpu ] && run "$model-difforge-bf16-graphs" "$BIN" bench --model "$df_model" "${args[@]}" --precision bf16 --cuda-graphs --peak-tflops "$PEAK_BF16" --json
    run "$model-eager-tf32" "$PYTHON" tools/bench_torch.py "${torch_model[@]}" "${args[@]}" --mode tf32 --peak-tflops "$PEAK_TF32"
    run "$model-eager-bf16" "$PYTHON" tools/bench_torch.py "${torch_model[@]}" "${args[@]}" --mode bf16 --peak-tflops "$PEAK_BF16"
    run "$model-eager-bf16-channels-last" "$PYTHON" tools/bench_torch.py "${torch_model[@]}" "${args[@]}" --mode bf16 --channels-last --peak-tflops "$PEAK_BF16"
    [ "$COMPILE" = 1 ] && run "$model-compile-bf16" "$PYTHON" tools/bench_torch.py "${torch_model[@]}" "${args[@]}" --mode bf16 --compile --peak-tflops "$PEAK_BF16"
done

"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
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
        engine = {"difforge": "difforge"}.get(r["engine"], r["engine"]) + (" channels_last" if r.get("channels_last") else "")
        if r.get("cuda_graphs", "off") != "off":
            engine += " CUDA graphs" if r["cuda_graphs"] == "captured" else f" CUDA graphs {r['cuda_graphs']} (eager)"
        print(f"| {model} ({r['parameters'] / 1e6:.1f} M, {r['image_size']}px, batch {r['batch']}) | {engine} | {r['precision']} | "
              f"{r['train_images_per_s']:,.0f} | {ratio('train_images_per_s')} | {r['sample_images_per_s']:,.0f} | "
              f"{ratio('sample_images_per_s')} | {mfu} | {mem} |")
print()
print(f"DDIM {next(iter(rows.values()))['sample_steps'] if rows else '?'} steps for sampling; MFU against the card's dense peak at the precision used.")
PY
