"""Exact large batches in small memory: one optimisation step in micro-batches (gradient caching).

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(arXiv 2101.06983). NT-Xent couples every row of the batch to every other, so plain gradient
accumulation would change the loss; instead :func:`micro_batch_step` takes three passes:

1. embed every micro-batch under ``torch.no_grad()``: the projections z of the whole batch,
   without activations;
2. NT-Xent over all of z (detached leaves; negatives gathered from every process as in the
   ordinary step) and its gradient dL/dz, scaled as the ordinary step scales it;
3. run each micro-batch again with a graph and back-propagate its slice of dL/dz into the
   parameters, accumulating their gradients; then one optimizer step.

The loss and the parameter gradients are those of the whole batch, while activations are held
for one forward at a time. Each forward is one view of ``micro_batch_size`` items (view 1 of
items ``k*m .. (k+1)*m - 1``, then view 2 of the same items), so a forward of the graph pass
holds m rows against the 2B of the ordinary step, and the two views of an item never share
batch-norm statistics.

Batch norm: each forward is normalised with its own statistics, so the step equals a
full-batch step with *ghost batch norm* over ghost batches of m rows, each holding one view of
m distinct items (the same as a full-batch step on 2B/m devices with per-device batch norm,
device (k, v) holding view v of block k). Under DDP with global batch norm a ghost batch is
view v of block k of every process (K*m rows). Running statistics move once per forward of the
graph pass (2B/m momentum updates per step, in the order above, as in gradient accumulation);
the no-grad pass leaves every buffer of the model as it found it. Without batch norm the step
equals the ordinary one.

Randomness in the model (dropout) is replayed: the RNG state (CPU, and the CUDA device's) is
saved before each forward of the no-grad pass and restored for its forward in the graph pass,
as :mod:`torch.utils.checkpoint` does, so both passes draw the same masks; afterwards the
global stream is where one pass would have left it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from simclr.health import projection_spread
from simclr.losses import OBJECTIVE_SCALES

__all__ = ["check_micro_batch", "micro_batch_step"]

RngState = tuple[Tensor, Tensor | None]
"""The CPU generator's state and the CUDA device's (``None`` off CUDA)."""


def micro_batch_step(
    model: nn.Module,
    view1: Tensor,
    view2: Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    micro_batch_size: int,
    autocast: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    objective_scale: float = OBJECTIVE_SCALES["official"],
) -> tuple[Tensor, Tensor]:
    """:func:`simclr.train.training_step` with activations held for one micro-batch at a time.

    Returns ``(loss, proj_std)``, both detached, as the ordinary step does. The loss (the
    logged one) is NT-Xent's mean over the 2B anchors; the gradient is that
    of ``objective_scale`` times it, through ``scaler`` (fp16) and under ``autocast``, as in the
    ordinary step. Under DDP ``model`` is the wrapped model: the parameter gradients are
    all-reduced once, in the last backward (the others run under ``no_sync()``). What the result
    equals with batch norm is in the module docstring.

    ``micro_batch_size`` is m >= 2 items per micro-batch (each forward is one view of m items).
    A batch that m does not divide (a batch shortened by unreadable files) is cut into
    ``B // m`` near-equal micro-batches (m to 2m - 1 items; one if B < m).

    Shape:
        view1 and view2 ``[B, ...]`` (any modality's views); row i of each is a view of item i.
        ``memory_format`` applies to 4-D views.
    """
    inputs = _forward_inputs(view1, view2, micro_batch_size, memory_format)
    device = view1.device
    precision = torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)

    # 1. the projections of every forward, without a graph; the RNG state each one started from
    states, projections = [], []
    with torch.no_grad(), _buffers_kept(model):
        for x in inputs:
            states.append(_rng_state(device))
            with precision:
                projections.append(model(x))
    after = _rng_state(device)

    # 2. the loss of the whole batch and its gradient dL/dz, cached on the leaves
    leaves = [z.detach().requires_grad_() for z in projections]  # [m, d] each
    with precision:
        loss: Tensor = criterion(torch.cat(leaves[0::2]), torch.cat(leaves[1::2]))  # (B, d) twice
    scaler.scale(objective_scale * loss).backward()

    # 3. each forward again with a graph, its cached gradient into the parameters
    optimizer.zero_grad(set_to_none=True)
    for i, (x, state, leaf) in enumerate(zip(inputs, states, leaves, strict=True)):
        last = i == len(inputs) - 1
        with _gradient_sync(model, enabled=last):
            _set_rng_state(state, device)
            with precision:
                z = model(x)
            z.backward(leaf.grad)
    _set_rng_state(after, device)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), projection_spread(torch.cat(projections))


def check_micro_batch(micro_batch_size: int, per_process: int) -> str | None:
    """Why ``micro_batch_size`` cannot cut a per-process batch of ``per_process`` items, or None.

    It must be at least 2 (batch norm needs two rows), at most the per-process batch, and
    divide it (every ghost batch the same size).
    """
    if micro_batch_size < 2:
        return f"train.micro_batch_size must be at least 2, or 0 for off (got {micro_batch_size})"
    if micro_batch_size > per_process or per_process % micro_batch_size:
        return (
            f"train.micro_batch_size {micro_batch_size} must divide the {per_process} items each "
            "process takes of a batch (train.batch_size / processes)"
        )
    return None


def _forward_inputs(
    view1: Tensor, view2: Tensor, micro_batch_size: int, memory_format: torch.memory_format
) -> list[Tensor]:
    """The inputs of the forwards, in order: view 1 of block 0, view 2 of block 0, view 1...

    The items are cut into ``B // m`` near-equal blocks (one if B < m).
    """
    blocks = max(1, len(view1) // micro_batch_size)
    inputs = []
    for part1, part2 in zip(view1.tensor_split(blocks), view2.tensor_split(blocks), strict=True):
        for x in (part1, part2):
            inputs.append(x.contiguous(memory_format=memory_format) if x.dim() == 4 else x)
    return inputs


@contextlib.contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` on exit.

    Batch-norm running statistics (and their counters) then move in the graph pass only.
    """
    saved = [(buffer, buffer.clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _gradient_sync(model: nn.Module, *, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """DDP's ``no_sync()`` unless ``enabled``: gradients are all-reduced in the last backward."""
    if enabled or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def _rng_state(device: torch.device) -> RngState:
    """The state of the generators a forward on ``device`` may draw from."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: RngState, device: torch.device) -> None:
    """Put the generators back to ``state`` (from :func:`_rng_state` on the same device)."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
