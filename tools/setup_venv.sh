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
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.__version__.startswith("2.11.0") else 1)' 2>/dev/null; then
  exit 0
fi
echo "setting up torch 2.11.0 in $VENV (one time, about 4 GB)..." >&2
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.11.0 numpy
"$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "ready in", torch.__file__.rsplit("/", 2)[0])' >&2
