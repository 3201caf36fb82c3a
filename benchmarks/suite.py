"""The speed suite: simclr against lightly, side by side in one run, medians and ratios as JSON.

Run it from the benchmark environment, which has lightly beside simclr (lightly is never a
dependency of the package): `bash scripts/setup.sh --bench`, then

    .venv-bench/bin/python benchmarks/suite.py --out benchmarks/results/suite-cpu.json
    .venv-bench/bin/python benchmarks/suite.py --parts loss,views        # a named part
    .venv-bench/bin/python benchmarks/suite.py --device cuda --recipe cifar10-resnet18

Parts (each reports medians of interleaved repeats, so machine drift hits all variants alike):

  views     view pairs per second per core: batched SimCLRViews vs lightly's SimCLRTransform per
            image, at 32 px (cifar recipe) and 224 px (imagenet recipe, blur on)
  loss      NTXentLoss forward+backward time and peak memory vs lightly's, N = 256/1024/4096
  step      a full training step vs the bare backbone forward+backward on the same 2B images
  pipeline  pretraining images/s from the CIFAR-10 JPEG folder vs the step-only images/s, and
            the fraction of the pretraining time spent waiting for batches (logged as data_wait)
  e2e       pretraining images/s vs lightly's SimCLR loop (same network, batch, recipe, data)
  flags     channels_last, bf16 autocast and torch.compile, each on and off, for the step
  flops     the machine's fp32 and bf16 matrix-multiply peak (GFLOP/s) and the GFLOP/s a
            training step and the bare backbone achieve (forward + backward FLOPs counted by
            torch.utils.flop_counter), as a fraction of that peak

Without lightly installed, the comparisons with it are reported as skipped.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from cifar10_pretrain import add_data_arguments, cpu_model, extract
from torch import Tensor, nn

from simclr.augment.loader import TwoCrops
from simclr.augment.views import SimCLRViews, progressive_size
from simclr.config import AugmentConfig, Config, build_config, recipe_overrides, to_dict
from simclr.losses import NTXentLoss
from simclr.models.simclr import SimCLR
from simclr.optim import build_optimizer
from simclr.train import training_step

PARTS = ("views", "loss", "step", "pipeline", "e2e", "flags", "flops")
MATMUL_SIZES = (512, 1024, 2048)
LOSS_SIZES = (256, 1024, 4096)
LOSS_DIM = 128
TEMPERATURE = 0.2

try:
    import lightly
    from lightly.loss import NTXentLoss as LightlyNTXentLoss
    from lightly.models.modules.heads import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from lightly.utils.lars import LARS as LightlyLARS

    LIGHTLY: str | None = lightly.__version__
except ImportError:
    LIGHTLY = None


# ---------------------------------------------------------------- timing helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each variant; one warm-up call each, then round-robin repeats."""
    for fn in variants.values():
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def recipe(name: str, device: torch.device, batch_size: int | None) -> Config:
    train: dict[str, Any] = {"device": str(device), "progress": False}
    if batch_size is not None:
        train["batch_size"] = batch_size
    return build_config(recipe_overrides(name), {"train": train})


def autocast_for(device: torch.device) -> torch.dtype | None:
    from simclr.runtime import autocast_dtype, resolve_precision

    return autocast_dtype(resolve_precision("auto", device))


# ---------------------------------------------------------------- views


def lightly_transform(augment: AugmentConfig) -> Any:
    return SimCLRTransform(
        input_size=augment.size,
        cj_prob=augment.jitter_p,
        cj_strength=augment.jitter_strength,
        min_scale=augment.crop_scale[0],
        random_gray_scale=augment.grayscale_p,
        gaussian_blur=augment.blur_p,
        sigmas=tuple(augment.blur_sigma),
        hf_prob=augment.flip_p,
    )


def part_views(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """View pairs per second per core (one thread; lightly's loader runs one image per call)."""
    from PIL import Image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = {}
    try:
        cases = {
            "cifar_32px": (AugmentConfig(size=32, jitter_strength=0.5, blur_p=0.0), 32, 32, 256),
            "imagenet_224px": (AugmentConfig(size=224), 256, 320, 32),
        }
        for name, (augment, height, width, batch) in cases.items():
            g = torch.Generator().manual_seed(0)
            images = torch.randint(0, 256, (batch, 3, height, width), generator=g).byte()
            views = SimCLRViews(augment, seed=0)
            crops = TwoCrops(augment)
            pictures = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]

            def ours(
                images: Tensor = images, views: SimCLRViews = views, crops: TwoCrops = crops
            ) -> None:
                if images.shape[-1] == views.cfg.size:  # small images: crop batched too
                    views(images.to(device))
                else:  # photographs: loader-side crops, then the batched colour stages
                    pairs = torch.stack([crops(image) for image in images])
                    views(pairs.to(device))

            variants: dict[str, Callable[[], Any]] = {"simclr": ours}
            if LIGHTLY:
                transform = lightly_transform(augment)
                variants["lightly"] = lambda t=transform, p=pictures: [t(x) for x in p]
            medians = interleaved(variants, args.repeats, device)
            row: dict[str, Any] = {
                "batch": batch,
                "input": [height, width],
                "simclr_pairs_per_s": round(batch / medians["simclr"], 1),
            }
            if LIGHTLY:
                row["lightly_pairs_per_s"] = round(batch / medians["lightly"], 1)
                row["ratio"] = round(medians["lightly"] / medians["simclr"], 2)
            results[name] = row
    finally:
        torch.set_num_threads(threads)
    return {"threads": 1, "device": str(device), **results}


