"""The NT-Xent contrastive loss of SimCLR (Chen et al. 2020, arXiv 2002.05709, section 2.1).

:func:`nt_xent` defines it; :class:`NTXentLoss` is the same as a module. The backward pass is
written by hand (:class:`_BlockedContrastiveCrossEntropy`): no gradient matrix the size of the
similarity matrix is ever formed.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr import distributed

__all__ = ["NTXentLoss", "nt_xent"]


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """A context that disables autocast on ``device`` so the similarity matmul stays float32."""
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if available is None or available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


OBJECTIVE_SCALES = {"official": 2.0, "mean": 1.0}
"""``train.objective`` -> the factor on :func:`nt_xent`'s per-anchor mean whose gradient the
training step takes. ``official``: ``loss_a + loss_b`` of google-research/simclr
``objective.py`` (one cross-entropy per direction, each a mean over the N anchors of that
direction), twice the mean; ``mean``: the mean itself."""


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, *, gather: bool = True) -> Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy), the contrastive loss of SimCLR.

    Row i of ``z1`` and row i of ``z2`` are two views of one item. Each of the 2N projections is
    an anchor i whose positive j is the other view of its item and whose negatives are the other
    2(N - 1) projections:

        l(i, j) = -log  exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)

    with sim the cosine similarity and t the temperature. The value is the mean of l over the 2N
    anchors, the paper's "all positive pairs, both (i, j) and (j, i)". Google's reference code
    optimises twice this (two cross-entropies, each a mean over N): the training loop
    (:func:`simclr.train.training_step`) back-propagates that official objective by default
    (``train.objective``, :data:`OBJECTIVE_SCALES`), so that the paper's learning rates and
    weight decay mean what they mean there, and logs this per-anchor mean.

    Projections are L2-normalised in float32 (at least) with autocast off, self-similarities
    masked (no value, no gradient): finite for bf16/fp16 inputs and at t = 0.01.

    With ``gather`` and a process group of K > 1 processes, the normalised projections of all
    processes are gathered with gradient (:func:`simclr.distributed.all_gather_with_grad`): each
    anchor sees the 2KN - 1 other projections of the global batch, and the value is the mean over
    this rank's 2N anchors, so with DDP's gradient averaging K processes with batch N equal one
    process with batch KN. Every rank must pass the same N.

    Raises:
        ValueError: a non-positive temperature, or inputs that are not two equal ``[N, D]``
            matrices with N >= 1.

    Shape:
        z1, z2 ``[N, D]`` -> a scalar (float32, or float64 for float64 inputs).
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
        # normalised per view: autograd then keeps the caller's z1 and z2, not a new copy
        anchors = torch.cat([F.normalize(z.to(dtype), dim=1) for z in (z1, z2)])  # (2N, D)

        k = distributed.world_size() if gather else 1
        offset = distributed.rank() * n if k > 1 else 0  # this rank's rows in each view block
        m = k * n  # global batch size
        # (2M, D): every rank's view-1 block, then every rank's view-2 block; in one process,
        # the anchors themselves
        candidates = anchors
        if k > 1:
            candidates = torch.cat(
                [
                    distributed.all_gather_with_grad(anchors[:n]),  # (M, D)
                    distributed.all_gather_with_grad(anchors[n:]),  # (M, D)
                ]
            )

        local = torch.arange(n, device=anchors.device) + offset  # (N,) global row of each item
        self_cols = torch.cat([local, local + m])  # (2N,) column of each anchor itself
        pos_cols = torch.cat([local + m, local])  # (2N,) column of each anchor's positive
        loss: Tensor = _BlockedContrastiveCrossEntropy.apply(
            anchors, candidates, pos_cols, self_cols, 1.0 / temperature
        )
        return loss


BLOCK_ELEMENTS = 1 << 22
"""Largest similarity block held at once (16 MiB of float32): rows per block = this / 2M."""

UNSHIFTED_MAX_SCALE = 40.0
"""Largest 1/t for which the exponentials are taken of the logits as they are.

