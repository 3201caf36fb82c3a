"""Accuracy within a time budget: `simclr pretrain` on CIFAR-10, then weighted kNN on the test set.

Extracts ../shared/data/cifar10-jpeg.tar.gz (or --archive) once into .cache/cifar10, runs the
command line exactly as a user would, and writes one JSON file with the command, the machine,
the kNN top-1 of the trained and of the random-init encoder, and the training throughput.

    .venv/bin/python benchmarks/cifar10_pretrain.py --max-time 900 \
        --out benchmarks/results/cifar10-cpu-small-900s.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def extract(archive: Path, cache: Path) -> Path:
    if not (cache / "train").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
    return cache


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--archive, --cache (where the CIFAR-10 JPEGs come from) and --recipe."""
    parser.add_argument(
        "--archive", type=Path, default=ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"
    )
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache/cifar10")
    parser.add_argument("--recipe", default="cpu-small")


def pretrain_arguments(recipe: str, data: Path) -> list[str]:
    """`simclr pretrain` on the extracted CIFAR-10 train split, with kNN on its test split."""
    return [
        "pretrain",
        "--recipe",
        recipe,
        "--data",
        str(data / "train"),
        "--eval-data",
        str(data / "test"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--max-time", type=float, default=900)
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/bench-cifar10")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/cifar10-pretrain.json"
    )
    parser.add_argument("extra", nargs="*", help="more `simclr pretrain` arguments, after --")
    args = parser.parse_args()

    data = extract(args.archive, args.cache)
    command = [
        str(Path(sys.executable).with_name("simclr")),
        *pretrain_arguments(args.recipe, data),
        "--max-time",
        str(args.max_time),
        "--out",
        str(args.run_dir),
        "--set",
        "train.progress=false",
        *args.extra,
    ]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"simclr pretrain failed:\n{result.stderr[-4000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    records = [json.loads(x) for x in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = sorted(r["images_per_s"] for r in records[1:])
    report = {
        "benchmark": "cifar10_pretrain",
        "command": " ".join(command),
        "machine": {
            **json.loads((args.run_dir / "environment.json").read_text()),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
        },
        "wall_s": round(time.time() - started, 1),
        "train_s": summary["train_seconds"],
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "median_images_per_s": rates[len(rates) // 2] if rates else None,
        "knn_top1_trained": summary["knn"]["trained"]["top1"],
        "knn_top1_random_init": summary["knn"]["random_init"]["top1"],
        "knn_gain_points": round(
            summary["knn"]["trained"]["top1"] - summary["knn"]["random_init"]["top1"], 2
        ),
        "knn_protocol": summary["knn"]["trained"]["protocol"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