# ---------------------------------------------------------------- loss


def _loss_inputs(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(n)
    z = torch.randn(2, n, LOSS_DIM, generator=g)
    return z[0].to(device).requires_grad_(), z[1].to(device).requires_grad_()


def _loss_module(impl: str) -> nn.Module:
    if impl == "simclr":
        return NTXentLoss(TEMPERATURE)
    return LightlyNTXentLoss(TEMPERATURE)


def _forward_backward(loss_fn: nn.Module, z1: Tensor, z2: Tensor) -> Tensor:
    z1.grad = z2.grad = None
    loss: Tensor = loss_fn(z1, z2)
    loss.backward()
    return loss


def loss_peak_memory(impl: str, n: int, device: torch.device) -> int:
    """Peak bytes of tensors alive during one forward+backward, beyond its inputs.

    CUDA: the caching allocator's peak. CPU: the allocation and free events that torch's
    profiler records, replayed in time order (process RSS would mostly show the allocator).
    """
    z1, z2 = _loss_inputs(n, device)
    loss_fn = _loss_module(impl)
    _forward_backward(loss_fn, z1, z2)  # warm-up: one-time buffers are not the loss's
    z1.grad = z2.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _forward_backward(loss_fn, z1, z2)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        _forward_backward(loss_fn, z1, z2)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    alive = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        alive += event.nbytes()
        peak = max(peak, alive)
    return peak


def part_loss(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    results: dict[str, Any] = {"dim": LOSS_DIM, "temperature": TEMPERATURE, "device": str(device)}
    impls = ["simclr", "lightly"] if LIGHTLY else ["simclr"]
    for n in LOSS_SIZES:
        z1, z2 = _loss_inputs(n, device)
        modules = {impl: _loss_module(impl) for impl in impls}
        variants: dict[str, Callable[[], Any]] = {
            impl: functools.partial(_forward_backward, module, z1, z2)
            for impl, module in modules.items()
        }
        medians = interleaved(variants, args.repeats, device)
        row: dict[str, Any] = {f"{impl}_s": round(medians[impl], 5) for impl in impls}
        for impl in impls:
            row[f"{impl}_peak_mb"] = round(loss_peak_memory(impl, n, device) / 2**20, 2)
        if LIGHTLY:
            ours = _forward_backward(_loss_module("simclr"), z1, z2)
            grad = z1.grad.clone()  # type: ignore[union-attr]
            theirs = _forward_backward(_loss_module("lightly"), z1, z2)
            row["value_difference"] = abs(ours.item() - theirs.item())
            row["grad_max_difference"] = float((grad - z1.grad).abs().max())  # type: ignore[operator]
            row["time_ratio"] = round(medians["simclr"] / medians["lightly"], 3)
            row["memory_ratio"] = round(row["simclr_peak_mb"] / row["lightly_peak_mb"], 3)
        results[f"N={n}"] = row
    return results


# ---------------------------------------------------------------- step and flags


def _step_fixture(
    cfg: Config,
    device: torch.device,
    *,
    channels_last: bool = True,
    dtype: torch.dtype | None = None,
    compiled: bool = False,
) -> tuple[Callable[[], Any], Callable[[], Any], Tensor]:
    """(full step from uint8 images, bare backbone fwd+bwd on the same views, the images)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = SimCLR.from_config(cfg.model).to(device, memory_format=memory_format)
    train_model: nn.Module = torch.compile(model) if compiled else model
    views = SimCLRViews(cfg.augment, seed=0)
    criterion = NTXentLoss(cfg.train.temperature)
    optimizer = build_optimizer(model, cfg.optim, cfg.train.batch_size)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    size = cfg.augment.size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (cfg.train.batch_size, 3, size, size), generator=g).byte()
    images = images.to(device)
    fixed1, fixed2 = views(images)
    both = torch.cat([fixed1, fixed2]).contiguous(memory_format=memory_format)

    def full() -> None:
        view1, view2 = views(images)
        training_step(
            train_model,
            view1,
            view2,
            criterion,
            optimizer,
            scaler,
            autocast=dtype,
            memory_format=memory_format,
        )

    def bare() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model.backbone(both)
        out.float().sum().backward()

    return full, bare, images


def part_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cfg = recipe(args.recipe, device, args.batch_size)
    dtype = autocast_for(device)
    full, bare, _ = _step_fixture(cfg, device, channels_last=cfg.model.channels_last, dtype=dtype)
    medians = interleaved({"full_step": full, "bare_backbone": bare}, args.repeats, device)
    batch = cfg.train.batch_size
    return {
        "recipe": args.recipe,
        "batch": batch,
        "precision": str(dtype),
        "full_step_s": round(medians["full_step"], 4),
        "bare_backbone_fwd_bwd_s": round(medians["bare_backbone"], 4),
        "ratio": round(medians["full_step"] / medians["bare_backbone"], 3),
        "step_images_per_s": round(batch / medians["full_step"], 1),
    }


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int) -> dict[str, float]:
    """GFLOP/s of square matrix products (2 n^3 FLOPs each), median of ``repeats``, per size."""
    rates = {}
    for n in MATMUL_SIZES:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        seconds = interleaved({"mm": lambda a=a, b=b: a @ b}, repeats, device)["mm"]
        rates[f"n={n}"] = round(2 * n**3 / seconds / 1e9, 1)
    return rates


def counted_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (matrix products and convolutions,
    forward and backward), as torch.utils.flop_counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def part_flops(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """How far a training step is from the machine's matmul peak, in the recipe's precision.

    A recipe with progressive resolution is measured at each of its view sizes.
    """
    cfg = recipe(args.recipe, device, args.batch_size)
    dtype = autocast_for(device)  # what training uses here (fp32 on a CPU without bf16)
    peaks = {
        "fp32": matmul_peak(torch.float32, device, args.repeats),
        "bf16": matmul_peak(torch.bfloat16, device, args.repeats),
    }
    reference = max((peaks["fp32"] if dtype is None else peaks["bf16"]).values())
    result: dict[str, Any] = {
        "recipe": args.recipe,
        "batch": cfg.train.batch_size,
        "precision": str(dtype or torch.float32),
        "threads": torch.get_num_threads(),
        "matmul_peak_gflop_s": peaks,
        "peak_used_gflop_s": reference,
        "by_view_size": {},
    }
    for size in sorted({progressive_size(cfg.augment, i / 100) for i in range(101)}):
        sized = build_config(to_dict(cfg), {"augment": {"size": size, "progressive_from": None}})
        full, bare, _ = _step_fixture(
            sized, device, channels_last=sized.model.channels_last, dtype=dtype
        )
        flops = {"full_step": counted_flops(full), "bare_backbone": counted_flops(bare)}
        medians = interleaved({"full_step": full, "bare_backbone": bare}, args.repeats, device)
        achieved = {name: flops[name] / medians[name] / 1e9 for name in flops}
        result["by_view_size"][size] = {
            name: {
                "gflop": round(flops[name] / 1e9, 3),
                "seconds": round(medians[name], 4),
                "achieved_gflop_s": round(achieved[name], 1),
                "fraction_of_peak": round(achieved[name] / reference, 3),
            }
            for name in flops
        }
    return result


def part_flags(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Step time with each speed flag flipped from the default, measured side by side."""
    cfg = recipe(args.recipe, device, args.batch_size)
    dtype = autocast_for(device) or torch.bfloat16
    variants = {
        "default (bf16/fp16 autocast, channels_last)": {"channels_last": True, "dtype": dtype},
        "fp32": {"channels_last": True, "dtype": None},
        "NCHW (no channels_last)": {"channels_last": False, "dtype": dtype},
        "torch.compile": {"channels_last": True, "dtype": dtype, "compiled": True},
    }
    steps: dict[str, Callable[[], Any]] = {}
    compile_s = None
    for name, options in variants.items():
        started = time.perf_counter()
        full, _, _ = _step_fixture(cfg, device, **options)  # type: ignore[arg-type]
        if options.get("compiled"):
            full()  # the first call compiles
            sync(device)
            compile_s = round(time.perf_counter() - started, 1)
        steps[name] = full
    medians = interleaved(steps, args.repeats, device)
    default = medians["default (bf16/fp16 autocast, channels_last)"]
    return {
        "recipe": args.recipe,
        "autocast_dtype": str(dtype),
        "compile_seconds": compile_s,
        "step_s": {name: round(m, 4) for name, m in medians.items()},
        "ratio_to_default": {name: round(m / default, 3) for name, m in medians.items()},
    }


# ---------------------------------------------------------------- data pipeline and e2e


def _cifar_train(args: argparse.Namespace) -> Path | None:
    if not args.archive.exists():
        return None
    return extract(args.archive, args.cache) / "train"


def _pretrain_images_per_s(
    args: argparse.Namespace, device: torch.device, data: Path
) -> dict[str, Any]:
    from simclr.train import pretrain

    cfg = build_config(
        recipe_overrides(args.recipe),
        {
            "data": {"path": str(data)},
            "train": {
                "device": str(device),
                "max_steps": args.steps,
                "log_every": 5,  # images/s over windows of 5 steps, as a user's run logs
                "progress": False,
                **({"batch_size": args.batch_size} if args.batch_size else {}),
            },
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        pretrain(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - started
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines][2:]  # after 10 warm-up steps
    return {
        "steps": args.steps,
        "batch": cfg.train.batch_size,
        "median_images_per_s": statistics.median(r["images_per_s"] for r in records),
        # fraction of each logging window the loop waited for its next batch: drift-free
        "median_data_wait": statistics.median(r["data_wait"] for r in records),
        "wall_s_including_decoding": round(wall, 1),
    }


def part_pipeline(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    data = _cifar_train(args)
    if data is None:
        return {"skipped": f"no {args.archive}"}
    # Step-only throughput measured just before and just after each pretraining run, so drift
    # cancels; several rounds, as drift on a shared machine can exceed 10 % per minute.
    rounds = []
    for _ in range(args.pipeline_rounds):
        before = part_step(args, device)["step_images_per_s"]
        e2e = _pretrain_images_per_s(args, device, data)
        after = part_step(args, device)["step_images_per_s"]
        step_only = (before + after) / 2
        rounds.append(
            {
                "step_only_images_per_s": round(step_only, 1),
                "step_only_before_after": [before, after],
                "pretrain_from_jpeg_folder": e2e,
                "ratio": round(e2e["median_images_per_s"] / step_only, 3),
            }
        )
    return {
        "rounds": rounds,
        "ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
        "median_data_wait": statistics.median(
            r["pretrain_from_jpeg_folder"]["median_data_wait"] for r in rounds
        ),
    }


def _lightly_images_per_s(args: argparse.Namespace, device: torch.device, data: Path) -> float:
    """lightly's SimCLR loop: per-image transforms in 2 loader workers, same network and loss."""
    import torchvision

    from simclr.models.backbones import create_backbone

    cfg = recipe(args.recipe, device, args.batch_size)
    dtype = autocast_for(device)
    dataset = torchvision.datasets.ImageFolder(str(data), transform=lightly_transform(cfg.augment))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)
    backbone, dim = create_backbone(cfg.model.backbone, width=cfg.model.width, stem=cfg.model.stem)
    model = nn.Sequential(backbone, SimCLRProjectionHead(dim, dim, 128, num_layers=3))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = LightlyLARS(model.parameters(), lr=1.2, momentum=0.9, weight_decay=1e-6)
    criterion = LightlyNTXentLoss(cfg.train.temperature)
    rates, last = [], time.perf_counter()
    for step, ((x0, x1), _) in enumerate(loader):
        if step == args.steps:
            break
        x0 = x0.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x1 = x1.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(model(x0), model(x1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        now = time.perf_counter()
        rates.append(cfg.train.batch_size / (now - last))
        last = now
    return float(statistics.median(rates[5:]))


def part_e2e(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    data = _cifar_train(args)
    if data is None:
        return {"skipped": f"no {args.archive}"}
    ours = _pretrain_images_per_s(args, device, data)
    result: dict[str, Any] = {"recipe": args.recipe, "simclr": ours}
    if LIGHTLY:
        theirs = _lightly_images_per_s(args, device, data)
        result["lightly_median_images_per_s"] = round(theirs, 1)
        result["ratio"] = round(ours["median_images_per_s"] / theirs, 2)
    return result


# ---------------------------------------------------------------- main


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "processor": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightly": LIGHTLY,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60, help="steps of the pretraining parts")
    parser.add_argument(
        "--pipeline-rounds", type=int, default=3, help="pipeline part: rounds, median ratio"
    )
    add_data_arguments(parser)  # --archive, --cache, --recipe (network and views of the step)
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args()
    device = torch.device(args.device)

    report: dict[str, Any] = {
        "benchmark": "suite",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(device),
    }
    runners = {
        "views": part_views,
        "loss": part_loss,
        "step": part_step,
        "pipeline": part_pipeline,
        "e2e": part_e2e,
        "flags": part_flags,
        "flops": part_flops,
    }
    for part in args.parts.split(","):
        if part not in runners:
            sys.exit(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
        started = time.perf_counter()
        report[part] = runners[part](args, device)
        report[part]["part_seconds"] = round(time.perf_counter() - started, 1)
        print(f"## {part}\n{json.dumps(report[part], indent=1)}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
