#!/usr/bin/env bash
# Create a virtual environment (if needed) and install simclr with its dependencies into it.
#   bash scripts/setup.sh           .venv: the package for images (what `simclr demo` needs)
#   bash scripts/setup.sh --dev     .venv: every extra (audio, text, tables, export...) and
#                                   pytest, ruff and mypy: what the tests need
#   bash scripts/setup.sh --bench   .venv-bench: the package, the modality and export extras and
#                                   lightly, for the side-by-side benchmarks (lightly is never a
#                                   dependency of simclr)
# torch and torchvision are pinned here (not in pyproject.toml) so that users with another CUDA
# build keep theirs when they `pip install simclr-kit` into their own environment.
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
# the distribution was called simclr before it became simclr-kit: drop that older record
"$VENV/bin/python" -m pip uninstall --disable-pip-version-check -y -q simclr >/dev/null 2>&1 || true
case "${1:-}" in
    --dev) pip_install -e ".[all,dev]" ;;
    --bench) pip_install -e ".[audio,text,tables,timeseries,export,shards]" "lightly==1.6.0" ;;
    *) pip_install -e . ;;
esac
