"""Thin helpers around :mod:`torch.distributed` that are no-ops without a process group.

Everything here works in a plain single-process run (no ``init_process_group``): the rank is 0,
the world size is 1 and the gathers return their input. Under ``torchrun`` / DDP the gathers
collect one tensor from every process and concatenate them along dimension 0, in rank order.

All processes must call a gather with tensors of the same shape (use ``drop_last=True`` in the
data loader so the last batch is not smaller on some ranks), and all processes must run the
backward pass of :func:`all_gather_with_grad`, since it contains a collective too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "is_initialized",
    "is_main",
    "rank",
    "world_size",
]


def is_initialized() -> bool:
    """Whether :mod:`torch.distributed` is built in and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 without a process group."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and always in a single-process run): the process that logs and saves."""
    return rank() == 0


def _gather(x: Tensor) -> list[Tensor]:
    """``all_gather`` into a fresh list, one tensor per rank (``x`` must be the same shape)."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return parts


class _AllGatherWithGrad(torch.autograd.Function):
    """Differentiable all-gather.

    Forward: ``cat([x_0, ..., x_{K-1}])`` over the K ranks. Every rank then computes its own loss
    from the gathered tensor, so the gradient of the *sum* of the K losses with respect to
    ``x_r`` is the sum over ranks of each rank's incoming gradient, sliced at rank r. Backward
    therefore all-reduces (sums) the incoming gradient and returns this rank's slice. Leaving out
    the sum (returning only the local slice) drops every other rank's contribution.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rank = rank()
        ctx.rows = x.shape[0]
        return torch.cat(_gather(x), dim=0)  # (K*N, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # (K*N, ...); all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]  # (N, ...)


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the autograd graph.

    The backward pass sums the gradients that all ranks send to the gathered tensor and gives
    each rank the slice that belongs to its own ``x``. If each rank's loss is a mean over its
    local samples and DDP averages parameter gradients over K ranks, the result is the gradient
    of the mean of the K losses, so K processes with batch B match one process with batch K*B.

    Args:
        x: this rank's tensor, ``[N, ...]``; the same shape on every rank.

    Returns:
        ``[K*N, ...]``, rank 0's rows first. Without a process group (or with one process),
        ``x`` itself.
    """
    if world_size() == 1:
        return x
    out = _AllGatherWithGrad.apply(x)
    assert isinstance(out, Tensor)
    return out


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, detached from the autograd graph.

    Args:
        x: this rank's tensor, ``[N, ...]``; the same shape on every rank.

    Returns:
        ``[K*N, ...]``, rank 0's rows first, without gradient. Without a process group (or with
        one process), ``x.detach()`` (no copy), so the result never carries gradient.
    """
    if world_size() == 1:
        return x.detach()
    with torch.no_grad():
        return torch.cat(_gather(x.detach()), dim=0)
