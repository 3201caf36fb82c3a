#!/usr/bin/env bash
# The GPU benchmarks on one CUDA GPU, in two parts of under 10 minutes each (one device call
# each):
#   speed     ResNet-18 at 32 px (the CIFAR recipe, all parts), ResNet-50 at 224 px (the
#             ImageNet recipe at batch 256: views, loss, step, flags) and the peak memory and
#             step time of micro-batched steps (batch 1024 of the cpu-small network, whole and
#             in micro-batches of 128 and 256);
#   accuracy  time to 80 % and 85 % kNN top-1 for the cifar10-resnet18 recipe on CIFAR-10
#             (time_to_accuracy.py: one 6-minute run scored every 30 s on a fixed subset of
#             the test set, then on all of it).
# Writes one JSON file per measurement into OUT_DIR.
#
#   bash scripts/setup.sh --bench && bash benchmarks/gpu.sh [OUT_DIR] [speed|accuracy|all]
#
# OUT_DIR defaults to $OUT, else benchmarks/results; the part to all. PYTHON picks the
# interpreter (default .venv-bench/bin/python, else python3); without lightly installed, the
# comparisons with it are reported as skipped. The pipeline, e2e and accuracy parts need
# ../shared/data/cifar10-jpeg.tar.gz (or --archive in the suite) and are skipped without it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=$(mkdir -p "${1:-${OUT:-benchmarks/results}}" && cd "${1:-${OUT:-benchmarks/results}}" && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv-bench/bin/python ]; then PY=$PWD/.venv-bench/bin/python
else PY=python3; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu-info.csv" 2>&1
PART=${2:-all}
cd benchmarks
status=0
if [ "$PART" = speed ] || [ "$PART" = all ]; then
timeout 270 "$PY" suite.py --device cuda --recipe cifar10-resnet18 --steps 60 --pipeline-rounds 1 \
    --out "$OUT_DIR/suite-gpu-resnet18-32px.json" || { echo "resnet18 suite failed"; status=1; }
timeout 210 "$PY" suite.py --device cuda --recipe imagenet-resnet50 --batch-size 256 \
    --parts views,loss,step,flags --out "$OUT_DIR/suite-gpu-resnet50-224px.json" \
    || { echo "resnet50 suite failed"; status=1; }
timeout 80 "$PY" micro_batch.py --device cuda --steps 5 --out "$OUT_DIR/micro-batch-gpu.json" \
    || { echo "micro-batch benchmark failed"; status=1; }
fi
if [ "$PART" = accuracy ] || [ "$PART" = all ]; then
timeout 540 "$PY" time_to_accuracy.py --recipes cifar10-resnet18 --budgets 360 --split test \
    --eval-every 30s --thresholds 80 85 --run-root "$OUT_DIR/runs-time-to-accuracy" \
    --out "$OUT_DIR/time-to-accuracy-gpu.json" -- --device cuda \
    || { echo "time-to-accuracy benchmark failed"; status=1; }
fi
exit $status
