"""Where a pretraining step's time goes, and what bf16 and channels_last buy, on this machine.

Times the parts of one `cpu-small` step (batch 256 -> 512 views of 32 px) side by side,
interleaved round-robin so that machine drift hits every variant alike, and reports medians and
ratios as JSON:

    .venv/bin/python benchmarks/step_profile.py --out benchmarks/results/step-profile-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from simclr.augment.views import SimCLRViews
from simclr.config import build_config, recipe_overrides
from simclr.losses import NTXentLoss
from simclr.models.simclr import SimCLR
from simclr.optim import build_optimizer


def make_step(channels_last: bool, dtype: torch.dtype | None, cfg, images) -> Callable[[], None]:
    torch.manual_seed(0)
    model = SimCLR.from_config(cfg.model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    views = SimCLRViews(cfg.augment, seed=0)
    criterion = NTXentLoss(cfg.train.temperature)
    optimizer = build_optimizer(model, cfg.optim, cfg.train.batch_size)
    view1, view2 = views(images)
    both = torch.cat([view1, view2]).contiguous(memory_format=memory_format)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            z1, z2 = model(both).chunk(2)
            loss = criterion(z1, z2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/step-profile-cpu.json")
    )
    args = parser.parse_args()

    cfg = build_config(recipe_overrides("cpu-small"))
    images = torch.randint(0, 256, (cfg.train.batch_size, 3, 32, 32), dtype=torch.uint8)
    views = SimCLRViews(cfg.augment, seed=0)
    variants: dict[str, Callable[[], object]] = {
        "views (batched, 2 x 256)": lambda: views(images),
        "step fp32, NCHW": make_step(False, None, cfg, images),
        "step fp32, channels_last": make_step(True, None, cfg, images),
        "step bf16, NCHW": make_step(False, torch.bfloat16, cfg, images),
        "step bf16, channels_last": make_step(True, torch.bfloat16, cfg, images),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up: oneDNN primitive creation
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    best = medians["step bf16, channels_last"]
    report = {
        "benchmark": "step_profile",
        "command": "python benchmarks/step_profile.py",
        "machine": {"cpus": torch.get_num_threads(), "machine": platform.machine()},
        "torch": torch.__version__,
        "median_s": {k: round(v, 4) for k, v in medians.items()},
        "ratio_to_bf16_channels_last": {k: round(v / best, 2) for k, v in medians.items()},
        "images_per_s_bf16_channels_last": round(cfg.train.batch_size / best, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
