"""Run logs: one JSON object per logged step in ``metrics.jsonl``, sent to the chosen trackers.

The trackers (TensorBoard by default, W&B, MLflow) are in :mod:`simclr.trackers`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simclr.checkpoint import WriteFailed, write_text_atomic
from simclr.trackers import Tracker, open_trackers

METRICS = "metrics.jsonl"


class MetricsLog:
    """Append-only metrics of a run folder: ``metrics.jsonl`` and each tracker of ``loggers``.

    ``loggers``: names from :data:`simclr.config.LOGGERS` (``train.loggers``); ``()`` writes
    ``metrics.jsonl`` alone. ``config``: the resolved config (a dict), logged to each tracker.
    ``purge_step``: the first step this log writes after a resume; TensorBoard hides the
    events of a killed run from that step on (``metrics.jsonl`` is cut by
    :func:`truncate_metrics`), so no step is shown twice. ``prefix``: the trackers' names are
    ``<prefix>/<field>`` (``pretrain/loss``).

    A write that fails (a full disk) raises :class:`WriteFailed`, one line, also for the
    TensorBoard events, which a background thread writes: its error is kept (instead of a
    thread traceback) and raised by the next :meth:`write`. A W&B or MLflow call that fails
    gives one warning and stops logging to it.

    Raises:
        UserError: a tracker cannot start (missing package, no account...); nothing is
            written then.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        loggers: Sequence[str] = ("tensorboard",),
        purge_step: int | None = None,
        config: Mapping[str, Any] | None = None,
        prefix: str = "pretrain",
    ) -> None:
        self.path = run_dir / METRICS
        self._prefix = prefix
        self._trackers: list[Tracker] = open_trackers(run_dir, loggers, purge_step=purge_step)
        try:
            self._handle = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
            if config is not None:
                for tracker in self._trackers:
                    tracker.log_config(config)
        except BaseException as err:
            self.close()
            if isinstance(err, OSError):
                raise WriteFailed(self.path, err) from None
            raise

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; numeric fields other than ``step`` also go to the trackers.

        Raises:
            WriteFailed: the line cannot be written (full disk...); earlier lines are kept (a
                torn last line is skipped by :func:`read_metrics`). Or the TensorBoard events.
        """
        try:
            self._handle.write(json.dumps(record) + "\n")
        except OSError as err:
            raise WriteFailed(self.path, err, kept="the lines written before are kept") from None
        scalars = {
            f"{self._prefix}/{key}": value
            for key, value in record.items()
            if key != "step" and isinstance(value, (int, float))
        }
        for tracker in self._trackers:
            tracker.log_scalars(record["step"], scalars)

    def close(self) -> None:
        """Flush and close every output (a flush failing on a full disk is not raised again).

        The trackers' runs end as interrupted when called while a ``KeyboardInterrupt``
        propagates (a ``finally``), as failed under another exception, else as finished.
        """
        handle = getattr(self, "_handle", None)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
        error = sys.exc_info()[0]
        if error is None:
            outcome = "finished"
        else:
            outcome = "interrupted" if issubclass(error, KeyboardInterrupt) else "failed"
        trackers, self._trackers = self._trackers, []
        for tracker in trackers:
            tracker.close(outcome)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line after a crash is ignored)."""
    records = []
    for line in (run_dir / METRICS).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(run_dir: Path, last_step: int) -> int:
    """Keep the records of ``metrics.jsonl`` up to ``last_step`` (a resumed checkpoint's step).

    The steps a killed run logged after its last checkpoint are trained again by the resumed
    run, so without this they would be logged twice. Torn lines go too. The file is rewritten
    atomically. Returns the number of records removed.
    """
    path = run_dir / METRICS
    if not path.exists():
        return 0
    kept, removed = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and step > last_step:
            removed += 1
            continue
        kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))
    return removed
