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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from simclr import distributed
from simclr.checkpoint import (
    BEST,
    LATEST,
    WriteFailed,
    file_sha256,
    keep_snapshot,
    load_weights,
    nonfinite_tensors,
    save_checkpoint,
    state_tensors,
    write_text_atomic,
)
from simclr.clock import Budget, StepClock, ThroughputWindow
from simclr.config import Config, to_dict
from simclr.data.items import Items, require_labels
from simclr.data.loading import TrainData
from simclr.errors import UserError, first_line
from simclr.evaluate.knn import evaluate_knn
from simclr.health import TrainingHealth, projection_spread
from simclr.losses import OBJECTIVE_SCALES, NTXentLoss
from simclr.metrics import MetricsLog
from simclr.micro_batch import check_micro_batch, micro_batch_step
from simclr.modalities import modality_for, resolve_modality
from simclr.modalities.base import Batch, Fitted, Modality, ViewGenerator
from simclr.models.backbones import memory_format_for
from simclr.models.batchnorm import use_global_batchnorm
from simclr.models.simclr import SimCLR
from simclr.monitor import PeriodicKnn
from simclr.optim import build_optimizer, lr_at, scaled_lr, set_lr, warmup_steps_for
from simclr.run_folder import (
    RunLock,
    prepare_run_dir,
    read_resume_state,
    write_run_files,
)
from simclr.runtime import (
    StopRequest,
    autocast_dtype,
    derive_seed,
    resolve_device,
    resolve_precision,
)
from simclr.trackers import log_final

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
    nonfinite_step: Tensor
    """On the device: the first step whose loss was not finite, -1 while there is none. Updated
    every step without a host sync; read where the loop syncs anyway (logging, checkpoints)."""
    lock: RunLock
    step: int = 0
    elapsed: float = 0.0
    seconds_per_step: float | None = None
    loss: float = float("nan")
    skipped_files: int = 0
    saved_step: int | None = None
    """Step of the last checkpoint written (or resumed from); ``None`` before the first."""
    restarted: bool = False
    """Whether this run continues a folder with earlier metrics (their later steps are hidden)."""
    memory_format: torch.memory_format = torch.contiguous_format
    """Of the model and its 4-D inputs (``model.channels_last``, where safe)."""
    periodic_knn: PeriodicKnn | None = None
    """The kNN during training (``eval.every``), or ``None``."""
    health: TrainingHealth | None = None
    """Warns when the run is not learning (rank 0 only)."""
    warmup_steps: int = 0
    """Warmup steps of the current schedule (set with each step's learning rate)."""
    progress: dict[str, str] = field(default_factory=dict)
    """The progress bar's fields: loss, learning rate, images/s, last kNN."""

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
    def best_path(self) -> Path:
        """``run_dir/checkpoints/best.pt``: the checkpoint of the best periodic kNN."""
        return self.run_dir / "checkpoints" / BEST


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
    try:
        train_loop(run)
        summary = finish_run(run)
        if distributed.is_main():  # the final kNN to W&B, MLflow, TensorBoard
            log_final(run.run_dir, run.cfg.train.loggers, summary)
        return summary
    finally:
        run.lock.release()


