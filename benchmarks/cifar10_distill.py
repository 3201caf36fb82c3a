"""The SimCLR v2 pipeline on CIFAR-10: pretrain -> fine-tune on 10 % of the labels -> distil.

Given a pretraining run (``benchmarks/cifar10_pretrain.py`` writes one), runs as a user would:

1. ``simclr finetune RUN --label-fraction 0.1``: the teacher (pretrained, fine-tuned);
2. ``simclr finetune RUN --label-fraction 0.1 --from-scratch``: the same network trained on the
   same 10 % of the labels directly, without pretraining (the baseline a student must beat);
3. ``simclr distill TEACHER --data train``: a student of the same architecture, from fresh
   weights, trained on all 50,000 training images without their labels to match the teacher;
4. the same with the student starting from the pretrained encoder (v2's self-distillation).

Budgets are counted in images seen, not seconds, so that the figures do not depend on how busy
the machine is: fine-tuning runs ``--finetune-epochs`` over the 5,000 labelled images,
distillation ``--distill-epochs`` over all 50,000 (the defaults give both 150,000 images). All
scores are top-1 on the 10,000 test images. One JSON file holds the commands, the machine and
the figures.

    .venv/bin/python benchmarks/cifar10_distill.py --pretrain-run runs/bench-cifar10 \
        --out benchmarks/results/cifar10-distill.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_evaluate import simclr  # noqa: E402
from cifar10_pretrain import add_data_arguments, cpu_model, extract  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--pretrain-run", type=Path, required=True)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--distill-epochs", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench-distill")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/cifar10-distill.json"
    )
    args = parser.parse_args()

    data = extract(args.archive, args.cache)
    train, test = str(data / "train"), str(data / "test")
    seed = ["--seed", str(args.seed)]
    finetune_budget = [*seed, "--epochs", str(args.finetune_epochs)]
    distill_budget = [*seed, "--epochs", str(args.distill_epochs)]
    args.work.mkdir(parents=True, exist_ok=True)
    labelled = ["--train-data", train, "--test-data", test, "--label-fraction", str(args.fraction)]
    tag = f"{args.fraction:g}"
    teacher = simclr(
        "finetune", str(args.pretrain_run), *labelled, *finetune_budget,
        "--out", str(args.work / f"teacher-{tag}.json"),
    )  # fmt: skip
    scratch = simclr(
        "finetune", str(args.pretrain_run), *labelled, *finetune_budget, "--from-scratch",
        "--out", str(args.work / f"scratch-{tag}.json"),
    )  # fmt: skip
    distilled = {}
    for name, extra in (("fresh", []), ("pretrained", ["--student-from", str(args.pretrain_run)])):
        distilled[name] = simclr(
            "distill", teacher["classifier_checkpoint"], "--data", train, "--test-data", test,
            *distill_budget, "--no-progress",
            "--out", str(args.work / f"distill-{name}"), *extra,
        )  # fmt: skip
    report = {
        "benchmark": "cifar10_distill",
        "machine": {"processor": cpu_model(), "cpus": os.cpu_count()},
        "pretrain_run": str(args.pretrain_run),
        "label_fraction": args.fraction,
        "finetune_epochs": args.finetune_epochs,
        "distill_epochs": args.distill_epochs,
        "top1": {
            "teacher (pretrained, fine-tuned on the labels)": teacher["top1"],
            "same network trained on the labels directly (no pretraining)": scratch["top1"],
            "student from fresh weights, distilled on all images": distilled["fresh"]["student"][
                "top1"
            ],
            "student from the pretrained encoder, distilled": distilled["pretrained"]["student"][
                "top1"
            ],
        },
        "runs": {"teacher": teacher, "scratch": scratch, "distill": distilled},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["top1"], indent=2))


if __name__ == "__main__":
    main()
