"""Experiment trackers: where a run's curves, config and final results go besides its files.

``train.loggers`` (``--logger tensorboard,wandb,mlflow``; TensorBoard alone by default) picks
any of three trackers. Each is a plain class with the four methods of :class:`Tracker`;
:class:`simclr.metrics.MetricsLog` sends every record of ``metrics.jsonl`` (which is always
written) to each chosen one, and :func:`log_final` sends the end-of-run summary (the kNN of
``knn.json``). Only rank 0 logs.

* ``tensorboard``: events in ``run_dir/tensorboard`` (a full disk stops the run, in one line).
* ``wandb``: one Weights & Biases run per run folder; project ``WANDB_PROJECT`` (else
  ``simclr``), run name ``WANDB_NAME`` (else the folder's name), files under ``WANDB_DIR``
  (else the run folder); ``WANDB_MODE=offline`` logs without an account or network.
* ``mlflow``: one MLflow run per run folder in ``MLFLOW_TRACKING_URI`` (else MLflow's default,
  ``sqlite:///mlflow.db`` in the working folder since MLflow 3), experiment
  ``MLFLOW_EXPERIMENT_NAME`` (else ``simclr``); the config as params.

The ids of the W&B and MLflow runs are kept in ``run_dir/trackers.json``, so a resumed run
(and the final results, logged after the training loop has closed its trackers) continues
the same runs. A W&B or MLflow call that fails during training (a network outage) gives one
warning and that tracker is dropped; training goes on, ``metrics.jsonl`` has every record.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

import yaml

from simclr.checkpoint import WriteFailed, write_text_atomic
from simclr.config import LOGGERS
from simclr.errors import UserError, first_line, require

log = logging.getLogger("simclr")

TRACKERS_FILE = "trackers.json"
"""Ids of the W&B and MLflow runs of a run folder: ``{"wandb": {...}, "mlflow": {...}}``."""

DEFAULT_PROJECT = "simclr"
"""W&B project and MLflow experiment when ``WANDB_PROJECT`` / ``MLFLOW_EXPERIMENT_NAME`` are
unset: one place to compare every run; each run is named after its folder."""

OUTCOMES = ("finished", "interrupted", "failed")
"""How a tracker's run ended (:meth:`Tracker.close`)."""

_PURPOSES = {
    "wandb": "to log to Weights & Biases (--logger wandb)",
    "mlflow": "to log to MLflow (--logger mlflow)",
}
"""The trackers that need the ``trackers`` extra (each imports as its name), for :func:`require`."""

_MLFLOW_PARAM_LENGTH = 500
"""Longest MLflow param value kept (the limit of MLflow 2.x before 2.15; longer ones are cut)."""


class Tracker(Protocol):
    """What every tracker does; names are the same for all of them (``pretrain/loss``)."""

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log the numbers of one ``metrics.jsonl`` record at ``step``."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Log the resolved configuration (a nested dict of primitives)."""

    def log_summary(self, step: int, values: Mapping[str, float]) -> None:
        """Log the final results of the run (``final/...``), reached at ``step``."""

    def close(self, outcome: str = "finished") -> None:
        """Flush and end the run; ``outcome`` is one of :data:`OUTCOMES`."""


def check_trackers(names: Sequence[str]) -> None:
    """Import the packages the chosen trackers need, before the run folder is touched.

    Raises:
        UserError: a name not in :data:`simclr.config.LOGGERS`, or a missing package (one
            line ending in ``pip install "simclr-kit[trackers]"``).
    """
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
        if name in _PURPOSES:
            require(name, "trackers", _PURPOSES[name])


