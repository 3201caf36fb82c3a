"""The run folder: its lock, its files and the checks before a run starts or resumes in it.

A run folder holds ``config.yaml``, ``environment.json``, ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/latest.pt`` and ``.lock`` (see the README). Rank 0 alone reads and writes it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from simclr.checkpoint import (
    LATEST,
    check_resumable,
    load_checkpoint,
    remove_temporaries,
    write_text_atomic,
)
from simclr.config import Config, from_dict, to_dict, to_yaml
from simclr.errors import UserError
from simclr.metrics import METRICS, truncate_metrics

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("simclr")

LOCK = ".lock"
"""The lock file of a run folder (see :class:`RunLock`)."""


RESUMABLE_CHANGES = (
    "train.max_steps",
    "train.max_time",
    "train.epochs",
    "train.checkpoint_every",
    "train.log_every",
    "train.progress",
    "train.loggers",
    "train.device",
    "train.precision",
    "train.compile",
    "train.micro_batch_size",
    "optim.lr",
    "optim.lr_scaling",
    "optim.warmup_epochs",
    "optim.min_lr_fraction",
    "data.num_workers",
    "data.in_memory",
    "eval.",
)
"""Settings a resumed run may change (a prefix ending in ``.`` covers its section): budgets,
logging, where and in which precision it runs, loader processes, the learning-rate schedule
(a lower ``optim.lr`` after a divergence), micro-batches (memory; they change only how batch
norm groups the rows) and the end-of-run kNN. Every other setting defines
what is trained (architecture, views, batch size, temperature, seed, data, the optimizer and its
state's hyperparameters), and changing it on ``--resume`` is refused."""


def read_resume_state(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint of ``run_dir`` to resume from, or ``None`` when there is none yet."""
    path = run_dir / "checkpoints" / LATEST
    if not path.exists():
        return None
    state = load_checkpoint(path)
    check_resumable(state, path)
    return state


def prepare_run_dir(
    run_dir: Path, cfg: Config, resume: bool, state: dict[str, Any] | None, lock: RunLock
) -> None:
    """Create and lock the folder, clear a killed save's leftovers, refuse what is unsafe.

    Refused: a folder another run holds, an existing run (or one stopped before its first
    checkpoint) without ``resume``, and a resume whose config changes what is trained.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    try:
        for folder in (run_dir, run_dir / "checkpoints"):  # a save killed by SIGKILL
            for leftover in remove_temporaries(folder):
                log.info("removed %s, left by an interrupted save", leftover)
        checkpoint = run_dir / "checkpoints" / LATEST
        if checkpoint.exists() and not resume:
            raise UserError(
                f"{run_dir} already holds a run; continue it with --resume or choose another --out"
            )
        if not checkpoint.exists() and not resume and _has_metrics(run_dir):
            raise UserError(
                f"{run_dir} holds a run that stopped before its first checkpoint ({METRICS}, no "
                "checkpoint); start it again with --resume (its metrics restart) or choose "
                "another --out"
            )
        if state is not None:
            check_resume_config(cfg, state, checkpoint)
    except BaseException:
        lock.release()
        raise


def write_run_files(
    run_dir: Path,
    cfg: Config,
    resume: bool,
    state: dict[str, Any] | None,
    device: torch.device,
    precision: str,
) -> bool:
    """Once a resume is accepted: cut the metrics back to it, write the config and environment.

    Returns whether earlier metrics were there (TensorBoard then hides their later steps).
    """
    restarted = False
    if resume and _has_metrics(run_dir):
        restarted = True
        if state is None:
            truncate_metrics(run_dir, 0)
            log.warning(
                "%s had no checkpoint: training starts from step 0 and %s starts afresh",
                run_dir,
                METRICS,
            )
        else:
            removed = truncate_metrics(run_dir, int(state["step"]))
            if removed:
                log.info(
                    "removed %d %s record(s) after step %d: those steps are trained again",
                    removed,
                    METRICS,
                    state["step"],
                )
    write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    _write_environment(run_dir, device, precision)
    return restarted


def _has_metrics(run_dir: Path) -> bool:
    path = run_dir / METRICS
    return path.exists() and path.stat().st_size > 0


def check_resume_config(cfg: Config, state: dict[str, Any], checkpoint: Path) -> None:
    """Refuse a resumed config that changes what is trained; warn about allowed changes.

    See :data:`RESUMABLE_CHANGES`.

    Raises:
        UserError: one line naming each refused setting, its saved and its new value.
    """
    saved = _flatten(to_dict(from_dict(state["config"])))
    new = _flatten(to_dict(cfg))
    if saved.get("data.modality") == "auto":  # saved before modalities existed: images
        saved["data.modality"] = "image"
    for values in (saved, new):
        values["data.path"] = _absolute(values.get("data.path"))
    changes = {
        key: f"{key} {saved.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(saved.keys() | new.keys())
        if saved.get(key) != new.get(key)
    }
    allowed = [
        change
        for key, change in changes.items()
        if any(
            key == name or (name.endswith(".") and key.startswith(name))
            for name in RESUMABLE_CHANGES
        )
    ]
    refused = [change for change in changes.values() if change not in allowed]
    if refused:
        raise UserError(
            f"cannot resume {checkpoint}: changed settings would train another run: "
            f"{', '.join(refused)}; only budgets, logging, device, precision, workers, the "
            "learning-rate schedule, micro-batches and eval.* may change on --resume (use "
            "another --out for a new run)"
        )
    if allowed:
        log.warning("resuming with changed settings: %s", ", ".join(allowed))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _absolute(spec: object) -> object:
    """A data path as an absolute path when it names a file or folder (``./x`` equals ``x``)."""
    if not isinstance(spec, str):
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


class RunLock:
    """An exclusive lock on a run folder: ``RUN/.lock``, held by rank 0 for the run's life.

    ``flock`` on the open file: the operating system releases it when the process ends,
    however it ends, so a killed run never leaves a stale lock. The file names the holder
    (``PID 1234 on host``) for the one-line refusal of a second writer.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._handle: Any = None

    def acquire(self) -> None:
        """Take the lock, or refuse with one line naming its holder.

        Raises:
            UserError: another process holds the lock.
        """
        if fcntl is None or self._handle is not None:
            return
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip() or "a process"
            handle.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"{self.path.parent} is in use by another simclr run ({holder}); wait for "
                    "it to end or choose another --out"
                ) from None
            log.warning("cannot lock %s (%s): make sure no other run writes there", self.path, err)
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Let the lock go (closing the file releases it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


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
    write_text_atomic(run_dir / "environment.json", json.dumps(info, indent=2) + "\n")