Cosine logits lie in [-1/t, 1/t]; for 1/t <= 40, ``exp`` of them lies in [4e-18, 2e17], normal
float32 numbers whose row sums cannot overflow, so the usual shift by each row's max (one more
pass over the matrix to find it, and one to subtract it) is not needed. Lower temperatures
(t < 0.025) are shifted.
"""


class _BlockedContrastiveCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the rows of ``scale * anchors @ candidates.T``, self masked.

    With P the row softmax of the logits and e_pos the one-hot of each anchor's positive, the
    gradient of the logits is ``(P - e_pos) / rows``, so the input gradients are
    ``P @ candidates - candidates[pos]`` and ``P.T @ anchors`` less the anchors added back at
    their positives' rows: no (2N, 2M) gradient matrix is ever formed.

    When the whole (2N, 2M) matrix fits in :data:`BLOCK_ELEMENTS`, its exponentials
    ``E = exp(logits)`` (shifted for low temperatures), computed in place over the logits, are
    kept for the backward pass (one matrix in all) with each row's ``w = 1 / sum(E)``: the
    softmax ``P = diag(w) E`` is never divided out, ``w`` goes on the (2N, D) operands and
    results instead. In one process ``E`` is symmetric, so ``P + P.T`` is formed tile by tile
    for a single product (:func:`_symmetric_product`). Larger batches are processed in row
    blocks of at most that size: the forward pass keeps only each row's log-sum-exp, and the
    backward pass recomputes each block's softmax from it. Peak memory is then one block, and
    the exp passes run while the block is in cache.
    """

    @staticmethod
    def forward(
        ctx: Any,
        anchors: Tensor,
        candidates: Tensor,
        pos_cols: Tensor,
        self_cols: Tensor,
        scale: float,
    ) -> Tensor:
        rows = anchors.shape[0]
        lse = anchors.new_empty(rows)  # (2N,) log-sum-exp of each anchor's logits
        positive = anchors.new_empty(rows)  # (2N,) each anchor's positive logit
        blocks = _row_blocks(rows, candidates.shape[0])
        for block in blocks:
            logits = _masked_logits(anchors, candidates, self_cols, scale, block)
            positive[block] = logits.gather(1, pos_cols[block, None]).squeeze(1)
            if scale <= UNSHIFTED_MAX_SCALE:
                total = logits.exp_().sum(dim=1)  # (R,); the logits become E
                lse[block] = total.log()
            else:  # shifted by each row's max: exp never overflows or underflows to all zeros
                shift = logits.amax(dim=1, keepdim=True)  # (R, 1)
                total = logits.sub_(shift).exp_().sum(dim=1)
                lse[block] = shift.squeeze(1) + total.log()
        if len(blocks) == 1:  # keep E and its row weights 1 / sum(E) for the backward pass
            kept, weights = logits, total.reciprocal_()
        else:
            kept = weights = anchors.new_empty(0)
        ctx.save_for_backward(anchors, candidates, pos_cols, self_cols, lse, kept, weights)
        ctx.scale = scale
        # one process, unshifted: the candidates are the anchors themselves (one tensor, passed
        # twice) and E is symmetric
        ctx.symmetric = candidates is anchors and len(blocks) == 1 and scale <= UNSHIFTED_MAX_SCALE
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor, Tensor | None, None, None, None]:
        if torch.is_grad_enabled():  # create_graph=True: the result would miss 2nd-order terms
            raise RuntimeError(
                "nt_xent does not support double backward (create_graph=True): its backward "
                "is written by hand for memory"
            )
        anchors, candidates, pos_cols, self_cols, lse, kept, weights = ctx.saved_tensors
        rows = anchors.shape[0]
        factor = grad_loss * ctx.scale / rows  # d loss / d logits carries 1 / rows; logits, 1/t
        with _autocast_off(anchors.device):  # a backward called under autocast stays float32
            if ctx.symmetric:
                # Both gradients land on the same tensor: (P + P.T) @ A with P = diag(w) E, and
                # the positives' terms -A[pos] (as anchor) and -A[pos] (as positive of pos: pos
                # is its own inverse). One matrix product's work instead of two.
                grad = _symmetric_product(kept, weights, anchors)  # (2N, D)
                grad.sub_(anchors[pos_cols], alpha=2.0)
                return grad.mul_(factor), None, None, None, None
            grad_anchors = torch.empty_like(anchors)
            grad_candidates = torch.zeros_like(candidates)
            for block in _row_blocks(rows, candidates.shape[0]):
                weighted = anchors[block]  # (R, D)
                if kept.numel():  # E, whose rows still carry the weights w = 1 / sum(E)
                    exps, row_weights = kept, weights[:, None]
                    weighted = weighted * row_weights
                else:  # recompute this block's softmax from the saved log-sum-exp
                    exps = _masked_logits(anchors, candidates, self_cols, ctx.scale, block)
                    exps.sub_(lse[block, None]).exp_()  # exp(-inf) = 0 on the self column
                    row_weights = None
                positives = pos_cols[block]
                grad_block = torch.mm(exps, candidates, out=grad_anchors[block])  # (R, D)
                if row_weights is not None:
                    grad_block.mul_(row_weights)
                grad_block.sub_(candidates[positives])
                grad_candidates.addmm_(exps.T, weighted)  # (2M, D)
                grad_candidates.index_add_(0, positives, anchors[block], alpha=-1.0)
        return grad_anchors.mul_(factor), grad_candidates.mul_(factor), None, None, None


