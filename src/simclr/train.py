"""The SimCLR pretraining loop: views on the device, forward, NT-Xent, backward, step.

One flat loop in the style of torchvision's reference scripts and MoCo v3: the learning rate is a
pure function of the global step, the data order a pure function of (seed, epoch), and a
checkpoint holds everything needed to continue at the exact step.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from simclr import distributed
from simclr.checkpoint import LATEST, file_sha256, load_checkpoint, save_checkpoint
from simclr.config import Config, to_dict, to_yaml
from simclr.data.items import Items, require_labels
from simclr.data.loading import TrainData
from simclr.errors import UserError, first_line
from simclr.evaluate.knn import evaluate_knn
from simclr.losses import NTXentLoss
from simclr.metrics import MetricsLog
from simclr.modalities import modality_for, resolve_modality
from simclr.modalities.base import Fitted, Modality
from simclr.models.batchnorm import use_global_batchnorm
from simclr.models.simclr import SimCLR
from simclr.optim import build_optimizer, lr_at, scaled_lr, set_lr, warmup_steps_for
from simclr.runtime import autocast_dtype, derive_seed, resolve_device, resolve_precision

log = logging.getLogger("simclr")

TIMING_WARMUP_STEPS = 3
"""Steps excluded from the step-time estimate (allocator and oneDNN/cuDNN warm-up)."""


@dataclass
class Budget:
    """When training stops: the smallest of epochs, steps and wall-clock seconds.

    With ``max_time`` the number of steps is estimated from the measured step time and refined
    as training goes, so the warmup + cosine schedule spans the time budget.
    """

    steps_per_epoch: int
    max_epochs: int
    max_steps: int | None
    max_time: float | None

    @property
    def step_limit(self) -> int:
        """Steps allowed by the epoch and step budgets."""
        limit = self.max_epochs * self.steps_per_epoch
        return limit if self.max_steps is None else min(limit, self.max_steps)

    def planned_steps(self, step: int, elapsed: float, seconds_per_step: float | None) -> int:
        """Total steps the schedule should span, given the time spent so far."""
        if self.max_time is None or seconds_per_step is None:
            return self.step_limit
        remaining = max(0.0, self.max_time - elapsed)
        return max(step + 1, min(self.step_limit, step + math.ceil(remaining / seconds_per_step)))

    def done(self, step: int, elapsed: float) -> bool:
        """True at the first step past any budget."""
        over_time = self.max_time is not None and elapsed >= self.max_time
        return step >= self.step_limit or over_time


def pretrain(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    dataset: TrainData | None = None,
    fitted: Fitted | None = None,
) -> dict[str, Any]:
    """Pretrain SimCLR as ``cfg`` says, writing checkpoints and logs into ``run_dir``.

    Under a process group (``torchrun``, see :func:`simclr.distributed.process_group_from_env`)
    every process calls this with the same arguments: the model is wrapped in
    DistributedDataParallel, batch norm becomes global (``train.sync_batchnorm``), each process
    takes ``train.batch_size / K`` items of every global batch, NT-Xent draws negatives from
    all processes, and only rank 0 writes the run folder and shows progress.

    The data, its views and the encoder come from the modality (``data.modality``, see
    :mod:`simclr.modalities`); nothing here depends on what the items are.

    Args:
        cfg: The resolved configuration.
        run_dir: Output folder (created); holds ``config.yaml``, ``metrics.jsonl``,
            ``tensorboard/``, ``checkpoints/latest.pt`` and ``knn.json``.
        resume: Continue from ``run_dir/checkpoints/latest.pt`` if it exists.
        dataset: Training data given directly (Python API); default: ``cfg.data.path``.
        fitted: The preprocessing ``dataset`` was encoded with (a tokenizer, column
            statistics; see :meth:`Modality.open`); ``{}`` for images.

    Returns:
        A summary: steps, epochs, seconds, last loss, skipped files and the kNN results.
    """
    cfg = resolve_modality(cfg)  # the saved config names the modality, never "auto"
    tcfg = cfg.train
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    device = resolve_device(tcfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", distributed.local_rank())  # one GPU per process
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision = resolve_precision(tcfg.precision, device)
    checkpoint_path = run_dir / "checkpoints" / LATEST
    if tcfg.batch_size % world:
        raise UserError(
            f"batch size {tcfg.batch_size} is not divisible by the {world} processes; "
            "train.batch_size is the global batch"
        )

    def open_run_dir() -> dict[str, Any] | None:
        """Check and create the run folder; the checkpoint to resume from, if any."""
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--out {run_dir} is a file, not a folder")
        if checkpoint_path.exists() and not resume:
            raise UserError(
                f"{run_dir} already holds a run; continue it with --resume or choose another --out"
            )
        state = load_checkpoint(checkpoint_path) if resume and checkpoint_path.exists() else None
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        _write_environment(run_dir, device, precision)
        return state

    # Rank 0 decides and reads the checkpoint, then hands it to the others.
    state = distributed.run_on_main(open_run_dir)
    modality = modality_for(cfg)
    if dataset is None:
        dataset, fitted = _open_training_data(modality, state)
    elif fitted is None:
        fitted = {} if state is None else state.get("fitted", {})
    torch.manual_seed(tcfg.seed)
    model = modality.build_model(fitted).to(device)
    if len(dataset) < tcfg.batch_size:
        raise UserError(
            f"batch size {tcfg.batch_size} is larger than the dataset ({len(dataset)} items)"
        )
    eval_sets = _eval_datasets(cfg, modality, dataset, fitted)  # fail before training, not after

    step, elapsed_before, saved_seconds_per_step = 0, 0.0, None
    if state is not None:
        _restore(model, state, "model", checkpoint_path)
        step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        saved_seconds_per_step = state.get("seconds_per_step")
    if world > 1 and tcfg.sync_batchnorm:
        model = use_global_batchnorm(model, device.type)  # same parameters, same state keys
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optim, tcfg.batch_size)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if state is not None:
        _restore(optimizer, state, "optimizer", checkpoint_path)
        scaler.load_state_dict(state["scaler"])
        log.info("resumed from %s at step %d", checkpoint_path, step)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
        )
    if tcfg.compile:
        train_model.compile()  # in place: `model` and its checkpoint keys stay as they are
    views = modality.views(tcfg.seed)
    views.to(device)  # filter banks and other buffers of the view generator
    criterion = NTXentLoss(tcfg.temperature)
    peak_lr = scaled_lr(cfg.optim.lr, tcfg.batch_size, cfg.optim.lr_scaling)
    dtype = autocast_dtype(precision)
    budget = Budget(len(dataset) // tcfg.batch_size, tcfg.epochs, tcfg.max_steps, tcfg.max_time)

    def checkpoint() -> None:
        if not main:
            return
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "epoch": step // budget.steps_per_epoch,
                "elapsed_s": clock,
                "seconds_per_step": seconds_per_step,
                "world_size": world,
                "config": to_dict(cfg),
                "fitted": fitted,
            },
            checkpoint_path,
        )

    metrics = MetricsLog(run_dir) if main else None
    start_time = time.perf_counter()
    timing_start: tuple[int, float] | None = None  # (step, time) after the warm-up steps
    window = (step, start_time)
    data_wait = 0.0  # seconds of the current logging window spent waiting for the next batch

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start_time

    def measured_seconds_per_step() -> float | None:
        # until this process has measured its own, a resumed run uses the saved estimate, so
        # its time-based schedule continues where it was instead of jumping back
        if timing_start is None or step <= timing_start[0]:
            return saved_seconds_per_step
        return (time.perf_counter() - timing_start[1]) / (step - timing_start[0])

    # The clock every rank agrees on (the slowest rank's), so all stop at the same step and
    # follow the same learning-rate schedule.
    clock, seconds_per_step = elapsed_before, saved_seconds_per_step
    skipped_files, loss_value, first_step = 0, float("nan"), step
    model.train()
    stop = _StopRequest()
    bar = tqdm(
        total=budget.step_limit,
        initial=step,
        disable=not (tcfg.progress and main),
        unit="step",
        dynamic_ncols=True,
    )
    try:
        while not budget.done(step, clock):
            epoch, offset = divmod(step, budget.steps_per_epoch)
            step_at_epoch_start = step
            fetch_started = time.perf_counter()
            for batch, skipped in modality.train_batches(
                dataset,
                batch_size=tcfg.batch_size,
                seed=tcfg.seed,
                epoch=epoch,
                start=offset,
                pin_memory=device.type == "cuda",
                rank=rank,
                world_size=world,
            ):
                data_wait += time.perf_counter() - fetch_started  # the step starved this long
                skipped_files += skipped
                length = len(batch[0])
                if world > 1:  # unreadable files may shorten one rank's batch: cut all alike
                    length = int(-distributed.agree_max([-length])[0])
                if length * world < 2:
                    fetch_started = time.perf_counter()
                    continue
                total_steps = budget.planned_steps(step, clock, seconds_per_step)
                warmup = warmup_steps_for(
                    cfg.optim.warmup_epochs, budget.steps_per_epoch, total_steps
                )
                lr = lr_at(step, total_steps, warmup, peak_lr, peak_lr * cfg.optim.min_lr_fraction)
                set_lr(optimizer, lr)

                views.manual_seed(view_seed(tcfg.seed, step, rank))
                # the model's own randomness (dropout: SimCSE's noise for text) as well, so a
                # resumed run repeats it and every rank draws its own
                torch.manual_seed(derive_seed(tcfg.seed, step, rank, 1))
                view1, view2 = views(*(t[:length].to(device, non_blocking=True) for t in batch))
                loss = training_step(
                    train_model,
                    view1,
                    view2,
                    criterion,
                    optimizer,
                    scaler,
                    autocast=dtype,
                    memory_format=memory_format,
                )
                step += 1
                bar.update(1)

                if step - first_step == TIMING_WARMUP_STEPS:
                    timing_start = (step, time.perf_counter())
                clock, agreed, stopping = distributed.agree_max(
                    [elapsed(), measured_seconds_per_step() or -1.0, float(stop.is_set())]
                )
                seconds_per_step = agreed if agreed > 0 else None
                if step % tcfg.log_every == 0 or budget.done(step, clock):
                    loss_value = distributed.mean_over_ranks(loss.item())
                    if not math.isfinite(loss_value):
                        raise UserError(
                            f"loss became {loss_value} at step {step}; lower optim.lr or use "
                            "train.precision=fp32"
                        )
                    now = time.perf_counter()
                    window_s = max(now - window[1], 1e-9)
                    rate = tcfg.batch_size * (step - window[0]) / window_s
                    wait_fraction = data_wait / window_s  # waits are disjoint parts of it
                    window, data_wait = (step, now), 0.0
                    record = {
                        "step": step,
                        "epoch": step / budget.steps_per_epoch,
                        "loss": loss_value,
                        "lr": lr,
                        "images_per_s": round(rate, 1),
                        "data_wait": round(wait_fraction, 4),
                        "elapsed_s": round(clock, 2),
                        "planned_steps": total_steps,
                    }
                    if metrics is not None:
                        metrics.write(record)
                    bar.total = total_steps
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
                if step % tcfg.checkpoint_every == 0:
                    checkpoint()
                if stopping:  # every rank stops after the same step
                    raise KeyboardInterrupt("stop requested")
                if budget.done(step, clock):
                    break
                fetch_started = time.perf_counter()
            if step == step_at_epoch_start:
                raise UserError(f"no readable items in {cfg.data.path} (all files failed)")
        checkpoint()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (a scheduler pre-empting the job)
        checkpoint()
        log.warning("interrupted: checkpoint saved at step %d; continue with --resume", step)
        raise
    finally:
        stop.restore()
        bar.close()
        if metrics is not None:
            metrics.close()
    skipped_files = round(distributed.sum_over_ranks(skipped_files))
    if skipped_files:
        log.warning("skipped %d unreadable file(s) during training", skipped_files)

    summary: dict[str, Any] = {
        "steps": step,
        "epochs": round(step / budget.steps_per_epoch, 3),
        "train_seconds": round(clock, 1),
        "final_loss": loss_value,
        "skipped_files": skipped_files,
        "checkpoint": str(checkpoint_path),
        "processes": world,
    }
    if eval_sets is not None:
        distributed.broadcast_buffers(model)  # per-process batch norm: evaluate rank 0's model
        summary["knn"] = knn_with_baseline(model, modality, fitted, *eval_sets, device=device)
        if main:
            summary["knn"]["checkpoint"] = {
                "path": str(checkpoint_path),
                "sha256": file_sha256(checkpoint_path),
                "step": step,
            }
            (run_dir / "knn.json").write_text(json.dumps(summary["knn"], indent=2) + "\n")
    return summary


def training_step(
    model: nn.Module,
    view1: Tensor,
    view2: Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    autocast: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """One optimisation step on a batch of view pairs; returns this process's loss (detached).

    Both views go through the model as one batch of 2B, so batch norm sees them together (as
    the official implementation does); under DDP ``model`` is the wrapped model and ``criterion``
    gathers the projections of all processes.

    Shape:
        view1 and view2 ``[B, ...]`` (images ``[B, C, H, W]`` float, token ids ``[B, L]``
        int64...); row i of each is a view of item i. ``memory_format`` applies to 4-D views.
    """
    both = torch.cat([view1, view2])
    if both.dim() == 4:
        both = both.contiguous(memory_format=memory_format)
    with torch.autocast(both.device.type, dtype=autocast, enabled=autocast is not None):
        z1, z2 = model(both).chunk(2)
        loss: Tensor = criterion(z1, z2)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def view_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the views of ``step`` on ``rank``.

    Views are a pure function of these three, so a resumed run draws the views it would have
    drawn without the interruption, and no random state needs to be saved.
    """
    return derive_seed(seed, step, rank)


