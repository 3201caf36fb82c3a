"""Run logs: one JSON object per logged step in ``metrics.jsonl``, mirrored to TensorBoard."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

from simclr.checkpoint import WriteFailed, write_text_atomic

METRICS = "metrics.jsonl"


class MetricsLog:
    """Append-only metrics of a run folder (``metrics.jsonl`` and ``tensorboard/``).

    ``purge_step``: the first step this log writes after a resume; TensorBoard hides the
    events of a killed run from that step on (``metrics.jsonl`` is cut by
    :func:`truncate_metrics`), so no step is shown twice.

    A write that fails (a full disk) raises :class:`WriteFailed`, one line, also for the
    TensorBoard events, which a background thread writes: its error is kept (instead of a
    thread traceback) and raised by the next :meth:`write`.
    """

    def __init__(
        self, run_dir: Path, *, tensorboard: bool = True, purge_step: int | None = None
    ) -> None:
        self.path = run_dir / METRICS
        try:
            self._handle = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        except OSError as err:
            raise WriteFailed(self.path, err) from None
        self._writer: Any = None
        self._tensorboard = run_dir / "tensorboard"
        self._tensorboard_error: OSError | None = None
        self._previous_hook = threading.excepthook
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            threading.excepthook = self._thread_failed
            self._writer = SummaryWriter(str(self._tensorboard), purge_step=purge_step)

    def _thread_failed(self, args: Any) -> None:
        """Keep the error of TensorBoard's writer thread; other threads report as before."""
        failed = type(args.thread).__name__ == "_AsyncWriterThread"
        if failed and isinstance(args.exc_value, OSError):
            self._tensorboard_error = args.exc_value
            return
        self._previous_hook(args)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; numeric fields other than ``step`` also go to TensorBoard.

        Raises:
            WriteFailed: the line cannot be written (full disk...); earlier lines are kept (a
                torn last line is skipped by :func:`read_metrics`).
        """
        try:
            self._handle.write(json.dumps(record) + "\n")
        except OSError as err:
            raise WriteFailed(self.path, err, kept="the lines written before are kept") from None
        if self._writer is None:
            return
        try:
            if self._tensorboard_error is not None:
                raise self._tensorboard_error
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"pretrain/{key}", value, record["step"])
        except OSError as err:
            kept = "the events written before are kept"
            raise WriteFailed(self._tensorboard, err, kept=kept) from None

    def close(self) -> None:
        """Flush and close both outputs (a flush failing on a full disk is not raised again)."""
        with contextlib.suppress(OSError):
            self._handle.close()
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            threading.excepthook = self._previous_hook
            self._writer = None


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