SYMMETRIC_TILE = 256
"""Side of the square tiles of :func:`_symmetric_product` (256 KiB of float32)."""


def _symmetric_product(exps: Tensor, weights: Tensor, anchors: Tensor) -> Tensor:
    """``(diag(w) E + E.T diag(w)) @ A`` for a symmetric ``E``: ``(E * (w_i + w_j)) @ A``.

    ``E = exp(A A.T / t)`` is symmetric up to rounding, so each tile of the upper triangle
    serves both of its halves' products: one matrix product's work instead of two. The
    weighted tiles are tile-sized temporaries; no second (2N, 2N) matrix is made and ``E`` is
    left unchanged.
    """
    side = exps.shape[0]
    out = torch.zeros_like(anchors)
    for top in range(0, side, SYMMETRIC_TILE):
        rows = slice(top, top + SYMMETRIC_TILE)
        for left in range(top, side, SYMMETRIC_TILE):
            cols = slice(left, left + SYMMETRIC_TILE)
            block = exps[rows, cols]
            tile = (block * weights[rows, None]).addcmul_(block, weights[None, cols])
            out[rows].addmm_(tile, anchors[cols])
            if left != top:
                out[cols].addmm_(tile.T, anchors[rows])
    return out


def _row_blocks(rows: int, columns: int) -> list[slice]:
    """Consecutive anchor rows, each block holding at most BLOCK_ELEMENTS logits."""
    step = max(1, BLOCK_ELEMENTS // max(columns, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _masked_logits(
    anchors: Tensor, candidates: Tensor, self_cols: Tensor, scale: float, block: slice
) -> Tensor:
    """``scale`` x similarities of the anchors in ``block`` to all candidates; self at -inf."""
    logits = torch.addmm(  # alpha folds 1/t into the product: no (2N, D) copy, no extra pass
        anchors.new_zeros(()), anchors[block], candidates.T, beta=0.0, alpha=scale
    )  # (R, 2M)
    # mask k == i: no value, no gradient
    if candidates is anchors:  # one process: each anchor's own column is on a diagonal
        logits.diagonal(offset=block.start).fill_(float("-inf"))
    else:
        local = torch.arange(logits.shape[0], device=logits.device)
        logits[local, self_cols[block]] = float("-inf")
    return logits


class NTXentLoss(nn.Module):
    """:func:`nt_xent` (its definition, convention and shapes) as a module.

    Args:
        temperature: t > 0 (the paper uses 0.1 for large batches, 0.5 for CIFAR-10).
        gather_distributed: draw negatives from all processes when running distributed.

    Raises:
        ValueError: for a non-positive temperature.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature})")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """NT-Xent of the positive pairs (z1[i], z2[i]): ``[N, D]`` twice -> a scalar."""
        return nt_xent(z1, z2, self.temperature, gather=self.gather_distributed)

    def extra_repr(self) -> str:
        """The hyperparameters, shown by ``print(module)``."""
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