def setup_run(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool,
    dataset: TrainData | None,
    fitted: Fitted | None,
    state: dict[str, Any] | None,
) -> Run:
    """Lock and check the run folder, open the data, build and restore the model and optimizer.

    The arguments are :func:`pretrain`'s. Nothing in the run folder is rewritten before a
    resumed state is accepted (its config compared, its weights loaded): ``config.yaml`` and
    ``environment.json`` are written, and ``metrics.jsonl`` cut back to the checkpoint, after.
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
    if tcfg.micro_batch_size:
        problem = check_micro_batch(
            tcfg.micro_batch_size, tcfg.batch_size // distributed.world_size()
        )
        if problem is not None:
            raise UserError(problem)
    # Rank 0 reads the checkpoint, then locks and checks the folder; the others follow it.
    if state is None and resume:
        state = distributed.run_on_main(partial(read_resume_state, run_dir))
    lock = RunLock(run_dir)
    distributed.run_on_main(partial(prepare_run_dir, run_dir, cfg, resume, state, lock))
    try:
        return _build_run(cfg, run_dir, resume, device, precision, dataset, fitted, state, lock)
    except BaseException:
        lock.release()
        raise


def _build_run(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    device: torch.device,
    precision: str,
    dataset: TrainData | None,
    fitted: Fitted | None,
    state: dict[str, Any] | None,
    lock: RunLock,
) -> Run:
    """:func:`setup_run` once the folder is locked and checked: data, model, restored state."""
    tcfg = cfg.train
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
        load_weights(model, state["model"], f"cannot resume {run_dir / 'checkpoints' / LATEST}")
    memory_format = memory_format_for(model, device, cfg.model.channels_last)
    model, train_model, optimizer, scaler = _training_parts(
        model, cfg, device, precision, memory_format
    )
    if state is not None:
        _restore(optimizer, state, "optimizer", run_dir)
        if state["scaler"]:  # empty when saved without fp16 (a changed precision starts afresh)
            _restore(scaler, state, "scaler", run_dir)
    restarted = distributed.run_on_main(
        partial(write_run_files, run_dir, cfg, resume, state, device, precision)
    )
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
        nonfinite_step=torch.full((), -1, dtype=torch.long, device=device),
        lock=lock,
        restarted=restarted,
        health=TrainingHealth(tcfg.batch_size, cfg.model.head_out_dim),
        memory_format=memory_format,
    )
    if state is not None:
        run.step, run.elapsed = int(state["step"]), float(state["elapsed_s"])
        run.seconds_per_step = state.get("seconds_per_step")
        run.saved_step = run.step
        log.info("resumed from %s at step %d", run.checkpoint_path, run.step)
    if cfg.eval.every is not None and eval_sets is not None:
        run.periodic_knn = PeriodicKnn.for_run(
            cfg.eval,
            *eval_sets,
            seed=tcfg.seed,
            step=run.step,
            elapsed=run.elapsed,
            saved=None if state is None else state.get("periodic_knn"),
            run_dir=run_dir,
        )
    return run


def train_loop(run: Run) -> None:
    """Train until a budget is spent or a stop is requested, checkpointing as configured.

    Ctrl-C or SIGTERM (a scheduler pre-empting the job, to the main process or its whole
    process group: loader workers ignore both) stops every rank after the same step; the
    checkpoint is then written and ``KeyboardInterrupt`` raised. A second Ctrl-C interrupts at
    once: the checkpoint is then written only if no step was half done.

    The loss is checked every step on the device (:func:`_note_loss`), and nothing non-finite
    is ever written to a checkpoint (:func:`save_run_checkpoint`).
    """
    tcfg = run.cfg.train
    main = distributed.is_main()
    purge = run.step + 1 if run.restarted else None
    metrics = (
        MetricsLog(run.run_dir, loggers=tcfg.loggers, purge_step=purge, config=to_dict(run.cfg))
        if main
        else None
    )
    clock = StepClock(run.step, run.elapsed, run.seconds_per_step)
    window = ThroughputWindow(run.step)
    stop = StopRequest()
    bar = _progress_bar(run, enabled=tcfg.progress and main)
    run.model.train()
    agreed_stop = in_step = False
    try:
        if run.periodic_knn is not None and run.step == 0:
            # the untrained network on the same subsets: where the curve starts from
            _evaluate_during_training(run, clock, window, metrics, bar, baseline=True)
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
                in_step = True
                loss, spread = _train_step(run, batch, length, lr)
                in_step = False
                _note_loss(run, loss)
                bar.update(1)
                stopping = _agree_on_time(run, clock, stop)
                if run.step % tcfg.log_every == 0 or run.budget.done(run.step, run.elapsed):
                    _check_loss(run)
                    record = _log_record(run, loss, spread, lr, total_steps, window)
                    _log_step(run, record, metrics, bar)
                if run.periodic_knn is not None and run.periodic_knn.due(run.step, run.elapsed):
                    _evaluate_during_training(run, clock, window, metrics, bar)
                if run.step % tcfg.checkpoint_every == 0:
                    save_run_checkpoint(run, snapshot=True)
                if stopping:  # every rank stops after the same step
                    agreed_stop = True
                    raise KeyboardInterrupt("stop requested")
                if run.budget.done(run.step, run.elapsed):
                    break
                window.fetching()
            if run.step == step_at_epoch_start:
                raise UserError(f"no readable items in {run.cfg.data.path} (all files failed)")
        if run.saved_step != run.step:
            save_run_checkpoint(run)
    except (KeyboardInterrupt, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not _loader_died_of_stop(err, stop):
            raise
        _save_on_interrupt(run, in_step=in_step, agreed=agreed_stop)
        raise KeyboardInterrupt("stop requested") from None
    finally:
        stop.restore()
        bar.close()
        if metrics is not None:
            metrics.close()


def _progress_bar(run: Run, *, enabled: bool) -> tqdm[Any]:
    """The step progress bar (rank 0, ``train.progress``), from the run's current step."""
    return tqdm(
        total=run.budget.step_limit,
        initial=run.step,
        disable=not enabled,
        unit="step",
        dynamic_ncols=True,
    )


