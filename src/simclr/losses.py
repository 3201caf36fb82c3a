"""The NT-Xent contrastive loss of SimCLR (Chen et al. 2020, arXiv 2002.05709, section 2.1).

For a batch of N images, the two augmented views give 2N projections. Each of them is an anchor
whose positive is the other view of the same image and whose negatives are the other 2(N - 1)
projections:

    l(i, j) = -log  exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)

with sim the cosine similarity and t the temperature. The loss is the mean of l over all 2N
anchors (the paper: "The final loss is computed across all positive pairs, both (i, j) and
(j, i), in a mini-batch").
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from simclr import distributed

__all__ = ["NTXentLoss", "nt_xent"]


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """A context that disables autocast on ``device`` so the similarity matmul stays float32."""
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if available is None or available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, *, gather: bool = True) -> Tensor:
    """NT-Xent (normalized temperature-scaled cross-entropy) loss of SimCLR.

    "The final loss is computed across all positive pairs, both (i, j) and (j, i), in a
    mini-batch." (Chen et al. 2020, section 2.1.) Row i of ``z1`` and row i of ``z2`` are the
    positive pair; every other projection in the batch is a negative.

    Convention: the returned value is the *mean* of l(i, j) over all 2N anchors, exactly the
    paper's formula. The official TensorFlow code reports twice this number, because it adds two
    cross-entropies (view 1 as anchors, view 2 as anchors) that are each averaged over N. Its
    gradients are therefore twice ours; the minimum, log(1) = 0, and the ranking of runs agree.

    The projections are L2-normalised in (at least) float32 with autocast turned off, so bf16 or
    fp16 inputs from a mixed-precision forward pass are stable. The self-similarity of each anchor
    is masked with ``-inf`` (it contributes neither to the value nor to the gradient), and the
    per-anchor loss is a log-sum-exp cross-entropy, finite even at t = 0.01.

    Distributed: when ``gather`` is True and a process group with K > 1 processes is
    initialised, the normalised projections of all processes are gathered (with gradient, see
    :func:`simclr.distributed.all_gather_with_grad`), so every anchor sees the 2KN - 1 other
    projections of the global batch. The loss is the mean over this rank's 2N anchors; with DDP
    averaging the gradients, K processes with batch N equal one process with batch KN. Every rank
    must pass the same N.

    Args:
        z1: projections of the first views.
        z2: projections of the second views.
        temperature: t > 0.
        gather: use the negatives of all processes when running distributed.

    Returns:
        A scalar tensor (float32, or float64 for float64 inputs).

    Raises:
        ValueError: for a non-positive temperature or inputs that are not two equal ``[N, D]``
            matrices with N >= 1.

    Shape:
        - z1: ``(N, D)``
        - z2: ``(N, D)``
        - Output: ``()``
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 1:
        raise ValueError(
            f"z1 and z2 must both be [N, D] with N >= 1 (got {list(z1.shape)} and {list(z2.shape)})"
        )
    n = z1.shape[0]
    dtype = torch.promote_types(z1.dtype, torch.float32)  # float32, or float64 for doubles
    with _autocast_off(z1.device):
        z1 = F.normalize(z1.to(dtype), dim=1)  # (N, D)
        z2 = F.normalize(z2.to(dtype), dim=1)  # (N, D)
        anchors = torch.cat([z1, z2], dim=0)  # (2N, D), this rank's anchors

        k = distributed.world_size() if gather else 1
        if k > 1:
            offset = distributed.rank() * n  # where this rank's rows start in each view block
            z1 = distributed.all_gather_with_grad(z1)  # (KN, D)
            z2 = distributed.all_gather_with_grad(z2)  # (KN, D)
        else:
            offset = 0
        m = k * n  # global batch size
        candidates = torch.cat([z1, z2], dim=0)  # (2M, D): view-1 block, then view-2 block

        local = torch.arange(n, device=anchors.device) + offset  # (N,) global row of each image
        self_cols = torch.cat([local, local + m])  # (2N,) column of each anchor itself
        pos_cols = torch.cat([local + m, local])  # (2N,) column of each anchor's positive
        # Divide the (2N, D) anchors rather than the (2N, 2M) product.
        loss: Tensor = _BlockedContrastiveCrossEntropy.apply(
            anchors / temperature, candidates, pos_cols, self_cols
        )
        return loss


