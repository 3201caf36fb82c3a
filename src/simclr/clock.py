"""Time in a training loop: the budget, the step clock and the throughput window.

Both loops (pretraining in :mod:`simclr.train`, the classifier trainer of :mod:`simclr.evaluate`)
read time only through :func:`now`, so tests fake it by replacing ``simclr.clock.now``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from simclr.errors import UserError

TIMING_WARMUP_STEPS = 3
"""Steps excluded from the step-time estimate (allocator and oneDNN/cuDNN warm-up)."""


def now() -> float:
    """Seconds on a monotonic clock (the one place the loops read time)."""
    return time.perf_counter()


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

    def progress(self, step: int, elapsed: float) -> float:
        """How far training is, 0 to 1: of the steps or of the time, whichever ends it first."""
        by_time = 0.0 if self.max_time is None else elapsed / self.max_time
        return min(1.0, max(step / self.step_limit, by_time))

    def done(self, step: int, elapsed: float) -> bool:
        """True at the first step past any budget."""
        over_time = self.max_time is not None and elapsed >= self.max_time
        return step >= self.step_limit or over_time


class StepClock:
    """Training time and the time per step, carried over a resume.

    ``elapsed()`` adds this process's time to the time of the run before it was resumed.
    The time per step is measured from the :data:`TIMING_WARMUP_STEPS`-th step of this process
    on; until then the saved estimate of the interrupted run is used, so a resumed run's
    time-based schedule continues where it was instead of jumping back.

    Args:
        step: The step training starts (or resumes) at.
        elapsed_before: Seconds trained before this process started.
        seconds_per_step: The saved estimate (``None`` for a fresh run).
    """

    def __init__(
        self, step: int = 0, elapsed_before: float = 0.0, seconds_per_step: float | None = None
    ) -> None:
        self.started = now()
        self.first_step = step
        self.elapsed_before = elapsed_before
        self.saved_seconds_per_step = seconds_per_step
        self._timing_start: tuple[int, float] | None = None  # (step, time) after the warm-up
        self.excluded = 0.0  # seconds of this process spent outside training (evaluations)

    def elapsed(self) -> float:
        """Seconds of training, including those before a resume, without excluded time."""
        return self.elapsed_before + now() - self.started - self.excluded

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` just spent on something else (an evaluation) out of training time.

        The time budget, the step-time estimate and so the schedule then count training alone.
        """
        self.excluded += seconds

    def step_done(self, step: int) -> None:
        """Record that ``step`` steps are done (starts the measurement after the warm-up)."""
        if step - self.first_step == TIMING_WARMUP_STEPS:
            self._timing_start = (step, now() - self.excluded)

    def seconds_per_step(self, step: int) -> float | None:
        """Measured seconds per step at ``step``, or the saved estimate before it is measured."""
        if self._timing_start is None or step <= self._timing_start[0]:
            return self.saved_seconds_per_step
        begin_step, begin_time = self._timing_start
        return (now() - self.excluded - begin_time) / (step - begin_step)


class ThroughputWindow:
    """Items per second and the share of time spent waiting for data, per logging window."""

    def __init__(self, step: int = 0) -> None:
        self.step, self.started = step, now()
        self.data_wait = 0.0  # seconds of this window spent waiting for the next batch
        self._fetch_started = self.started

    def fetching(self) -> None:
        """The loop starts waiting for the next batch."""
        self._fetch_started = now()

    def fetched(self) -> None:
        """The next batch arrived: the wait since :meth:`fetching` counts as starvation."""
        self.data_wait += now() - self._fetch_started

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` spent outside training (an evaluation) out of this window."""
        self.started += seconds

    def close(self, step: int, items_per_step: int) -> tuple[float, float]:
        """``(items per second, fraction of the window spent waiting)``; starts a new window."""
        end = now()
        seconds = max(end - self.started, 1e-9)
        rate = items_per_step * (step - self.step) / seconds
        wait_fraction = self.data_wait / seconds  # waits are disjoint parts of the window
        self.step, self.started, self.data_wait = step, end, 0.0
        return rate, wait_fraction


@dataclass(frozen=True)
class Interval:
    """Every ``steps`` optimizer steps, or every ``seconds`` of training time (exactly one set)."""

    steps: int | None = None
    seconds: float | None = None

    def due(self, step: int, elapsed: float, last: tuple[int, float]) -> bool:
        """True when a full interval has passed since ``last`` = ``(step, elapsed)``."""
        if self.steps is not None:
            return step // self.steps > last[0] // self.steps
        assert self.seconds is not None
        return elapsed // self.seconds > last[1] // self.seconds


_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_interval(text: str, what: str) -> Interval:
    """``"500"`` (steps) or a duration ``"90s"``, ``"5m"``, ``"1.5h"``.

    Raises:
        UserError: anything else, or a non-positive interval; ``what`` names the setting.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|m|min|h)?\s*", str(text))
    if match is None or float(match[1]) <= 0 or (match[2] is None and "." in match[1]):
        raise UserError(
            f"{what} must be a whole number of steps (500) or a duration (90s, 5m, 1h); "
            f"got {text!r}"
        )
    if match[2] is None:
        return Interval(steps=int(match[1]))
    return Interval(seconds=float(match[1]) * _UNITS[match[2]])