def _log_step(run: Run, record: dict[str, Any], metrics: MetricsLog | None, bar: tqdm[Any]) -> None:
    """Write a step's record, show it in the progress bar and warn if the run is not learning."""
    if metrics is not None:
        metrics.write(record)
        assert run.health is not None
        run.health.check(record, run.warmup_steps)
    bar.total = record["planned_steps"]
    run.progress.update(
        loss=f"{run.loss:.3f}", lr=f"{record['lr']:.3g}", img_s=f"{record['images_per_s']:.0f}"
    )
    bar.set_postfix(run.progress)


def _evaluate_during_training(
    run: Run,
    clock: StepClock,
    window: ThroughputWindow,
    metrics: MetricsLog | None,
    bar: tqdm[Any],
    *,
    baseline: bool = False,
) -> None:
    """The periodic kNN: score, log, keep ``best.pt``; its time is left out of training time.

    ``baseline``: the untrained network at step 0 (logged, never ``best.pt``).
    """
    assert run.periodic_knn is not None
    distributed.broadcast_buffers(run.model)  # per-process batch norm: score rank 0's model
    record = run.periodic_knn.evaluate(
        run.model.backbone, run.modality, run.device, run.step, baseline=baseline
    )
    is_best = record.pop("is_best")
    clock.exclude(record["eval_s"])
    window.exclude(record["eval_s"])
    record["elapsed_s"] = round(run.elapsed, 2)
    record["eval_share"] = round(run.periodic_knn.share(run.elapsed), 4)
    if metrics is not None:
        metrics.write(record)
    run.progress["knn"] = f"{record['knn_top1']:.1f}%"
    bar.set_postfix(run.progress)
    if is_best:
        save_run_checkpoint(run, best=True)


def _save_on_interrupt(run: Run, *, in_step: bool, agreed: bool) -> None:
    """Save after Ctrl-C or SIGTERM, unless the interruption came inside a step."""
    if in_step:  # a second Ctrl-C inside a step: its state is half updated
        log.warning("interrupted inside step %d: not saved; %s", run.step + 1, _last_good(run))
        return
    if run.saved_step != run.step:
        save_run_checkpoint(run, agree=agreed)
    log.warning("interrupted: checkpoint saved at step %d; continue with --resume", run.step)


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
    if run.periodic_knn is not None:
        summary["periodic_knn"] = _periodic_summary(run.periodic_knn, run.elapsed, run.best_path)
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
        write_text_atomic(run.run_dir / "knn.json", json.dumps(knn, indent=2) + "\n")
    summary["knn"] = knn
    return summary


def _periodic_summary(periodic: PeriodicKnn, elapsed: float, best: Path) -> dict[str, Any]:
    """The periodic kNN's part of the summary (and its cost, logged)."""
    share = periodic.share(elapsed)
    log.info(
        "kNN during training: %d evaluations, %.0f s, %.1f %% of the training time",
        periodic.evaluations,
        periodic.seconds,
        100 * share,
    )
    return {
        "evaluations": periodic.evaluations,
        "seconds": round(periodic.seconds, 1),
        "share_of_training_time": round(share, 4),
        "best_top1": periodic.best_top1,
        "best_step": periodic.best_step,
        "best_checkpoint": str(best) if periodic.best_step is not None else None,
    }