BLOCK_ELEMENTS = 1 << 22
"""Largest similarity block held at once (16 MiB of float32): rows per block = this / 2M."""


class _BlockedContrastiveCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``anchors @ candidates.T`` rows, self column masked, in row blocks.

    Forward keeps only each row's log-sum-exp; backward recomputes each block of logits and
    turns it into the gradient ``softmax - onehot(positive)`` in place. Peak memory is one
    block of at most :data:`BLOCK_ELEMENTS` similarities instead of the (2N, 2M) matrix, its
    log-softmax and its gradient that autograd would keep, and each block's exp/log passes
    run while the block is in cache.
    """

    @staticmethod
    def forward(
        ctx: Any, anchors: Tensor, candidates: Tensor, pos_cols: Tensor, self_cols: Tensor
    ) -> Tensor:
        rows = anchors.shape[0]
        lse = anchors.new_empty(rows)  # (2N,) log-sum-exp of each anchor's logits
        positive = anchors.new_empty(rows)  # (2N,) each anchor's positive logit
        for block in _row_blocks(rows, candidates.shape[0]):
            logits = _masked_logits(anchors, candidates, self_cols, block)  # (R, 2M)
            lse[block] = torch.logsumexp(logits, dim=1)
            positive[block] = logits.gather(1, pos_cols[block, None]).squeeze(1)
        ctx.save_for_backward(anchors, candidates, pos_cols, self_cols, lse)
        return (lse - positive).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor, Tensor, None, None]:
        anchors, candidates, pos_cols, self_cols, lse = ctx.saved_tensors
        rows = anchors.shape[0]
        scale = grad_loss / rows
        grad_anchors = torch.empty_like(anchors)
        grad_candidates = torch.zeros_like(candidates)
        with _autocast_off(anchors.device):  # a backward called under autocast stays float32
            for block in _row_blocks(rows, candidates.shape[0]):
                logits = _masked_logits(anchors, candidates, self_cols, block)  # (R, 2M)
                probs = logits.sub_(lse[block, None]).exp_()  # softmax; exp(-inf) = 0 on self
                local = torch.arange(len(probs), device=probs.device)
                probs[local, pos_cols[block]] -= 1.0  # d(lse - positive) / d logits
                probs.mul_(scale)
                grad_anchors[block] = probs @ candidates  # (R, D)
                grad_candidates.addmm_(probs.T, anchors[block])  # (2M, D)
        return grad_anchors, grad_candidates, None, None


def _row_blocks(rows: int, columns: int) -> list[slice]:
    """Consecutive anchor rows, each block holding at most BLOCK_ELEMENTS logits."""
    step = max(1, BLOCK_ELEMENTS // max(columns, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _masked_logits(anchors: Tensor, candidates: Tensor, self_cols: Tensor, block: slice) -> Tensor:
    """Logits of the anchors in ``block`` against all candidates, each anchor's self at -inf."""
    logits = anchors[block] @ candidates.T  # (R, 2M)
    local = torch.arange(logits.shape[0], device=logits.device)
    logits[local, self_cols[block]] = float("-inf")  # mask k == i: no value, no gradient
    return logits


class NTXentLoss(nn.Module):
    """NT-Xent loss of SimCLR as a module; see :func:`nt_xent` for the details.

    "The final loss is computed across all positive pairs, both (i, j) and (j, i), in a
    mini-batch." (Chen et al. 2020, section 2.1.) The value is the mean over the 2N anchors
    (half of what the official TensorFlow code reports).

    Args:
        temperature: t > 0 (the paper uses 0.1 for large batches, 0.5 for CIFAR-10).
        gather_distributed: draw negatives from all processes when running distributed.

    Raises:
        ValueError: for a non-positive temperature.

    Shape:
        - z1: ``(N, D)``, projections of the first views
        - z2: ``(N, D)``, projections of the second views (row i pairs with row i of ``z1``)
        - Output: ``()``
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature})")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The mean NT-Xent loss of the positive pairs (z1[i], z2[i])."""
        return nt_xent(z1, z2, self.temperature, gather=self.gather_distributed)

    def extra_repr(self) -> str:
        """The hyperparameters, shown by ``print(module)``."""
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
