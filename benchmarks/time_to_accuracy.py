"""Accuracy over wall-clock time: kNN of recipes after fixed training budgets, as JSON.

Tuning happens on a validation split carved from the CIFAR-10 training images (``--split val``:
45,000 / 5,000 images, 500 per class, fixed seed; kNN reference = the 45,000, queries = the
5,000); a kept candidate is scored once on the test set (``--split test``: trained on all
50,000, kNN on the 10,000 test images). Every (recipe, budget, seed) is its own
``simclr pretrain --max-time BUDGET`` run, so each point is what a user gets from training
that long (the schedule anneals within the budget), not a point in the middle of a longer run.

    .venv/bin/python benchmarks/time_to_accuracy.py --recipes cpu-small --budgets 60 300 900 \
        --seeds 0 1 --out benchmarks/results/time-to-accuracy-val.json

``--set KEY=VALUE`` (repeatable) applies to every run; ``--variant NAME:RECIPE:KEY=VALUE,...``
adds a candidate beside the recipes, so an ablation is one command. With ``--eval-every`` each
run also scores the kNN during training (on a fixed subset) and ``--thresholds`` reports the
training time at which it first reached each accuracy: the GPU form in ``benchmarks/gpu.sh``
(ResNet-18, CIFAR-10, time to 80 % and 85 %).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cifar10_pretrain import ROOT, add_data_arguments, cpu_model, extract

VAL_PER_CLASS = 500


def validation_split(train: Path, out: Path, *, per_class: int, seed: int) -> tuple[Path, Path]:
    """``out/train`` and ``out/val``: class folders of links to ``train``'s images.

    The split is random (``seed``) with ``per_class`` images of each class in ``val``; made once.
    """
    done = out / "SPLIT_DONE"
    if not done.is_file():
        for class_dir in sorted(p for p in train.iterdir() if p.is_dir()):
            images = sorted(p.name for p in class_dir.iterdir())
            random.Random(f"{seed}-{class_dir.name}").shuffle(images)
            for part, names in (("val", images[:per_class]), ("train", images[per_class:])):
                folder = out / part / class_dir.name
                folder.mkdir(parents=True, exist_ok=True)
                for name in names:
                    link = folder / name
                    if not link.exists():
                        link.symlink_to(class_dir / name)
        done.write_text(json.dumps({"per_class": per_class, "seed": seed}) + "\n")
    return out / "train", out / "val"


def run_once(
    recipe: str,
    overrides: list[str],
    budget: float,
    seed: int,
    data: tuple[Path, Path],
    run_dir: Path,
    extra: list[str],
    thresholds: list[float],
) -> dict[str, Any]:
    """One ``simclr pretrain`` with a time budget; its kNN, steps and throughput.

    With ``--eval-every`` among ``extra``: the kNN during training, and the training seconds at
    which it first reached each of ``thresholds`` (``None``: never).
    """
    command = [
        str(Path(sys.executable).with_name("simclr")),
        "pretrain",
        "--recipe",
        recipe,
        "--data",
        str(data[0]),
        "--eval-data",
        str(data[1]),
        "--max-time",
        str(budget),
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
        "--set",
        "train.progress=false",
        *(arg for override in overrides for arg in ("--set", override)),
        *extra,
    ]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"simclr pretrain failed:\n{' '.join(command)}\n{result.stderr[-4000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = sorted(r["images_per_s"] for r in records[1:] if "images_per_s" in r)
    during = [(r["elapsed_s"], r["knn_top1"]) for r in records if "knn_top1" in r]
    time_to = {
        f"{t:g}": next((seconds for seconds, top1 in during if top1 >= t), None) for t in thresholds
    }
    return {
        "command": " ".join(command),
        "wall_s": round(time.time() - started, 1),
        "train_s": summary["train_seconds"],
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "median_images_per_s": rates[len(rates) // 2] if rates else None,
        "knn_top1": summary["knn"]["trained"]["top1"],
        "knn_top1_random_init": summary["knn"]["random_init"]["top1"],
        "knn_during_training": during,
        "train_s_to_top1": time_to if during else None,
    }


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """``NAME:RECIPE:KEY=VALUE,KEY=VALUE`` -> (name, recipe, overrides).

    Commas inside brackets belong to a value (``augment.crop_scale=[0.2,1.0]``).
    """
    name, recipe, assignments = (text.split(":", 2) + [""])[:3]
    return name, recipe, [a for a in re.split(r",(?![^\[]*\])", assignments) if a]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--recipes", nargs="*", default=["cpu-small"])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:RECIPE:KEY=VALUE,KEY=VALUE: a recipe with overrides, run beside the recipes",
    )
    parser.add_argument("--budgets", nargs="+", type=float, default=[60, 150, 300, 600, 900])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--eval-every", help="also score during training (steps or 30s, 5m)")
    parser.add_argument("--thresholds", nargs="*", type=float, default=[80, 85])
    parser.add_argument("--run-root", type=Path, default=ROOT / "runs/time-to-accuracy")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/time-to-accuracy.json"
    )
    parser.add_argument("extra", nargs="*", help="more `simclr pretrain` arguments, after --")
    args = parser.parse_args()

    cifar = extract(args.archive, args.cache)
    if args.split == "val":
        data = validation_split(
            cifar / "train",
            args.cache.parent / f"cifar10-split{args.split_seed}",
            per_class=VAL_PER_CLASS,
            seed=args.split_seed,
        )
    else:
        data = (cifar / "train", cifar / "test")
    candidates = [(r, r, []) for r in args.recipes] + [parse_variant(v) for v in args.variant]
    results = []
    for name, recipe, overrides in candidates:
        for budget in args.budgets:
            for seed in args.seeds:
                run_dir = args.run_root / f"{args.split}-{name}-{budget:g}s-seed{seed}"
                if run_dir.exists():
                    sys.exit(f"{run_dir} exists; remove it or pass another --run-root")
                extra = [*args.extra] + (
                    ["--eval-every", args.eval_every] if args.eval_every else []
                )
                point = run_once(
                    recipe,
                    args.overrides + overrides,
                    budget,
                    seed,
                    data,
                    run_dir,
                    extra,
                    args.thresholds,
                )
                results.append({"candidate": name, "budget_s": budget, "seed": seed, **point})
                print(json.dumps(results[-1]), flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for name, _, _ in candidates:
        for budget in args.budgets:
            scores = [
                r["knn_top1"] for r in results if r["candidate"] == name and r["budget_s"] == budget
            ]
            summary.setdefault(name, {})[f"{budget:g}s"] = {
                "median_top1": statistics.median(scores),
                "spread_top1": round(max(scores) - min(scores), 2),
                "runs": len(scores),
            }
    report = {
        "benchmark": "time_to_accuracy",
        "split": args.split,
        "data": {"train": str(data[0]), "eval": str(data[1])},
        "machine": {"processor": cpu_model(), "cpus": os.cpu_count()},
        "overrides": args.overrides,
        "summary": summary,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
