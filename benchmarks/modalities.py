"""Issue 6 acceptance: SimCLR on audio, time series, text and tables against two baselines.

For each modality, on the data named below: pretrain with the modality's recipe through the
command line (`simclr pretrain`), then score the checkpoint with the same commands a user runs
(`simclr knn`, `simclr linear`), next to (a) the same encoder at random initialisation
(`--random-init`) and (b) the standard non-learned baseline of that field
(`benchmarks/baseline_<modality>.py`). One JSON file per run:

    .venv/bin/python benchmarks/modalities.py audio timeseries text tabular \
        --out benchmarks/results/modalities-cpu.json

Data: FSDD (../shared/data/fsdd-wav.tar.gz, arranged once into .cache/fsdd/{train,test}/<digit>),
the aeon-shipped UCR/UEA sets, AG News (../shared/data/ag-news-test.csv.gz, split 80/20 with
data.split_seed 0) and scikit-learn's tables.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared/data"


def fsdd_root() -> str:
    from baseline_audio import prepare_fsdd

    return str(prepare_fsdd(SHARED / "fsdd-wav.tar.gz", ROOT / ".cache/fsdd"))


# modality -> the datasets it is measured on (a callable when the data must be prepared first)
DATASETS: dict[str, list[Any]] = {
    "audio": [fsdd_root],
    "timeseries": ["aeon:OSULeaf", "aeon:JapaneseVowels"],
    "text": [str(SHARED / "ag-news-test.csv.gz")],
    "tabular": ["sklearn:breast_cancer", "sklearn:wine", "sklearn:digits"],
}


def simclr(*args: str) -> dict[str, Any]:
    """Run one `simclr` command; its last stdout line is JSON."""
    command = [str(Path(sys.executable).with_name("simclr")), *args]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    output: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    output["command"] = "simclr " + " ".join(args)
    output["wall_s"] = round(time.time() - started, 1)
    print(f"{output['wall_s']:>7.1f} s  simclr {' '.join(args)}", file=sys.stderr)
    return output


def measure(modality: str, data: str, runs: Path, extra: list[str]) -> dict[str, Any]:
    """Pretrain, then kNN and linear probe of trained / random init, and the baseline."""
    from simclr.config import to_dict
    from simclr.evaluate.features import load_encoder

    run_dir = runs / f"{modality}-{Path(data.replace(':', '-')).name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    pretrain = simclr(
        "pretrain", "--data", data, "--modality", modality, "--out", str(run_dir), *extra
    )
    scores: dict[str, Any] = {}
    for weights, flag in (("trained", []), ("random_init", ["--random-init"])):
        common = [str(run_dir), "--train-data", data, "--test-data", data, *flag]
        knn = simclr("knn", *common, "--out", str(run_dir / f"knn-{weights}.json"))
        linear = simclr("linear", *common, "--out", str(run_dir / f"linear-{weights}.json"))
        scores[weights] = {"knn_top1": knn["top1"], "linear_top1": linear["top1"]}
    encoder = load_encoder(run_dir)
    opened = encoder.modality()  # bound to the checkpoint's fitted preprocessing
    train, _ = opened.open(data, split="train")
    test, _ = opened.open(data, split="test")
    started = time.time()
    baseline = importlib.import_module(f"baseline_{modality}").baseline(train, test, encoder.config)
    print(f"{time.time() - started:>7.1f} s  baseline {modality} {data}", file=sys.stderr)
    return {
        "modality": modality,
        "data": data,
        "train_items": len(train),
        "test_items": len(test),
        "pretrain": {
            "command": pretrain["command"],
            "steps": pretrain["steps"],
            "epochs": pretrain["epochs"],
            "train_seconds": pretrain["train_seconds"],
            "final_loss": pretrain["final_loss"],
        },
        "config": {
            key: value
            for key, value in to_dict(encoder.config).items()
            if key in ("model", "optim", "train", modality)
        },
        **scores,
        "baseline": baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modalities", nargs="+", choices=sorted(DATASETS))
    parser.add_argument("--data", help="only this dataset (default: every one of the modality)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/bench-modalities")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/modalities-cpu.json")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="passed to pretrain"
    )
    args = parser.parse_args()
    extra = [item for text in args.overrides for item in ("--set", text)]
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    for modality in args.modalities:
        for entry in DATASETS[modality]:
            data = entry() if callable(entry) else entry
            if args.data and args.data != data:
                continue
            result = measure(modality, data, args.runs, extra)
            results["runs"] = [
                r for r in results["runs"] if (r["modality"], r["data"]) != (modality, data)
            ] + [result]
            results["machine"] = {
                "processor": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            }
            results["command"] = " ".join(sys.argv)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(
                json.dumps(
                    {
                        k: result[k]
                        for k in ("modality", "data", "trained", "random_init", "baseline")
                    }
                )
            )


if __name__ == "__main__":
    main()
