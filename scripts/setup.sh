#!/usr/bin/env bash
# Create a virtual environment (if needed) and install simclr with its dependencies into it.
#   bash scripts/setup.sh           .venv: the package and its runtime dependencies
#   bash scripts/setup.sh --dev     .venv: also pytest, ruff and mypy
#   bash scripts/setup.sh --bench   .venv-bench: the package and lightly, for the side-by-side
#                                   benchmarks (lightly is never a dependency of simclr)
# torch and torchvision are pinned here (not in pyproject.toml) so that users with another CUDA
# build keep theirs when they `pip install simclr` into their own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
[ "${1:-}" = "--bench" ] && VENV=.venv-bench
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
case "${1:-}" in
    --dev) pip_install -e ".[dev]" ;;
    --bench) pip_install -e . "lightly==1.6.0" ;;
    *) pip_install -e . ;;
esac
