"""Is it learning? Three signs a pretraining run is wasting its time, each a one-line warning.

The pretraining loop hands every logged record to :class:`TrainingHealth`, which warns (once
per sign and run, through the ``simclr`` logger) when

- the loss sits at ln(2N - 1) after warmup: the value NT-Xent takes when every view is equally
  similar to all 2N - 1 others, that is when the network tells nothing apart;
- the projections collapse: :func:`projection_spread`, the per-dimension standard deviation of
  the L2-normalised projections (logged as ``proj_std``), falls near 0. Projections spread
  evenly over the sphere give about ``1 / sqrt(d)``; a collapsed network gives 0 (the measure
  of Chen & He 2021, "Exploring Simple Siamese Representation Learning");
- the data loader starves the step: ``data_wait``, the share of time spent waiting for the next
  batch, stays high.

Warnings never stop the run: a user may know better (a hard dataset learns slowly).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

log = logging.getLogger("simclr")

PLATEAU_FRACTION = 0.98
"""A loss at or above this fraction of ln(2N - 1) after warmup counts as not learning."""

PATIENCE_STEPS = 100
"""Loss and spread are judged from this many steps after the end of warmup on."""

COLLAPSE_FRACTION = 0.2
"""``proj_std`` below this fraction of the even spread ``1 / sqrt(d)`` counts as collapsed."""

STARVED_SHARE = 0.3
"""``data_wait`` above this share of the step time counts as a starved step ..."""

STARVED_WINDOWS = 3
"""... in this many logging windows in a row (the first window, with the loader starting, is
not counted)."""


def projection_spread(z: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension standard deviation of ``normalize(z)`` (detached).

    Shape:
        ``z``: ``[N, d]`` projections (N >= 2); returns a 0-d float32 tensor.
    """
    with torch.no_grad():
        return F.normalize(z.float(), dim=1).std(dim=0).mean()


def chance_loss(global_batch: int) -> float:
    """NT-Xent when all similarities are equal: ln(2N - 1) for a global batch of N items."""
    return math.log(2 * global_batch - 1)


@dataclass
class TrainingHealth:
    """Watches the logged records of one run and warns once about each sign of trouble.

    Args:
        global_batch: Items per optimizer step over all processes (N of ln(2N - 1)).
        projection_dim: Width d of the projections (their even spread is ``1 / sqrt(d)``).
    """

    global_batch: int
    projection_dim: int
    warned: set[str] = field(default_factory=set)
    _starved_windows: int = 0
    _windows: int = 0

    def check(self, record: dict[str, Any], warmup_steps: int) -> list[str]:
        """The warnings ``record`` raises for the first time; each is also logged.

        ``record`` is a ``metrics.jsonl`` training record; loss and spread are judged from
        :data:`PATIENCE_STEPS` after ``warmup_steps`` on.
        """
        found = []
        after_warmup = record["step"] >= warmup_steps + PATIENCE_STEPS
        chance = chance_loss(self.global_batch)
        if after_warmup and record["loss"] >= PLATEAU_FRACTION * chance:
            found.append(
                (
                    "plateau",
                    f"the loss ({record['loss']:.3f}) still sits at ln(2N-1) = {chance:.3f} "
                    f"after warmup (step {record['step']}): the network is not learning; try a "
                    "lower --lr, a higher --temperature or fp32 (--precision fp32), and look at "
                    "the views with `simclr views`",
                )
            )
        spread = record.get("proj_std")
        even = 1 / math.sqrt(self.projection_dim)
        if after_warmup and spread is not None and spread < COLLAPSE_FRACTION * even:
            found.append(
                (
                    "collapse",
                    f"the projections are collapsing: proj_std {spread:.4f} against "
                    f"{even:.4f} for an even spread (step {record['step']}); try a lower --lr, "
                    "a higher --temperature, a larger batch or stronger views",
                )
            )
        self._windows += 1
        starved = self._windows > 1 and record.get("data_wait", 0.0) > STARVED_SHARE
        self._starved_windows = self._starved_windows + 1 if starved else 0
        if self._starved_windows >= STARVED_WINDOWS:
            found.append(
                (
                    "starved",
                    f"the step waits for data {100 * record['data_wait']:.0f} % of the time: "
                    "try more loader processes (--workers), data on a faster disk, images "
                    "stored nearer the training size, or the data in memory (data.in_memory)",
                )
            )
        new = [message for key, message in found if key not in self.warned]
        self.warned.update(key for key, _ in found)
        for message in new:
            log.warning(message)
        return new
