#!/usr/bin/env bash
# Installs the reference packages the Stable Diffusion fixtures are made with (diffusers,
# transformers, open-clip-torch for CLIP's public BPE vocabulary; peft and accelerate for the
# LoRA fixtures of tools/make_sd_lora_fixtures.py) into
# ~/.cache/difforge/sd-tools, beside the project venv's torch (tools/setup_venv.sh). Only
# the tools/make_sd_*fixtures.py scripts need them; difforge, its tests and CI do not.
# Use: PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/make_sd_fixtures.py
set -euo pipefail
VENV="${DIFFORGE_TORCH_VENV:-$HOME/.cache/difforge/torch-2.11.0}"
TARGET="${DIFFORGE_SD_TOOLS:-$HOME/.cache/difforge/sd-tools}"
"$(dirname "$0")/setup_venv.sh"
# --no-deps: torch and numpy come from the project venv; the rest are the packages' own needs.
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --target "$TARGET" --upgrade \
  diffusers==0.35.2 transformers==4.57.1 open-clip-torch==3.2.0 huggingface_hub==0.36.0 tokenizers==0.22.1 \
  safetensors==0.6.2 regex requests pyyaml tqdm importlib_metadata zipp packaging ftfy wcwidth pillow \
  charset-normalizer idna urllib3 certifi filelock fsspec typing_extensions \
  peft==0.17.1 accelerate==1.10.1 psutil
echo "reference packages ready in $TARGET" >&2
