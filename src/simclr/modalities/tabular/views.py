"""SCARF views of table rows (Bahri et al. 2022, arXiv 2106.15147), batched.

For every row a random subset of ``round(corruption x D)`` of its D features is replaced by
draws from those features' empirical marginal distributions; the two views of a row are two
independent corruptions.

The marginal draws come from the batch itself: a corrupted cell takes the value of the same
column in a random row of the batch. Why the batch rather than a stored copy of the training
columns: the loop's batches are uniform samples of the training rows (a fresh permutation each
epoch; under DDP, each process's part of it), so a batch column *is* a sample of that column's
marginal; the batch is already on the device, so no copy of the table has to live in the view
module (or follow it to the GPU, or into checkpoints); and categorical codes stay valid codes.
The price is a coarser marginal for tiny batches, and a cell may draw its own row (probability
1/B), which leaves it as it was. Rows are corrupted in their encoded form (standardised numbers,
category codes), the same as corrupting the raw values since the encoding is per column.

The ops are split as the other modalities' are: :func:`sample_scarf` draws the per-row
parameters, :func:`scarf_corrupt` applies them (a pure function, so a test can compare the
batched result with one row at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from simclr.modalities.base import SeededViews


@dataclass(frozen=True)
class ScarfParams:
    """Which cells of each row are replaced, and from which row of the pool.

    Shape:
        ``mask`` bool ``[B, D]`` with exactly :func:`corrupted_count` ``True`` per row;
        ``donors`` int64 ``[B, D]`` in ``[0, P)``, rows of the pool.
    """

    mask: Tensor
    donors: Tensor


def corrupted_count(width: int, corruption: float) -> int:
    """Features replaced per row: ``round(corruption x width)``, at most ``width``."""
    return min(width, round(corruption * width))


def sample_scarf(
    rows: int,
    width: int,
    pool_size: int,
    corruption: float,
    generator: torch.Generator,
    device: torch.device,
) -> ScarfParams:
    """Draw the corrupted cells of ``rows`` rows and the pool row each one takes its value from.

    The corrupted features of a row are a uniform random subset of size
    :func:`corrupted_count` (the ``k`` highest of ``width`` uniform scores).
    """
    count = corrupted_count(width, corruption)
    scores = torch.rand((rows, width), generator=generator, device=device)
    chosen = scores.topk(count, dim=1).indices
    mask = torch.zeros((rows, width), dtype=torch.bool, device=device).scatter_(1, chosen, True)
    donors = torch.randint(0, pool_size, (rows, width), generator=generator, device=device)
    return ScarfParams(mask, donors)


def scarf_corrupt(rows: Tensor, pool: Tensor, params: ScarfParams) -> Tensor:
    """``rows`` with each masked cell replaced by the same column of its donor row in ``pool``.

    Shape:
        rows ``[B, D]``, pool ``[P, D]`` -> ``[B, D]``, dtype and device of ``rows``.
    """
    drawn = pool.gather(0, params.donors)  # drawn[i, j] = pool[donors[i, j], j]
    return torch.where(params.mask, drawn.to(rows.dtype), rows)


class ScarfViews(SeededViews):
    """Two independent SCARF corruptions of every row of a batch, drawing from the batch.

    Args:
        corruption: Fraction of each row's features replaced (``tabular.corruption``).
        seed: Seed of the generator (the loop reseeds it every step).

    Shape:
        ``forward(inputs [B, D], lengths [B])`` -> two ``[B, D]`` views, dtype and device kept.
        ``lengths`` (the full width for tables) is accepted for the common batch form and unused.
    """

    def __init__(self, corruption: float, seed: int = 0) -> None:
        super().__init__(seed)
        if not 0 <= corruption < 1:
            raise ValueError(f"corruption must be in [0, 1), got {corruption}")
        self.corruption = float(corruption)

    def extra_repr(self) -> str:
        """The recipe, shown by ``print(module)``."""
        return f"corruption={self.corruption}, seed={self.seed}"

    def sample(self, inputs: Tensor) -> ScarfParams:
        """Parameters of one view of every row of ``inputs``, drawn from the batch."""
        rows, width = inputs.shape
        generator = self.generator(inputs.device)
        return sample_scarf(rows, width, rows, self.corruption, generator, inputs.device)

    def forward(self, inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Two views: ``scarf_corrupt`` of the batch, with two independent draws."""
        if inputs.dim() != 2:
            raise ValueError(f"expected rows [B, D], got shape {tuple(inputs.shape)}")
        first, second = self.sample(inputs), self.sample(inputs)
        return scarf_corrupt(inputs, inputs, first), scarf_corrupt(inputs, inputs, second)
