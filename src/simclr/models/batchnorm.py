"""Global batch norm: training statistics from the batch of every process (the paper's global BN).

SimCLR normalises with the mean and variance of the *global* batch ("we aggregate BN mean and
variance over all devices during the training", section 3 of the paper): with per-process
statistics, the model can cheat the contrastive task by spotting which process a sample came
from. On CUDA this is :class:`torch.nn.SyncBatchNorm`. PyTorch's SyncBatchNorm refuses CPU
tensors, so on CPU (gloo) the layers become :class:`GlobalBatchNorm`, written here with the same
maths: each process sends its per-channel count, mean and sum of squared deviations (one
differentiable all-gather per layer) and they are combined with Chan's parallel formula, which
stays accurate where ``E[x^2] - E[x]^2`` would cancel.
"""

from __future__ import annotations

from typing import TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from simclr import distributed

__all__ = ["GlobalBatchNorm", "use_global_batchnorm"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class GlobalBatchNorm(_BatchNorm):
    """Batch norm of ``[B, C, ...]`` inputs whose training statistics span all processes.

    Without a process group (or in eval mode) it is plain :class:`torch.nn.BatchNorm2d` maths.
    In training mode under a process group with K > 1 processes, the mean and (biased) variance
    used to normalise are those of the concatenation of the K local batches, gradients included;
    the running variance is updated with the unbiased global variance, as PyTorch does.

    Args:
        num_features: Channels C.
        eps: Added to the variance.
        momentum: Running-statistics update factor (``None``: cumulative average).
        affine: Learn a per-channel scale and shift.
        track_running_stats: Keep running statistics for eval mode.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        """Any ``[B, C, ...]`` input: this one layer serves the backbone and the head."""
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (got {input.dim()})")

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` with global batch statistics (training) or running ones (eval)."""
        if not self.training or distributed.world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        reduce_dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)  # broadcasts over batch and space
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # bf16 -> float32
        count = x.numel() // channels
        mean = x.mean(reduce_dims)  # (C,)
        squared_deviations = (x - mean.view(shape)).square().sum(reduce_dims)  # (C,)
        local = torch.cat([mean, squared_deviations, mean.new_full((1,), float(count))])
        stats = distributed.all_gather_with_grad(local.unsqueeze(0))  # (K, 2C + 1)
        means, deviations, counts = stats[:, :channels], stats[:, channels:-1], stats[:, -1:]
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total  # (C,)
        global_m2 = (deviations + counts * (means - global_mean).square()).sum(0)  # (C,)
        variance = global_m2 / total  # biased, as batch norm normalises with

        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(global_mean, global_m2, total)
        y = (x - global_mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, m2: Tensor, total: Tensor) -> None:
        """Move the running statistics towards the global ones (unbiased variance, as torch)."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        tracked = float(self.num_batches_tracked)
        factor = 1.0 / tracked if self.momentum is None else self.momentum
        unbiased = m2 / (total - 1).clamp(min=1)
        self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)


def use_global_batchnorm(module: ModuleT, device_type: str) -> ModuleT:
    """Turn every batch-norm layer of ``module`` into a global one, for ``device_type``.

    CUDA gets :class:`torch.nn.SyncBatchNorm`; CPU gets :class:`GlobalBatchNorm`. Parameters and
    buffers are shared with the old layers (not copied), so an optimizer built afterwards, a
    frozen bias and the state-dict keys are all unchanged.

    Returns:
        ``module`` with its layers replaced (or the new layer if ``module`` itself is one).
    """
    if device_type == "cuda":
        return cast(ModuleT, nn.SyncBatchNorm.convert_sync_batchnorm(module))
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        layer = GlobalBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        if module.affine:
            layer.weight = module.weight
            layer.bias = module.bias
        layer.running_mean = module.running_mean
        layer.running_var = module.running_var
        layer.num_batches_tracked = module.num_batches_tracked
        layer.train(module.training)
        return cast(ModuleT, layer)
    for name, child in module.named_children():
        module.add_module(name, use_global_batchnorm(child, device_type))
    return module
