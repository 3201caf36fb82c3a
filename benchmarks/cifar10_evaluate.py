"""The standard evaluations of one CIFAR-10 checkpoint, against the same network untrained.

Runs the command line as a user would, one command at a time, and collects every JSON result
(with its protocol) into one file:

    .venv/bin/python benchmarks/cifar10_evaluate.py runs/bench-cifar10-cpu-small \
        --out benchmarks/results/cifar10-cpu-small-evaluate.json

- kNN (k=200, t=0.1) of the checkpoint and of the random-init network;
- linear probe (logistic regression, C chosen on a validation split of the training set);
- fine-tuning on a class-balanced 10 % of the labels, pretrained vs from scratch (same subset,
  same settings, same time budget);
- k-means NMI / ARI / accuracy on the test set, pretrained vs random init.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def simclr(*args: str) -> dict:
    command = [str(Path(sys.executable).with_name("simclr")), *args]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    output = json.loads(result.stdout.strip().splitlines()[-1])
    output["command"] = "simclr " + " ".join(args)
    output["wall_s"] = round(time.time() - started, 1)
    print(f"{output['wall_s']:>7.1f} s  simclr {' '.join(args)}", file=sys.stderr)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=ROOT / ".cache/cifar10")
    parser.add_argument("--finetune-time", default="420", help="seconds per fine-tuning run")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/cifar10-evaluate.json"
    )
    args = parser.parse_args()

    run, train, test = str(args.run_dir), str(args.data / "train"), str(args.data / "test")
    labelled = ["--train-data", train, "--test-data", test]
    finetune = [
        *labelled,
        "--label-fraction",
        "0.1",
        "--epochs",
        "100",
        "--max-time",
        args.finetune_time,
    ]
    report = {
        "knn": simclr("knn", run, *labelled),
        "knn_random_init": simclr("knn", run, *labelled, "--random-init"),
        "linear": simclr("linear", run, *labelled),
        "cluster": simclr("cluster", run, "--data", test),
        "cluster_random_init": simclr("cluster", run, "--data", test, "--random-init"),
        "finetune_10pct": simclr("finetune", run, *finetune),
        "finetune_10pct_scratch": simclr("finetune", run, *finetune, "--from-scratch"),
    }
    summary = {
        "knn_top1": report["knn"]["top1"],
        "knn_top1_random_init": report["knn_random_init"]["top1"],
        "linear_top1": report["linear"]["top1"],
        "finetune_10pct_top1": report["finetune_10pct"]["top1"],
        "finetune_10pct_scratch_top1": report["finetune_10pct_scratch"]["top1"],
        "kmeans_nmi": report["cluster"]["nmi"],
        "kmeans_nmi_random_init": report["cluster_random_init"]["nmi"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, **report}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