def knn_with_baseline(
    model: SimCLR,
    modality: Modality,
    fitted: Fitted,
    train_set: Items,
    test_set: Items,
    *,
    device: torch.device,
) -> dict[str, Any]:
    """KNN accuracy of ``model`` and of the same architecture at random initialisation.

    In a distributed job every process embeds its share of both datasets.
    """
    cfg = modality.cfg
    torch.manual_seed(cfg.train.seed)
    random_init = modality.build_model(fitted).to(device)
    results = {}
    for name, candidate in (("trained", model), ("random_init", random_init)):
        results[name] = evaluate_knn(
            candidate.backbone,
            train_set,
            test_set,
            modality=modality,
            cfg=cfg.eval,
            device=device,
            across_ranks=True,
        )
    return results


def _open_training_data(
    modality: Modality, state: dict[str, Any] | None
) -> tuple[TrainData, Fitted]:
    """The training data, with its preprocessing fitted once by rank 0 (or read from ``state``).

    Fitting (a tokenizer, column statistics) runs on rank 0 alone and is handed to the other
    ranks, so every process encodes its data the same way; data with nothing to fit, or a fit
    saved in the checkpoint, is opened by every rank at once.
    """
    saved: Fitted | None = None if state is None else state.get("fitted", {})
    if saved is not None or not modality.fits_preprocessing:  # nothing to agree on: all at once
        return modality.open_train(saved)
    opened: list[TrainData] = []

    def fit_on_main() -> Fitted:
        dataset, fitted = modality.open_train(saved)
        opened.append(dataset)
        return fitted

    fitted: Fitted = distributed.run_on_main(fit_on_main)
    if opened:
        return opened[0], fitted
    return modality.open_train(fitted)[0], fitted


