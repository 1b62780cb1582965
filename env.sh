# Sourced by the Makefile and scripts: where the torch 2.11.0 environment lives and how cargo
# finds libtorch in it.
DIFFORGE_TORCH_VENV="${DIFFORGE_TORCH_VENV:-$HOME/.cache/difforge/torch-2.11.0}"
export DIFFORGE_TORCH_VENV
export LIBTORCH_USE_PYTORCH=1
export PYTHON="$DIFFORGE_TORCH_VENV/bin/python"
export PATH="$DIFFORGE_TORCH_VENV/bin:$PATH"
