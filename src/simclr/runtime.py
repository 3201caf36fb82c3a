"""Where and in which precision the math runs: one code path for CPU and CUDA; seeds; signals."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util  # registers its exit handler before ours (atexit runs LIFO)
import signal
import threading
from typing import Any

import numpy as np
import torch

from simclr.errors import UserError

log = logging.getLogger("simclr")


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = torch.device("meta")  # rejected below with the same message
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` picks the fastest mixed precision the hardware computes natively.

    CUDA: bf16 autocast where the GPU has bf16 units (Ampere and newer), else fp16 autocast with
    a gradient scaler (V100, T4). CPU: bf16 on CPUs with AVX512-BF16 or AMX, where oneDNN runs
    bf16 convolutions about 2x faster than fp32 (see docs/benchmarks.md); fp32 elsewhere, where
    bf16 is emulated and slower.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "cpu" and _cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name, ``None`` for fp32 (autocast off)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from several integers (run seed, epoch, step, rank, ...).

    Hashing (NumPy's ``SeedSequence``) instead of arithmetic: no overflow for large seeds, and
    nearby tuples such as (seed, step + 1) and (seed + 1, step) get unrelated seeds.
    """
    words = [len(parts)]  # the count first: (s, e) and (s, e, 0) must differ
    for part in parts:
        value = part % 2**64
        words += [value & 0xFFFFFFFF, value >> 32]  # fixed width: no two tuples share words
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader: its workers ignore SIGINT and SIGTERM.

    A scheduler stops a job by signalling its whole process group, and Ctrl-C reaches the
    whole foreground group: the main process then finishes its step and saves a checkpoint,
    which needs its loader workers alive (a worker killed by the signal made the loader raise
    "DataLoader worker ... killed by signal" instead). Workers still end with their loader,
    or on their own when the main process is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    """At exit, SIGKILL the loader workers still alive (a loader left unfinished).

    multiprocessing ends daemonic children at exit with SIGTERM and then waits for them; loader
    workers ignore SIGTERM (:func:`ignore_stop_signals`), so that wait would never end.
    """
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_leftover_workers)


class StopRequest:
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