def open_trackers(
    run_dir: Path, names: Sequence[str], *, purge_step: int | None = None
) -> list[Tracker]:
    """Open the trackers ``names`` for the run folder ``run_dir`` (which must exist).

    A W&B or MLflow run recorded in ``trackers.json`` is continued; a new one is recorded
    there. ``purge_step``: TensorBoard hides the events of a killed run from that step on.

    Raises:
        UserError: a package is missing, or W&B / MLflow cannot start a run (no account, an
            unreachable server...).
        WriteFailed: ``trackers.json`` cannot be written.
    """
    check_trackers(names)
    saved = read_tracker_ids(run_dir)
    ids = dict(saved)
    opened: list[Tracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                opened.append(TensorBoardTracker(run_dir, purge_step=purge_step))
            elif name == "wandb":
                wandb_tracker = WandbTracker(run_dir, saved.get("wandb", {}))
                opened.append(wandb_tracker)
                ids["wandb"] = wandb_tracker.ids
            else:
                mlflow_tracker = MlflowTracker(run_dir, saved.get("mlflow", {}))
                opened.append(mlflow_tracker)
                ids["mlflow"] = mlflow_tracker.ids
        if ids != saved:
            write_text_atomic(run_dir / TRACKERS_FILE, json.dumps(ids, indent=2) + "\n")
    except BaseException:
        for tracker in opened:
            tracker.close("failed")
        raise
    return opened


def read_tracker_ids(run_dir: Path) -> dict[str, dict[str, str]]:
    """The contents of ``run_dir/trackers.json``; ``{}`` when missing or unreadable."""
    path = run_dir / TRACKERS_FILE
    try:
        ids = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring %s (%s): new tracker runs are started", path, first_line(err))
        return {}
    return ids if isinstance(ids, dict) else {}


def final_values(summary: Mapping[str, Any], prefix: str = "final") -> dict[str, float]:
    """The numbers of a pretraining summary, flattened: ``final/knn/trained/top1``...

    Strings (paths), ``None``, non-finite numbers (the loss of a run that logged no step) and
    the kNN protocol and checkpoint records are left out.
    """
    values: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            if key not in ("protocol", "checkpoint"):
                values.update(final_values(value, name))
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            values[name] = float(value)
    return values


def log_final(run_dir: Path, names: Sequence[str], summary: Mapping[str, Any]) -> None:
    """Send the end-of-run summary (``steps``, ``final_loss``, ``knn``...) to each tracker.

    The training loop has closed its trackers by then, so this opens them again on the same
    runs (``trackers.json``), logs :func:`final_values` at the last step, and closes them.
    """
    if not names:
        return
    values = final_values(summary)
    trackers = open_trackers(run_dir, names)
    outcome = "failed"
    try:
        for tracker in trackers:
            tracker.log_summary(int(summary["steps"]), values)
        outcome = "finished"
    finally:
        for tracker in trackers:
            tracker.close(outcome)


class TensorBoardTracker:
    """Events in ``run_dir/tensorboard``, written by TensorBoard's background thread.

    A write that fails (a full disk) raises :class:`WriteFailed`, one line: the thread's
    error is kept (instead of a thread traceback) and raised by the next call.
    """

    def __init__(self, run_dir: Path, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "tensorboard"
        self.error: OSError | None = None
        self._previous_hook = threading.excepthook
        threading.excepthook = self._thread_failed
        self._writer: Any = SummaryWriter(str(self.path), purge_step=purge_step)

    def _thread_failed(self, args: Any) -> None:
        """Keep the error of TensorBoard's writer thread; other threads report as before."""
        failed = type(args.thread).__name__ == "_AsyncWriterThread"
        if failed and isinstance(args.exc_value, OSError):
            self.error = args.exc_value
            return
        self._previous_hook(args)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Raise the writer thread's error, or this call's, as :class:`WriteFailed`."""
        try:
            if self.error is not None:
                raise self.error
            yield
        except OSError as err:
            raise WriteFailed(self.path, err, kept="the events written before are kept") from None

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One scalar per name, at ``step``."""
        with self._writing():
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The config as YAML in the Text tab (``config``)."""
        text = yaml.safe_dump(dict(config), sort_keys=False)
        with self._writing():
            self._writer.add_text("config", "    " + text.replace("\n", "\n    "))

    def log_summary(self, step: int, values: Mapping[str, float]) -> None:
        """Final results as scalars at the last step."""
        self.log_scalars(step, values)

    def close(self, outcome: str = "finished") -> None:
        """Flush and close (a flush failing on a full disk is not raised again)."""
        if self._writer is None:
            return
        with suppress(OSError):
            self._writer.close()
        threading.excepthook = self._previous_hook
        self._writer = None


class _Remote:
    """A tracker whose calls may fail for reasons outside the run (network, server)."""

    name = ""
    broken = False

    def _call(self, what: str, action: Callable[[], object]) -> None:
        """Run ``action``; a failure gives one warning and drops the tracker (training goes on)."""
        if self.broken:
            return
        try:
            action()
        except Exception as err:  # whatever the client raises: the run must not stop for it
            self.broken = True
            log.warning(
                "%s: %s failed (%s); logging to it stops, metrics.jsonl keeps every record",
                self.name,
                what,
                first_line(err),
            )


class WandbTracker(_Remote):
    """One Weights & Biases run per run folder, continued on resume (``resume="allow"``).

    After a resume W&B keeps its values of the steps trained again (it accepts no step below
    the last it saw); ``metrics.jsonl`` and TensorBoard have the new ones.
    """

    name = "wandb"

    def __init__(self, run_dir: Path, saved: Mapping[str, str]) -> None:
        require("wandb", "trackers", _PURPOSES["wandb"])
        import wandb

        run_id = saved.get("id")
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or saved.get("project", DEFAULT_PROJECT),
                name=os.environ.get("WANDB_NAME") or run_dir.name,
                dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
                id=run_id,
                resume="allow" if run_id else None,
                reinit="create_new",  # never log into a run of the caller's
            )
        except Exception as err:  # no API key, no network, a bad setting
            raise UserError(
                f"wandb cannot start a run: {first_line(err)} (WANDB_MODE=offline logs without "
                "an account or network)"
            ) from None
        self.ids = {"id": self.run.id, "project": self.run.project}

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """``run.log`` at ``step``; steps W&B has passed already (after a resume) are skipped."""

        def send() -> None:
            if step >= self.run.step:
                self.run.log(dict(scalars), step=step)

        self._call(f"logging step {step}", send)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """``run.config`` (values changed on resume replace the old ones)."""
        update = self.run.config.update
        self._call("logging the config", lambda: update(dict(config), allow_val_change=True))

    def log_summary(self, step: int, values: Mapping[str, float]) -> None:
        """``run.summary`` (the run's table in the W&B UI shows these)."""
        self._call("logging the final results", lambda: self.run.summary.update(dict(values)))

    def close(self, outcome: str = "finished") -> None:
        """``run.finish`` with exit code 0 (finished), 255 (interrupted) or 1 (failed)."""
        code = {"finished": 0, "interrupted": 255}.get(outcome, 1)
        self._call("finishing the run", lambda: self.run.finish(exit_code=code))


class MlflowTracker(_Remote):
    """One MLflow run per run folder, through an ``MlflowClient`` (no global active run).

    Params cannot change in MLflow: a resumed run keeps the first value of a setting changed
    on ``--resume`` (``config.yaml`` has the new one). The steps trained again after a resume
    get a second value in the metric history.
    """

    name = "mlflow"

    def __init__(self, run_dir: Path, saved: Mapping[str, str]) -> None:
        require("mlflow", "trackers", _PURPOSES["mlflow"])
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or saved.get("tracking_uri")
        try:
            self.client = MlflowClient(uri)
            uri = self.client.tracking_uri
            run_id = saved.get("run_id") if saved.get("tracking_uri") == uri else None
            if run_id is not None and self._exists(run_id):
                self.client.update_run(run_id, status="RUNNING")
            else:
                experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
                found = self.client.get_experiment_by_name(experiment)
                experiment_id = (
                    found.experiment_id if found else self.client.create_experiment(experiment)
                )
                tags = {"simclr.run_dir": str(run_dir.resolve())}
                created = self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
                run_id = created.info.run_id
        except Exception as err:  # an unreachable server, a store MLflow refuses
            raise UserError(
                f"mlflow cannot start a run in {uri or 'its default store'}: {first_line(err)}"
            ) from None
        self.run_id: str = run_id
        self.ids = {"tracking_uri": uri, "run_id": run_id}

    def _exists(self, run_id: str) -> bool:
        """Whether ``run_id`` is a live run of the store (it may have been deleted)."""
        try:
            live = self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # RESOURCE_DOES_NOT_EXIST
            live = False
        if not live:
            log.warning("mlflow run %s is gone: a new run is started", run_id)
        return live

    def _log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 500])

    def _log_params(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        params = [
            Param(key, text[:_MLFLOW_PARAM_LENGTH])
            for key, text in _flat_params(config).items()
            if key not in existing
        ]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Metrics at ``step``."""
        self._call(f"logging step {step}", lambda: self._log_metrics(step, scalars))

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Params ``section.key`` (values as JSON text); ones already set are kept."""
        self._call("logging the config", lambda: self._log_params(config))

    def log_summary(self, step: int, values: Mapping[str, float]) -> None:
        """Final results as metrics at the last step (the runs table shows the latest)."""
        self._call("logging the final results", lambda: self._log_metrics(step, values))

    def close(self, outcome: str = "finished") -> None:
        """End the run as ``FINISHED``, ``KILLED`` (interrupted) or ``FAILED``."""
        status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(outcome, "FAILED")
        self._call("ending the run", lambda: self.client.set_terminated(self.run_id, status))


def _flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"batch_size": 8}}`` -> ``{"train.batch_size": "8"}``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flat_params(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat
