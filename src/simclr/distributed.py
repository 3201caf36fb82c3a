"""Thin helpers around :mod:`torch.distributed` that are no-ops without a process group.

Everything here works in a plain single-process run (no ``init_process_group``): the rank is 0,
the world size is 1 and the gathers return their input. Under ``torchrun`` / DDP the gathers
collect one tensor from every process and concatenate them along dimension 0, in rank order.
:func:`process_group_from_env` joins the job that ``torchrun`` describes in the environment.

All processes must call a gather with tensors of the same shape (use ``drop_last=True`` in the
data loader so the last batch is not smaller on some ranks), and all processes must run the
backward pass of :func:`all_gather_with_grad`, since it contains a collective too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from simclr.errors import UserError

__all__ = [
    "agree_max",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "broadcast_buffers",
    "broadcast_object",
    "gather_uneven_to_main",
    "is_initialized",
    "is_main",
    "local_rank",
    "mean_over_ranks",
    "sum_over_ranks",
    "process_group_from_env",
    "rank",
    "run_on_main",
    "world_size",
]

COLLECTIVE_TIMEOUT = timedelta(minutes=30)
"""How long a rank waits for the others (writing a large checkpoint on a slow disk included)."""

T = TypeVar("T")


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


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` from torchrun); 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def process_group_from_env() -> Iterator[None]:
    """Join the job that ``torchrun`` (or SLURM + torchrun) describes in the environment.

    Does nothing when there is no ``WORLD_SIZE`` in the environment (a plain ``python`` run) or
    when a process group already exists (the caller made one). Otherwise it initialises the
    default group from ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``: gloo for
    CPU tensors and, when CUDA is used, NCCL for CUDA tensors, with this process on GPU
    ``LOCAL_RANK`` (NCCL connects lazily, so a CPU-only run on a GPU machine does not use it).
    The group is destroyed on exit.
    """
    if is_initialized() or "WORLD_SIZE" not in os.environ:
        yield
        return
    use_cuda = torch.cuda.is_available() and local_rank() < torch.cuda.device_count()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    # torchrun keeps one key-value store across restarts: without a fresh prefix per start of
    # the job, restarted processes can read the dead processes' addresses and fail to connect.
    # The generation is counted in the store itself, so every machine agrees on it (a
    # machine's own restart count does not grow when another machine's worker died).
    store, rank, world = next(dist.rendezvous("env://", timeout=COLLECTIVE_TIMEOUT))
    generation = (store.add("simclr/arrivals", 1) - 1) // world
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"simclr/generation{generation}/", store),
        rank=rank,
        world_size=world,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small set-up data such as a run folder)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn: Callable[[], T]) -> T:
    """Call ``fn`` on rank 0 only and give its result, or its :class:`UserError`, to every rank.

    For what only rank 0 may do (read a checkpoint, write the run folder): if it fails there
    (:class:`UserError` or :class:`OSError`), every rank raises the same one-line
    :class:`UserError` instead of waiting in the next collective.
    """
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except UserError as err:
            error = str(err)
        except OSError as err:  # a folder that cannot be written, a disk that is full
            error = f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
    result, error = broadcast_object((result, error))
    if error is not None:
        raise UserError(error)
    return result  # type: ignore[no-any-return]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def _collective_device() -> torch.device:
    """Where small tensors for a collective must live: CUDA for an NCCL-only group, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_max(values: Sequence[float]) -> list[float]:
    """The element-wise maximum of ``values`` over all ranks, so every rank takes one decision.

    Used for the clock of a time budget and the usable batch length: a rank that stopped or
    shrank its batch alone would leave the others waiting in a collective.
    """
    if world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(v) for v in tensor.tolist()]


def mean_over_ranks(value: float) -> float:
    """The mean of a per-rank number (such as the local loss) over all ranks."""
    return sum_over_ranks(value) / world_size()


def sum_over_ranks(value: float) -> float:
    """The sum of a per-rank number (such as a count of skipped files) over all ranks."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


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


def gather_uneven_to_main(x: Tensor) -> Tensor | None:
    """Every rank's rows of ``x`` on rank 0 (``None`` elsewhere); the row counts may differ.

    Rows are padded to the longest rank's count for the collective and trimmed afterwards.
    Only rank 0 holds the whole result, so K processes do not each keep K copies.

    Args:
        x: this rank's ``[n_r, ...]`` tensor (same trailing shape and dtype on every rank).

    Returns:
        On rank 0, ``[sum_r n_r, ...]`` with rank 0's rows first; ``None`` on the other ranks.
        Without a process group, ``x.detach()``.
    """
    if world_size() == 1:
        return x.detach()
    device = _collective_device()
    counts = [int(c) for c in _gather(torch.tensor([len(x)], device=device))]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in counts] if is_main() else None
    dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    gathered = torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])
    return gathered.to(x.device)