def save_run_checkpoint(
    run: Run, *, agree: bool = True, snapshot: bool = False, best: bool = False
) -> None:
    """Write ``latest.pt`` (rank 0 only; atomically, see :func:`save_checkpoint`).

    Every rank first checks the loss of every step since the last check and the model and
    optimizer state: nothing non-finite is written, so the last good checkpoint survives a
    divergence. ``agree``: the ranks are in step (a collective is safe); ``False`` after a
    second Ctrl-C, when each rank checks alone. ``snapshot``: also keep it as
    ``step-<step>.pt`` when ``train.keep_checkpoints`` asks for snapshots. ``best``: write
    ``best.pt`` instead (the best periodic kNN so far), leaving ``latest.pt`` as it is.

    Raises:
        UserError: a non-finite loss or state (naming the step and the last good checkpoint),
            or a checkpoint that cannot be written (full disk: the previous one is intact).
    """
    _check_loss(run, agree=agree)
    bad = nonfinite_tensors(
        state_tensors(run.model.state_dict(), "model.")
        + state_tensors(run.optimizer.state_dict()["state"], "optimizer.")
    )
    if bad:
        names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise _diverged(run, f"the weights hold NaN or infinity after step {run.step} ({names})")
    if best:
        if distributed.is_main():
            _write_checkpoint(run, run.best_path)
        return
    if distributed.is_main():
        _write_checkpoint(run, run.checkpoint_path)
        if snapshot and run.cfg.train.keep_checkpoints:
            keep_snapshot(run.checkpoint_path, run.step, run.cfg.train.keep_checkpoints)
    run.saved_step = run.step  # on every rank: they all take the same decisions from it


def _write_checkpoint(run: Run, path: Path) -> None:
    """Save the run's state to ``path``; a failed write names the intact last one."""
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
        "periodic_knn": None if run.periodic_knn is None else run.periodic_knn.state(),
    }
    try:
        save_checkpoint(state, path)
    except WriteFailed as err:
        then = "start again" if run.saved_step is None else "continue with --resume"
        raise UserError(f"{err}; {_last_good(run)}; once it can be written, {then}") from None


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
    objective_scale: float = OBJECTIVE_SCALES["official"],
) -> tuple[Tensor, Tensor]:
    """One optimisation step on a batch of view pairs; ``(loss, proj_std)`` of this process.

    Both are detached. The loss (the logged one) is NT-Xent's mean over the 2B anchors; the
    gradient is that of ``objective_scale`` times it: by default the official objective, twice
    the mean (see :data:`simclr.losses.OBJECTIVE_SCALES`). ``proj_std`` is
    :func:`simclr.health.projection_spread` of the 2B projections (near 0: collapse).

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
    scaler.scale(objective_scale * loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), projection_spread(torch.cat([z1, z2]))


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


def _training_parts(
    model: SimCLR,
    cfg: Config,
    device: torch.device,
    precision: str,
    memory_format: torch.memory_format,
) -> tuple[SimCLR, nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The model in its training form, the module the loop calls, the optimizer and scaler.

    Under DDP batch norm becomes global (same parameters, same state keys) and the model is
    wrapped; ``train.compile`` compiles the called module in place, so ``model`` and its
    checkpoint keys stay as they are.
    """
    world = distributed.world_size()
    if world > 1 and cfg.train.sync_batchnorm:
        model = use_global_batchnorm(model, device.type)
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
    run.warmup_steps = warmup
    lr = lr_at(run.step, total_steps, warmup, run.peak_lr, run.peak_lr * optim.min_lr_fraction)
    set_lr(run.optimizer, lr)
    return lr, total_steps


def _train_step(run: Run, batch: Batch, length: int, lr: float) -> tuple[Tensor, Tensor]:
    """Draw this step's views, take one optimisation step and count it; ``(loss, proj_std)``."""
    seed = run.cfg.train.seed
    run.views.manual_seed(view_seed(seed, run.step, run.rank))
    set_progress = getattr(run.views, "set_progress", None)  # optional: progressive resolution
    if set_progress is not None:
        set_progress(run.budget.progress(run.step, run.elapsed))
    # the model's own randomness (dropout: SimCSE's noise for text) as well, so a resumed run
    # repeats it and every rank draws its own
    torch.manual_seed(derive_seed(seed, run.step, run.rank, 1))
    view1, view2 = run.views(*(t[:length].to(run.device, non_blocking=True) for t in batch))
    micro = run.cfg.train.micro_batch_size  # the same step, one micro-batch's activations held
    step = partial(micro_batch_step, micro_batch_size=micro) if micro else training_step
    loss, spread = step(
        run.train_model,
        view1,
        view2,
        run.criterion,
        run.optimizer,
        run.scaler,
        autocast=autocast_dtype(run.precision),
        memory_format=run.memory_format,
        objective_scale=OBJECTIVE_SCALES[run.cfg.train.objective],
    )
    run.step += 1
    return loss, spread


