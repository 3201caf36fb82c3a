"""The SimCLR pretraining loop: views on the device, forward, NT-Xent, backward, step.

:func:`pretrain` reads top to bottom as three plain functions over one :class:`Run`:
:func:`setup_run` (config, data, model, optimizer, resume), :func:`train_loop` (steps, logging
window, checkpoint cadence, stop agreement) and :func:`finish_run` (kNN, summary). The learning
rate is a pure function of the global step, the data order of (seed, epoch) and the views of
(seed, step, rank), so a checkpoint holds everything needed to continue at the exact step.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import signal
import subprocess
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from simclr import distributed
from simclr.checkpoint import LATEST, file_sha256, load_checkpoint, save_checkpoint
from simclr.clock import Budget, StepClock, ThroughputWindow
from simclr.config import Config, to_dict, to_yaml
from simclr.data.items import Items, require_labels
from simclr.data.loading import TrainData
from simclr.errors import UserError, first_line
from simclr.evaluate.knn import evaluate_knn
from simclr.losses import NTXentLoss
from simclr.metrics import MetricsLog
from simclr.modalities import modality_for, resolve_modality
from simclr.modalities.base import Batch, Fitted, Modality, ViewGenerator
from simclr.models.batchnorm import use_global_batchnorm
from simclr.models.simclr import SimCLR
from simclr.optim import build_optimizer, lr_at, scaled_lr, set_lr, warmup_steps_for
from simclr.runtime import autocast_dtype, derive_seed, resolve_device, resolve_precision

log = logging.getLogger("simclr")


@dataclass
class Run:
    """One pretraining run: what set-up builds, the loop advances and finish reports.

    ``model`` is the plain model (its state is what checkpoints hold); ``train_model`` is what
    the loop calls (``model`` wrapped in DistributedDataParallel and/or compiled). ``elapsed``
    and ``seconds_per_step`` are the values every rank agreed on (the slowest rank's), so all
    ranks follow the same schedule and stop after the same step.
    """

    cfg: Config
    run_dir: Path
    device: torch.device
    precision: str
    modality: Modality
    dataset: TrainData
    eval_sets: tuple[Items, Items] | None
    model: SimCLR
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    views: ViewGenerator
    criterion: NTXentLoss
    budget: Budget
    peak_lr: float
    step: int = 0
    elapsed: float = 0.0
    seconds_per_step: float | None = None
    loss: float = float("nan")
    skipped_files: int = 0

    @property
    def rank(self) -> int:
        """This process's rank (0 in a single process)."""
        return distributed.rank()

    @property
    def world(self) -> int:
        """Number of processes."""
        return distributed.world_size()

    @property
    def checkpoint_path(self) -> Path:
        """``run_dir/checkpoints/latest.pt``."""
        return self.run_dir / "checkpoints" / LATEST

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of 4-D inputs (``model.channels_last``)."""
        return torch.channels_last if self.cfg.model.channels_last else torch.contiguous_format


def pretrain(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    dataset: TrainData | None = None,
    fitted: Fitted | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain SimCLR as ``cfg`` says, writing checkpoints and logs into ``run_dir``.

    Under a process group (``torchrun``, see :func:`simclr.distributed.process_group_from_env`)
    every process calls this with the same arguments: the model is wrapped in
    DistributedDataParallel, batch norm becomes global (``train.sync_batchnorm``), each process
    takes ``train.batch_size / K`` items of every global batch, NT-Xent draws negatives from
    all processes, and only rank 0 writes the run folder and shows progress. The data, its
    views and the encoder come from the modality (``data.modality``, :mod:`simclr.modalities`).

    Args:
        cfg: The resolved configuration.
        run_dir: Output folder (created); holds ``config.yaml``, ``metrics.jsonl``,
            ``tensorboard/``, ``checkpoints/latest.pt`` and ``knn.json``.
        resume: Continue from ``run_dir/checkpoints/latest.pt`` if it exists.
        dataset: Training data given directly (Python API); default: ``cfg.data.path``.
        fitted: The preprocessing ``dataset`` was encoded with (a tokenizer, column
            statistics); ``{}`` for images.
        state: The checkpoint to resume from, when the caller has read it already (the CLI
            reads it for its config); otherwise rank 0 reads it with ``resume``.

    Returns:
        A summary: steps, epochs, seconds, last loss, skipped files and the kNN results.
    """
    run = setup_run(cfg, run_dir, resume=resume, dataset=dataset, fitted=fitted, state=state)
    train_loop(run)
    return finish_run(run)


def setup_run(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool,
    dataset: TrainData | None,
    fitted: Fitted | None,
    state: dict[str, Any] | None,
) -> Run:
    """Check the run folder, open the data, build and restore the model and optimizer.

    The arguments are :func:`pretrain`'s.
    """
    cfg = resolve_modality(cfg)  # the saved config names the modality, never "auto"
    tcfg = cfg.train
    device = _training_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)
    if tcfg.batch_size % distributed.world_size():
        raise UserError(
            f"batch size {tcfg.batch_size} is not divisible by the {distributed.world_size()} "
            "processes; train.batch_size is the global batch"
        )
    # Rank 0 checks the folder and reads the checkpoint, then hands it to the others.
    if state is None and resume:
        state = distributed.run_on_main(partial(_read_resume_state, run_dir))
    distributed.run_on_main(partial(_prepare_run_dir, run_dir, cfg, resume, device, precision))
    if dataset is None:
        dataset, fitted = _open_training_data(modality_for(cfg), state)
    elif fitted is None:
        fitted = {} if state is None else state.get("fitted", {})
    modality = modality_for(cfg, fitted)
    torch.manual_seed(tcfg.seed)
    model = modality.build_model().to(device)
    if len(dataset) < tcfg.batch_size:
        raise UserError(
            f"batch size {tcfg.batch_size} is larger than the dataset ({len(dataset)} items)"
        )
    eval_sets = _eval_datasets(cfg, modality, dataset)  # fail before training, not after
    if state is not None:
        _restore(model, state, "model", run_dir)
    model, train_model, optimizer, scaler = _training_parts(model, cfg, device, precision)
    if state is not None:
        _restore(optimizer, state, "optimizer", run_dir)
        scaler.load_state_dict(state["scaler"])
    views = modality.views(tcfg.seed)
    views.to(device)  # filter banks and other buffers of the view generator
    run = Run(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        precision=precision,
        modality=modality,
        dataset=dataset,
        eval_sets=eval_sets,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scaler=scaler,
        views=views,
        criterion=NTXentLoss(tcfg.temperature),
        budget=Budget(len(dataset) // tcfg.batch_size, tcfg.epochs, tcfg.max_steps, tcfg.max_time),
        peak_lr=scaled_lr(cfg.optim.lr, tcfg.batch_size, cfg.optim.lr_scaling),
    )
    if state is not None:
        run.step, run.elapsed = int(state["step"]), float(state["elapsed_s"])
        run.seconds_per_step = state.get("seconds_per_step")
        log.info("resumed from %s at step %d", run.checkpoint_path, run.step)
    return run


def train_loop(run: Run) -> None:
    """Train until a budget is spent or a stop is requested, checkpointing as configured.

    Ctrl-C or SIGTERM (a scheduler pre-empting the job) stops every rank after the same step;
    the checkpoint is then written and ``KeyboardInterrupt`` raised.
    """
    tcfg = run.cfg.train
    main = distributed.is_main()
    metrics = MetricsLog(run.run_dir) if main else None
    clock = StepClock(run.step, run.elapsed, run.seconds_per_step)
    window = ThroughputWindow(run.step)
    stop = _StopRequest()
    bar = tqdm(
        total=run.budget.step_limit,
        initial=run.step,
        disable=not (tcfg.progress and main),
        unit="step",
        dynamic_ncols=True,
    )
    run.model.train()
    try:
        while not run.budget.done(run.step, run.elapsed):
            epoch, offset = divmod(run.step, run.budget.steps_per_epoch)
            step_at_epoch_start = run.step
            window.fetching()
            for batch, skipped in run.modality.train_batches(
                run.dataset,
                batch_size=tcfg.batch_size,
                seed=tcfg.seed,
                epoch=epoch,
                start=offset,
                pin_memory=run.device.type == "cuda",
                rank=run.rank,
                world_size=run.world,
            ):
                window.fetched()
                run.skipped_files += skipped
                length = _agreed_length(batch, run.world)
                if length * run.world < 2:
                    window.fetching()
                    continue
                lr, total_steps = _schedule(run)
                loss = _train_step(run, batch, length, lr)
                bar.update(1)
                stopping = _agree_on_time(run, clock, stop)
                if run.step % tcfg.log_every == 0 or run.budget.done(run.step, run.elapsed):
                    record = _log_record(run, loss, lr, total_steps, window)
                    if metrics is not None:
                        metrics.write(record)
                    bar.total = total_steps
                    rate = f"{record['images_per_s']:.0f}"
                    bar.set_postfix(loss=f"{run.loss:.3f}", lr=f"{lr:.3g}", img_s=rate)
                if run.step % tcfg.checkpoint_every == 0:
                    save_run_checkpoint(run)
                if stopping:  # every rank stops after the same step
                    raise KeyboardInterrupt("stop requested")
                if run.budget.done(run.step, run.elapsed):
                    break
                window.fetching()
            if run.step == step_at_epoch_start:
                raise UserError(f"no readable items in {run.cfg.data.path} (all files failed)")
        save_run_checkpoint(run)
    except KeyboardInterrupt:
        save_run_checkpoint(run)
        log.warning("interrupted: checkpoint saved at step %d; continue with --resume", run.step)
        raise
    finally:
        stop.restore()
        bar.close()
        if metrics is not None:
            metrics.close()


def finish_run(run: Run) -> dict[str, Any]:
    """Report skipped files, run the end-of-run kNN when asked, and summarise the run."""
    run.skipped_files = round(distributed.sum_over_ranks(run.skipped_files))
    if run.skipped_files:
        log.warning("skipped %d unreadable file(s) during training", run.skipped_files)
    summary: dict[str, Any] = {
        "steps": run.step,
        "epochs": round(run.step / run.budget.steps_per_epoch, 3),
        "train_seconds": round(run.elapsed, 1),
        "final_loss": run.loss,
        "skipped_files": run.skipped_files,
        "checkpoint": str(run.checkpoint_path),
        "processes": run.world,
    }
    if run.eval_sets is None:
        return summary
    distributed.broadcast_buffers(run.model)  # per-process batch norm: evaluate rank 0's model
    knn = knn_with_baseline(run.model, run.modality, *run.eval_sets, device=run.device)
    if distributed.is_main():
        knn["checkpoint"] = {
            "path": str(run.checkpoint_path),
            "sha256": file_sha256(run.checkpoint_path),
            "step": run.step,
        }
        (run.run_dir / "knn.json").write_text(json.dumps(knn, indent=2) + "\n")
    summary["knn"] = knn
    return summary


def save_run_checkpoint(run: Run) -> None:
    """Write ``latest.pt`` (rank 0 only; atomically, see :func:`save_checkpoint`)."""
    if not distributed.is_main():
        return
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "step": run.step,
        "epoch": run.step // run.budget.steps_per_epoch,
        "elapsed_s": run.elapsed,
        "seconds_per_step": run.seconds_per_step,
        "world_size": run.world,
        "config": to_dict(run.cfg),
        "fitted": run.modality.fitted or {},
    }
    save_checkpoint(state, run.checkpoint_path)


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
    random_init = modality.build_model().to(device)
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