def _eval_datasets(
    cfg: Config, modality: Modality, train_data: TrainData, fitted: Fitted
) -> tuple[Items, Items] | None:
    """The labelled (reference, test) sets of the end-of-run kNN, or ``None`` when not asked."""
    if cfg.eval.data is None:
        return None
    if not isinstance(train_data, Items) and cfg.eval.train_data is None:
        raise UserError(
            "kNN after training on shards needs --eval-train-data, a labelled folder to use as "
            "the kNN reference (a stream of shards cannot be embedded item by item)"
        )
    test, _ = modality.open(cfg.eval.data, split="test", fitted=fitted)
    if cfg.eval.train_data is not None:
        reference, _ = modality.open(cfg.eval.train_data, split="train", fitted=fitted)
    else:
        assert isinstance(train_data, Items)
        reference = train_data
    require_labels(reference, test, "kNN")
    return reference, test


def _restore(target: Any, state: dict[str, Any], key: str, path: Path) -> None:
    """Load ``state[key]`` into a model or optimizer; a mismatch is the user's config."""
    try:
        target.load_state_dict(state[key])
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"cannot resume {path} with this config: {first_line(err)}") from None


class _StopRequest:
    """A request to stop after the current step, from a signal.

    SIGTERM (a scheduler pre-empting the job, torchrun stopping a failed group) or a first
    Ctrl-C sets it; a second Ctrl-C interrupts at once. The loop checks it between steps
    (agreed between ranks), so the checkpoint it then writes is never half a step.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._request)

    def _request(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self._event.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: do not wait for the step to end
        self._event.set()
        log.warning("stopping after this step (signal %d); a checkpoint will be saved", signum)

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    def restore(self) -> None:
        """Put the previous signal handlers back."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _write_environment(run_dir: Path, device: torch.device, precision: str) -> None:
    """Record versions, device and git commit next to the run, for reproducibility."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "git_commit": commit or None,
    }
    (run_dir / "environment.json").write_text(json.dumps(info, indent=2) + "\n")