def _agree_on_time(run: Run, clock: StepClock, stop: StopRequest) -> bool:
    """Agree with the other ranks on the clock, the step time and a stop; True to stop."""
    clock.step_done(run.step)
    elapsed, seconds_per_step, stopping = distributed.agree_max(
        [clock.elapsed(), clock.seconds_per_step(run.step) or -1.0, float(stop.is_set())]
    )
    run.elapsed = elapsed
    run.seconds_per_step = seconds_per_step if seconds_per_step > 0 else None
    return bool(stopping)


def _log_record(
    run: Run, loss: Tensor, spread: Tensor, lr: float, total_steps: int, window: ThroughputWindow
) -> dict[str, Any]:
    """The ``metrics.jsonl`` record of this step (loss and ``proj_std`` averaged over ranks).

    Raises:
        UserError: the loss is no longer finite.
    """
    run.loss = distributed.mean_over_ranks(loss.item())
    proj_std = distributed.mean_over_ranks(spread.item())
    if not math.isfinite(run.loss):
        raise UserError(
            f"loss became {run.loss} at step {run.step}; lower optim.lr or use train.precision=fp32"
        )
    rate, wait_fraction = window.close(run.step, run.cfg.train.batch_size)
    # the side of views that change it over training (the image views' progressive resolution)
    view_size = getattr(run.views, "size", None) if hasattr(run.views, "set_progress") else None
    return {
        "step": run.step,
        "epoch": run.step / run.budget.steps_per_epoch,
        "loss": run.loss,
        "proj_std": round(proj_std, 5),
        "lr": lr,
        "images_per_s": round(rate, 1),
        "data_wait": round(wait_fraction, 4),
        "elapsed_s": round(run.elapsed, 2),
        "planned_steps": total_steps,
        **({"view_size": view_size} if isinstance(view_size, int) else {}),
    }


def _note_loss(run: Run, loss: Tensor) -> None:
    """Remember, on the device, the first step whose loss is not finite (no host sync)."""
    flag = run.nonfinite_step
    flag.masked_fill_(torch.isfinite(loss).logical_not() & (flag < 0), run.step)


def _check_loss(run: Run, *, agree: bool = True) -> None:
    """Raise if a step since the start had a non-finite loss (on any rank when ``agree``).

    The one host read of the flag :func:`_note_loss` keeps; called at log steps and before
    every checkpoint, where the loop syncs anyway.
    """
    first = float(run.nonfinite_step.item())
    if agree and run.world > 1:  # the earliest over ranks
        first = -distributed.agree_max([-first if first >= 0 else -math.inf])[0]
    if 0 <= first < math.inf:
        raise _diverged(run, f"the loss became non-finite at step {int(first)}")


def _diverged(run: Run, what: str) -> UserError:
    """The error of a run whose loss or weights stopped being finite."""
    if run.saved_step is None:
        advice = "no checkpoint was written before it: start again with a lower optim.lr"
    else:
        advice = (
            f"nothing non-finite was saved; {_last_good(run)}: continue from it with --resume "
            "and a lower optim.lr (--lr)"
        )
    return UserError(f"{what}; {advice} (or train.precision=fp32)")


def _last_good(run: Run) -> str:
    """Where the last good checkpoint is, for error messages."""
    if run.saved_step is None:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {run.checkpoint_path} (step {run.saved_step}), intact"


def _loader_died_of_stop(err: RuntimeError, stop: StopRequest) -> bool:
    """A loader worker killed by the stop signal itself, before it could ignore it."""
    return stop.is_set() and "DataLoader worker" in str(err)


def _restore(target: Any, state: dict[str, Any], key: str, run_dir: Path) -> None:
    """Load ``state[key]`` into an optimizer or scaler; a mismatch is the user's config."""
    try:
        target.load_state_dict(state[key])
    except (RuntimeError, ValueError, KeyError) as err:
        path = run_dir / "checkpoints" / LATEST
        raise UserError(f"cannot resume {path} with this config: {first_line(err)}") from None