def _training_device(name: str) -> torch.device:
    """The device of this process: one GPU per process under DDP."""
    device = resolve_device(name)
    if device.type == "cuda" and distributed.world_size() > 1:
        return torch.device("cuda", distributed.local_rank())
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _read_resume_state(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint of ``run_dir`` to resume from, or ``None`` when there is none yet."""
    path = run_dir / "checkpoints" / LATEST
    return load_checkpoint(path) if path.exists() else None


def _prepare_run_dir(
    run_dir: Path, cfg: Config, resume: bool, device: torch.device, precision: str
) -> None:
    """Refuse to overwrite a run, create the folder, write the config and environment."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a folder")
    if (run_dir / "checkpoints" / LATEST).exists() and not resume:
        raise UserError(
            f"{run_dir} already holds a run; continue it with --resume or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    _write_environment(run_dir, device, precision)


def _training_parts(
    model: SimCLR,
    cfg: Config,
    device: torch.device,
    precision: str,
) -> tuple[SimCLR, nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The model in its training form, the module the loop calls, the optimizer and scaler.

    Under DDP batch norm becomes global (same parameters, same state keys) and the model is
    wrapped; ``train.compile`` compiles the called module in place, so ``model`` and its
    checkpoint keys stay as they are.
    """
    world = distributed.world_size()
    if world > 1 and cfg.train.sync_batchnorm:
        model = use_global_batchnorm(model, device.type)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optim, cfg.train.batch_size)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    train_model: nn.Module = model
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if cfg.train.compile:
        train_model.compile()
    return model, train_model, optimizer, scaler


def _open_training_data(
    modality: Modality, state: dict[str, Any] | None
) -> tuple[TrainData, Fitted]:
    """The training data, with its preprocessing fitted once by rank 0 (or read from ``state``).

    Fitting (a tokenizer, column statistics) runs on rank 0 alone and is handed to the other
    ranks, so every process encodes its data the same way; data with nothing to fit, or a fit
    saved in the checkpoint, is opened by every rank at once.
    """
    if state is not None:
        return modality.with_fitted(state.get("fitted", {})).open_train()
    if not modality.fits_preprocessing:  # nothing to agree on: all at once
        return modality.open_train()
    fit = _FitOnMain(modality)
    fitted: Fitted = distributed.run_on_main(fit)
    if fit.dataset is not None:
        return fit.dataset, fitted
    return modality.with_fitted(fitted).open_train()[0], fitted


class _FitOnMain:
    """Opens the training data and fits its preprocessing, keeping the data it read."""

    def __init__(self, modality: Modality) -> None:
        self.modality = modality
        self.dataset: TrainData | None = None

    def __call__(self) -> Fitted:
        self.dataset, fitted = self.modality.open_train()
        return fitted


def _eval_datasets(
    cfg: Config, modality: Modality, train_data: TrainData
) -> tuple[Items, Items] | None:
    """The labelled (reference, test) sets of the end-of-run kNN, or ``None`` when not asked."""
    if cfg.eval.data is None:
        return None
    if not isinstance(train_data, Items) and cfg.eval.train_data is None:
        raise UserError(
            "kNN after training on shards needs --eval-train-data, a labelled folder to use as "
            "the kNN reference (a stream of shards cannot be embedded item by item)"
        )
    test, _ = modality.open(cfg.eval.data, split="test")
    if cfg.eval.train_data is not None:
        reference, _ = modality.open(cfg.eval.train_data, split="train")
    else:
        assert isinstance(train_data, Items)
        reference = train_data
    require_labels(reference, test, "kNN")
    return reference, test


def _agreed_length(batch: Batch, world: int) -> int:
    """Rows of ``batch`` to train on: under DDP, the shortest rank's.

    Unreadable files may shorten one rank's batch, so every rank cuts its batch alike.
    """
    length = len(batch[0])
    if world > 1:
        length = int(-distributed.agree_max([-length])[0])
    return length


def _schedule(run: Run) -> tuple[float, int]:
    """Set the learning rate of this step; ``(lr, planned total steps)``."""
    optim = run.cfg.optim
    total_steps = run.budget.planned_steps(run.step, run.elapsed, run.seconds_per_step)
    warmup = warmup_steps_for(optim.warmup_epochs, run.budget.steps_per_epoch, total_steps)
    lr = lr_at(run.step, total_steps, warmup, run.peak_lr, run.peak_lr * optim.min_lr_fraction)
    set_lr(run.optimizer, lr)
    return lr, total_steps


def _train_step(run: Run, batch: Batch, length: int, lr: float) -> Tensor:
    """Draw this step's views, take one optimisation step and count it; the detached loss."""
    seed = run.cfg.train.seed
    run.views.manual_seed(view_seed(seed, run.step, run.rank))
    # the model's own randomness (dropout: SimCSE's noise for text) as well, so a resumed run
    # repeats it and every rank draws its own
    torch.manual_seed(derive_seed(seed, run.step, run.rank, 1))
    view1, view2 = run.views(*(t[:length].to(run.device, non_blocking=True) for t in batch))
    loss = training_step(
        run.train_model,
        view1,
        view2,
        run.criterion,
        run.optimizer,
        run.scaler,
        autocast=autocast_dtype(run.precision),
        memory_format=run.memory_format,
    )
    run.step += 1
    return loss


def _agree_on_time(run: Run, clock: StepClock, stop: _StopRequest) -> bool:
    """Agree with the other ranks on the clock, the step time and a stop; True to stop."""
    clock.step_done(run.step)
    elapsed, seconds_per_step, stopping = distributed.agree_max(
        [clock.elapsed(), clock.seconds_per_step(run.step) or -1.0, float(stop.is_set())]
    )
    run.elapsed = elapsed
    run.seconds_per_step = seconds_per_step if seconds_per_step > 0 else None
    return bool(stopping)


def _log_record(
    run: Run, loss: Tensor, lr: float, total_steps: int, window: ThroughputWindow
) -> dict[str, Any]:
    """The ``metrics.jsonl`` record of this step (the loss averaged over ranks).

    Raises:
        UserError: the loss is no longer finite.
    """
    run.loss = distributed.mean_over_ranks(loss.item())
    if not math.isfinite(run.loss):
        raise UserError(
            f"loss became {run.loss} at step {run.step}; lower optim.lr or use train.precision=fp32"
        )
    rate, wait_fraction = window.close(run.step, run.cfg.train.batch_size)
    return {
        "step": run.step,
        "epoch": run.step / run.budget.steps_per_epoch,
        "loss": run.loss,
        "lr": lr,
        "images_per_s": round(rate, 1),
        "data_wait": round(wait_fraction, 4),
        "elapsed_s": round(run.elapsed, 2),
        "planned_steps": total_steps,
    }


def _restore(target: Any, state: dict[str, Any], key: str, run_dir: Path) -> None:
    """Load ``state[key]`` into a model or optimizer; a mismatch is the user's config."""
    try:
        target.load_state_dict(state[key])
    except (RuntimeError, ValueError, KeyError) as err:
        path = run_dir / "checkpoints" / LATEST
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
