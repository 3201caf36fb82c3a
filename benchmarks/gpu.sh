#!/usr/bin/env bash
# The speed suite on one CUDA GPU, as one call of about 9 minutes: ResNet-18 at 32 px (the
# CIFAR recipe, all parts), ResNet-50 at 224 px (the ImageNet recipe at batch 256: views,
# loss, step, flags) and the peak memory and step time of micro-batched steps (batch 1024 of
# the cpu-small network, whole and in micro-batches of 128 and 256). Writes one JSON file per
# measurement into OUT_DIR.
#
#   bash scripts/setup.sh --bench && bash benchmarks/gpu.sh [OUT_DIR]
#
# OUT_DIR defaults to $OUT, else benchmarks/results. PYTHON picks the interpreter (default
# .venv-bench/bin/python, else python3); without lightly installed, the comparisons with it are
# reported as skipped. The pipeline and e2e parts need ../shared/data/cifar10-jpeg.tar.gz
# (or --archive in the suite) and are skipped without it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=$(mkdir -p "${1:-${OUT:-benchmarks/results}}" && cd "${1:-${OUT:-benchmarks/results}}" && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv-bench/bin/python ]; then PY=$PWD/.venv-bench/bin/python
else PY=python3; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu-info.csv" 2>&1
cd benchmarks
status=0
timeout 270 "$PY" suite.py --device cuda --recipe cifar10-resnet18 --steps 60 --pipeline-rounds 1 \
    --out "$OUT_DIR/suite-gpu-resnet18-32px.json" || { echo "resnet18 suite failed"; status=1; }
timeout 210 "$PY" suite.py --device cuda --recipe imagenet-resnet50 --batch-size 256 \
    --parts views,loss,step,flags --out "$OUT_DIR/suite-gpu-resnet50-224px.json" \
    || { echo "resnet50 suite failed"; status=1; }
timeout 80 "$PY" micro_batch.py --device cuda --steps 5 --out "$OUT_DIR/micro-batch-gpu.json" \
    || { echo "micro-batch benchmark failed"; status=1; }
exit $status
