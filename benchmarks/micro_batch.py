"""Peak memory and step time of micro-batched steps (gradient caching) against the whole batch.

The `cpu-small` recipe's network (ResNet-18 width 0.25, CIFAR stem, 32 px views) takes
training steps on one batch of 1024 items (2048 views), whole (`training_step`) and in
micro-batches (`micro_batch_step`, default 128 and 256 items), at the precision `auto` picks.
Each variant runs in a fresh process, so one variant's allocations cannot hide another's:

- peak memory: on CPU the growth of the process's peak resident set (`ru_maxrss`) over its
  resident set just before the first step (the model, optimizer and views are built by then);
  on CUDA `torch.cuda.max_memory_allocated` over the memory allocated before the first step;
- step time: the median of `--steps` timed steps after `--warmup` untimed ones.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/micro_batch.py --steps 3 \\
        --out benchmarks/results/micro-batch-cpu.json
    python benchmarks/micro_batch.py --device cuda --out micro-batch-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from simclr.config import build_config, recipe_overrides
from simclr.losses import OBJECTIVE_SCALES, NTXentLoss
from simclr.micro_batch import micro_batch_step
from simclr.models.simclr import SimCLR
from simclr.optim import build_optimizer
from simclr.runtime import autocast_dtype, resolve_precision
from simclr.train import training_step

MIB = 2**20


def measure(device: torch.device, batch_size: int, micro: int, steps: int, warmup: int) -> dict:
    """Time ``steps`` training steps (after ``warmup``); whole batch when ``micro`` is 0."""
    cfg = build_config(recipe_overrides("cpu-small"), {"train": {"batch_size": batch_size}})
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = SimCLR.from_config(cfg.model).to(device, memory_format=memory_format).train()
    optimizer = build_optimizer(model, cfg.optim, batch_size)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    size = cfg.augment.size
    view1, view2 = (torch.rand(batch_size, 3, size, size, device=device) for _ in range(2))
    criterion = NTXentLoss(cfg.train.temperature)
    kwargs = {
        "autocast": autocast_dtype(precision),
        "memory_format": memory_format,
        "objective_scale": OBJECTIVE_SCALES[cfg.train.objective],
    }
    if micro:
        kwargs["micro_batch_size"] = micro
    step = micro_batch_step if micro else training_step

    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _rss_bytes()
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        step(model, view1, view2, criterion, optimizer, scaler, **kwargs)  # type: ignore[operator]
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {
        "micro_batch_size": micro or None,
        "precision": precision,
        "median_step_s": round(statistics.median(times), 4),
        "step_s": [round(t, 4) for t in times],
        "peak_memory_mib": round(peak / MIB, 1),
    }


def _rss_bytes() -> int:
    """The resident set of this process now (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--micro-batches", default="128,256", help="comma-separated items")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/micro-batch-cpu.json"))
    parser.add_argument("--variant", type=int, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.variant is not None:
        print(json.dumps(measure(device, args.batch_size, args.variant, args.steps, args.warmup)))
        return

    results = {}
    for micro in [0, *(int(m) for m in args.micro_batches.split(","))]:
        child = [sys.executable, __file__, *sys.argv[1:], "--variant", str(micro)]
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
        name = f"micro {micro}" if micro else "whole batch"
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(name, results[name], file=sys.stderr)
    whole = results["whole batch"]
    report = {
        "benchmark": "micro_batch",
        "command": " ".join(["python", "benchmarks/micro_batch.py", *sys.argv[1:]]),
        "machine": {"cpus": torch.get_num_threads(), "machine": platform.machine()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "recipe": "cpu-small (ResNet-18 width 0.25, CIFAR stem, 32 px)",
        "batch_size": args.batch_size,
        "memory_method": (
            "CUDA max_memory_allocated minus allocated before the first step"
            if device.type == "cuda"
            else "peak RSS (ru_maxrss) minus RSS before the first step, fresh process per variant"
        ),
        "variants": results,
        "vs_whole_batch": {
            name: {
                "memory": round(r["peak_memory_mib"] / whole["peak_memory_mib"], 3),
                "step_time": round(r["median_step_s"] / whole["median_step_s"], 2),
            }
            for name, r in results.items()
            if name != "whole batch"
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
