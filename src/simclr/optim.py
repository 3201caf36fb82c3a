"""Optimizers and the learning-rate schedule of SimCLR.

SimCLR trains with LARS (You et al. 2017, arXiv 1708.03888), a learning rate scaled with the
batch size (``0.3 x B / 256``, or ``0.075 x sqrt(B)`` for small batches), 10 epochs of linear
warmup and a cosine decay without restarts; biases and batch-norm parameters get neither weight
decay nor the LARS adaptation.

The schedule is a pure function of the global step (:func:`lr_at`), set before every optimizer
step with :func:`set_lr`; stepping a cosine per epoch over a wrong period gives several cycles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from simclr.config import OptimConfig
from simclr.errors import UserError

__all__ = [
    "LARS",
    "build_optimizer",
    "lr_at",
    "param_groups",
    "scaled_lr",
    "set_lr",
    "warmup_steps_for",
]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), in the variant of the SimCLR code.

    For every parameter tensor w with gradient g, in a group with learning rate lr, momentum m,
    weight decay wd and trust coefficient eta::

        d = g + wd * w               # weight decay joins the gradient
        ratio = eta * ||w|| / ||d||  # 1 when ||w|| or ||d|| is 0
        v = m * v + lr * ratio * d   # momentum after the scaling
        w = w - v                    # w - (m * v + lr * ratio * d) with nesterov

    This is the "classic momentum" LARS of the official SimCLR implementation, chosen so that the
    paper's hyperparameters (lr 0.3 x B / 256, wd 1e-6, eta 0.001) mean the same thing here. It
    differs from the formula in You et al., ``eta * ||w|| / (||g|| + wd * ||w||)``, only in the
    denominator, ``||g + wd w||`` instead of ``||g|| + wd ||w||``: equal when wd = 0 or when g
    and w are parallel, never larger otherwise (triangle inequality), and practically the same
    at SimCLR's wd = 1e-6. Because the learning rate and the
    ratio are inside the momentum buffer, a change of lr (warmup, cosine) only applies to new
    contributions, as in the reference code; PyTorch's SGD applies the current lr to the whole
    buffer instead.

    Groups with ``lars_exclude=True`` (biases and normalisation parameters, see
    :func:`param_groups`) skip both the weight decay and the adaptation: they are updated by
    plain SGD with momentum, ``v = m * v + lr * g; w = w - v``.

    Args:
        params: parameters or parameter groups (dicts; a group may set ``lr``, ``momentum``,
            ``weight_decay``, ``trust_coefficient``, ``nesterov`` and ``lars_exclude``).
        lr: learning rate, >= 0.
        momentum: in [0, 1); SimCLR uses 0.9.
        weight_decay: >= 0, added to the gradient (L2), before the trust ratio.
        trust_coefficient: eta > 0; SimCLR uses 0.001.
        nesterov: Nesterov momentum (needs momentum > 0).
        lars_exclude: default for groups that do not set it.

    Raises:
        ValueError: for an argument out of range.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        nesterov: bool = False,
        lars_exclude: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "nesterov": nesterov,
            "lars_exclude": lars_exclude,
        }
        _check_lars_group(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, filling defaults, and validate its hyperparameters."""
        super().add_param_group(param_group)
        _check_lars_group(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step.

        Args:
            closure: optional function that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            momentum = float(group["momentum"])
            weight_decay = float(group["weight_decay"])
            eta = float(group["trust_coefficient"])
            nesterov = bool(group["nesterov"])
            exclude = bool(group["lars_exclude"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                if exclude:
                    update = grad.mul(lr)
                else:
                    if weight_decay != 0:
                        grad = grad.add(p, alpha=weight_decay)
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    # A tensor expression, so no device-to-host synchronisation per parameter.
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    update = grad.mul(ratio * lr)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = update.clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(update)
                    update = buf.mul(momentum).add_(update) if nesterov else buf
                p.sub_(update)
        return loss


def _check_lars_group(group: dict[str, Any]) -> None:
    lr, momentum = group["lr"], group["momentum"]
    weight_decay, eta = group["weight_decay"], group["trust_coefficient"]
    if isinstance(lr, Tensor) or not lr >= 0:
        raise ValueError(f"LARS lr must be a float >= 0 (got {lr})")
    if not 0 <= momentum < 1:
        raise ValueError(f"LARS momentum must be in [0, 1) (got {momentum})")
    if not weight_decay >= 0:
        raise ValueError(f"LARS weight_decay must be >= 0 (got {weight_decay})")
    if not eta > 0:
        raise ValueError(f"LARS trust_coefficient must be > 0 (got {eta})")
    if group["nesterov"] and momentum == 0:
        raise ValueError("LARS nesterov momentum needs momentum > 0")


def param_groups(
    model: nn.Module, weight_decay: float, *, exclude: Iterable[nn.Parameter] = ()
) -> list[dict[str, Any]]:
    """Split the trainable parameters into a weight-decay group and a no-decay group.

    Parameters with at most one dimension (biases, batch-norm and layer-norm scales and shifts)
    go into a group with ``weight_decay=0`` and ``lars_exclude=True`` (no LARS adaptation), as in
    SimCLR; so do the parameters in ``exclude``. The others (conv and linear weights) get
    ``weight_decay`` and ``lars_exclude=False``. Parameters with ``requires_grad=False`` are
    left out, and so are empty groups. Each group has a ``name`` (``"decay"`` or
    ``"no_decay"``) for logging.

    Args:
        model: the module to optimise.
        weight_decay: decay of the multi-dimensional weights, >= 0.
        exclude: parameters that get neither weight decay nor the adaptation, whatever their
            shape: the new classifier of fine-tuning and linear evaluation (the official code's
            ``head_supervised``; zero-initialised, its LARS trust ratio would be about
            ``eta * ||w|| / ||g|| = 0`` at first and tiny after, so it would barely train).

    Returns:
        Parameter groups for any ``torch.optim`` optimizer (other optimizers ignore
        ``lars_exclude``).
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0 (got {weight_decay})")
    excluded = {id(param) for param in exclude}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or id(param) in excluded else decay).append(param)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append(
            {"params": decay, "weight_decay": weight_decay, "lars_exclude": False, "name": "decay"}
        )
    if no_decay:
        groups.append(
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True, "name": "no_decay"}
        )
    return groups


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """The learning rate for a batch size under a scaling rule.

    Args:
        base_lr: the configured learning rate.
        batch_size: the global batch size (all processes together), >= 1.
        rule: ``"linear"`` (``base_lr * batch_size / 256``, the paper's 0.3 x B / 256),
            ``"sqrt"`` (``base_lr * sqrt(batch_size)``, the paper's 0.075 x sqrt(B) for small
            batches) or ``"none"`` (``base_lr``).

    Raises:
        ValueError: for an unknown rule or a batch size below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown learning-rate scaling rule {rule!r}; choose linear, sqrt or none")


def build_optimizer(
    model: nn.Module,
    cfg: OptimConfig,
    batch_size: int,
    *,
    exclude: Iterable[nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """The optimizer named in ``cfg`` over :func:`param_groups` of ``model``.

    ``lars`` is :class:`LARS` (momentum, trust coefficient); ``sgd`` is PyTorch SGD with
    ``momentum`` (Nesterov with ``cfg.nesterov``); ``adam`` / ``adamw`` use ``betas`` (Adam's
    weight decay is L2 in the gradient, AdamW's is decoupled). Biases and normalisation parameters
    never get weight decay. Every group starts at the peak learning rate ``scaled_lr(cfg.lr,
    batch_size, cfg.lr_scaling)``, also stored as ``group["peak_lr"]``; the training loop sets the
    lr of each step with ``set_lr(optimizer, lr_at(step, ..., peak_lr=group["peak_lr"], ...))``.

    Args:
        model: the module to optimise.
        cfg: the ``optim`` section of the configuration.
        batch_size: the global batch size, for the learning-rate scaling.
        exclude: parameters without weight decay and LARS adaptation (see :func:`param_groups`).

    Raises:
        UserError: for an unknown optimizer name or scaling rule, or a model without trainable
            parameters.
    """
    try:
        peak = scaled_lr(cfg.lr, batch_size, cfg.lr_scaling)
    except ValueError as err:
        raise UserError(f"optim: {err}") from None
    groups = param_groups(model, cfg.weight_decay, exclude=exclude)
    if not groups:
        raise UserError("the model has no trainable parameters to optimise")
    for group in groups:
        group["peak_lr"] = peak
    name = cfg.name.lower()
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    optimizer: torch.optim.Optimizer
    if name == "lars":
        optimizer = LARS(
            groups,
            lr=peak,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            trust_coefficient=cfg.trust_coefficient,
            nesterov=cfg.nesterov,
        )
    elif name == "sgd":
        optimizer = torch.optim.SGD(
            groups,
            lr=peak,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    elif name == "adam":
        optimizer = torch.optim.Adam(groups, lr=peak, betas=betas, weight_decay=cfg.weight_decay)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=peak, betas=betas, weight_decay=cfg.weight_decay)
    else:
        raise UserError(f"unknown optimizer {cfg.name!r}; choose lars, sgd, adam or adamw")
    return optimizer


def lr_at(
    step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0
) -> float:
    """The learning rate of a global step: linear warmup, then one cosine down to ``min_lr``.

    During warmup (``step < warmup_steps``) the rate is ``peak_lr * (step + 1) / warmup_steps``,
    so step 0 already moves and the last warmup step is at the peak. Then it follows
    ``min_lr + (peak_lr - min_lr) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)``: the peak at the end of warmup,
    halfway at the middle of the decay, ``min_lr`` at ``total_steps`` and constant afterwards.
    A pure function of the global step, so resuming or changing the epoch length cannot restart
    the cycle.

    Args:
        step: global optimizer step, counted from 0.
        total_steps: the length of the run in steps, >= 1.
        warmup_steps: in [0, total_steps].
        peak_lr: the rate after warmup.
        min_lr: the rate at the end of the cosine.

    Raises:
        ValueError: for a negative step or inconsistent lengths.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1 (got {total_steps})")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}] (got {warmup_steps})")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup length in steps: ``round(warmup_epochs * steps_per_epoch)``, at most a tenth.

    The cap (``total_steps // 10``) keeps short runs, such as a few epochs on a CPU with the
    paper's 10 warmup epochs, from spending their whole budget warming up: the cosine always
    gets at least 90% of the steps.

    Raises:
        ValueError: for negative arguments.
    """
    if warmup_epochs < 0 or steps_per_epoch < 0 or total_steps < 0:
        raise ValueError(
            "warmup_epochs, steps_per_epoch and total_steps must be >= 0 (got "
            f"{warmup_epochs}, {steps_per_epoch}, {total_steps})"
        )
    return min(round(warmup_epochs * steps_per_epoch), total_steps // 10)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
