#!/usr/bin/env bash
# Create .venv (if needed) and install simclr with its dependencies into it.
#   bash scripts/setup.sh         the package and its runtime dependencies
#   bash scripts/setup.sh --dev   also pytest, ruff and mypy
# torch and torchvision are pinned here (not in pyproject.toml) so that users with another CUDA
# build keep theirs when they `pip install simclr` into their own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
if [ "${1:-}" = "--dev" ]; then
    pip_install -e ".[dev]"
else
    pip_install -e .
fi
