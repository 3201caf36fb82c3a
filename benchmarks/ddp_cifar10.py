"""One process against two DDP processes: same recipe, global batch and steps, kNN on CIFAR-10.

Runs `simclr pretrain` twice on the CIFAR-10 JPEGs (extracted once into .cache/cifar10): once as
a plain process, once under `torchrun --standalone --nproc_per_node 2` (gloo, global batch norm,
negatives gathered across the two processes). Both runs see the same global batches in the same
order; only the random views differ. Writes one JSON file with both kNN accuracies, the step
throughput and the commands.

    .venv/bin/python benchmarks/ddp_cifar10.py --steps 400 --out benchmarks/results/ddp-cifar10.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cifar10_pretrain import (
    ROOT,
    add_data_arguments,
    cpu_model,
    extract,
    pretrain_arguments,
)


def run(command: list[str], run_dir: Path, env: dict[str, str]) -> dict[str, object]:
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = sorted(r["images_per_s"] for r in records[1:])
    return {
        "command": " ".join(command),
        "wall_s": round(time.time() - started, 1),
        "train_s": summary["train_seconds"],
        "steps": summary["steps"],
        "processes": summary["processes"],
        "final_loss": round(summary["final_loss"], 4),
        "median_images_per_s": rates[len(rates) // 2] if rates else None,
        "knn_top1": summary["knn"]["trained"]["top1"],
        "knn_top1_random_init": summary["knn"]["random_init"]["top1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/bench-ddp")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ddp-cifar10.json")
    args = parser.parse_args()

    data = extract(args.archive, args.cache)
    common = [
        *pretrain_arguments(args.recipe, data),
        "--max-steps",
        str(args.steps),
        "--set",
        "train.progress=false",
    ]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    single_dir, ddp_dir = args.runs / "one-process", args.runs / "two-processes"
    single = run(
        [str(Path(sys.executable).with_name("simclr")), *common, "--out", str(single_dir)],
        single_dir,
        env,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    ddp = run(
        [*torchrun, "--nproc_per_node", "2", "-m", "simclr", *common, "--out", str(ddp_dir)],
        ddp_dir,
        env,
    )
    report = {
        "benchmark": "ddp_cifar10",
        "machine": {
            **json.loads((single_dir / "environment.json").read_text()),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
        },
        "one_process": single,
        "two_processes": ddp,
        "knn_difference_points": round(float(ddp["knn_top1"]) - float(single["knn_top1"]), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
