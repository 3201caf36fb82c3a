"""The SimCLR v2 model zoo: ResNet-50/101/152 at widths 1x to 4x, with or without selective kernels.

The architecture is the one of the official TensorFlow code (``resnet.py`` of
google-research/simclr), written afresh for PyTorch:

* bottleneck blocks with the stride on the 3x3 convolution (as torchvision's "v1.5"), a
  projection shortcut in the first block of every stage, batch norm (eps 1e-5) after every
  convolution, and the last batch norm of every block starting with gamma = 0
  (``zero_init_residual``, on by default) so that each block starts as the identity;
* ``width`` multiplies every channel count, so the features have ``2048 x width`` dimensions;
* selective kernels (``sk_ratio > 0``, 0.0625 in SimCLR v2) change three things, as the official
  code does:

  - the 3x3 convolution of every bottleneck becomes a :class:`SelectiveKernelConv`;
  - the ImageNet stem's 7x7 convolution becomes three 3x3 convolutions (32w, 32w, 64w channels,
    the first with stride 2; "ResNet-C" of He et al. 2019, arXiv:1812.01187);
  - the projection shortcuts average-pool before a stride-1 1x1 convolution instead of striding
    the convolution ("ResNet-D"; the official code pools in the first stage too, with a 2x2
    stride-1 window, and so does this one).

Padding follows TensorFlow where it differs from PyTorch's symmetric padding: the stem's 3x3
stride-2 max-pool pads like TensorFlow's ``SAME`` (on the bottom/right for even inputs), and the
ResNet-D shortcut's average pool pads as the official code does. So the layers line up one to one
with the official checkpoints' (a converter would only need to rename and transpose tensors).
Convolutions start with the official initialiser (truncated normal, variance 1 / fan-in).

Shape:
    input ``[B, 3, H, W]`` -> output ``[B, 2048 * width]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEPTHS",
    "SK_RATIO",
    "WIDTHS",
    "ResNetV2",
    "SelectiveKernelConv",
    "V2Bottleneck",
    "truncated_normal_",
    "zoo_name",
]

DEPTHS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
"""Bottleneck blocks per stage for each depth."""
WIDTHS = (1, 2, 3, 4)
"""Width multipliers of the registered zoo (any positive integer works with :class:`ResNetV2`)."""
SK_RATIO = 0.0625
"""Reduction ratio of the selective-kernel attention in SimCLR v2 (``--sk_ratio``)."""
SK_MIN_DIM = 32
"""The attention's hidden width is never below this (``min_dim`` in the official code)."""

_TRUNCATED_NORMAL_STD = 0.87962566103423978
"""Standard deviation of a unit normal truncated to [-2, 2] (TensorFlow's truncated normal)."""


def truncated_normal_(weight: Tensor, std: float) -> Tensor:
    """Fill ``weight`` from a normal of scale ``std`` truncated to ``[-2 std, 2 std]``.

    Same distribution as :func:`torch.nn.init.trunc_normal_` (and TensorFlow's truncated
    normal), drawn by redrawing the 4.6 % of values outside: several times faster than the
    inverse-CDF method, which matters for the 795M-parameter model.
    """
    with torch.no_grad():
        if weight.device.type == "meta":
            return weight
        flat = weight.view(-1)
        flat.normal_()
        outside = (flat.abs() > 2).nonzero().squeeze(1)
        while outside.numel():
            flat[outside] = torch.randn(outside.numel(), dtype=flat.dtype, device=flat.device)
            outside = outside[flat[outside].abs() > 2]
        return flat.mul_(std).view_as(weight)


def zoo_name(depth: int, width: int, sk: bool) -> str:
    """Registry name of a zoo model, e.g. ``resnet152-3x-sk``."""
    return f"resnet{depth}-{width}x" + ("-sk" if sk else "")


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free convolution padded as the official ``Conv2dFixedPadding`` (odd kernels)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        bias=False,
    )


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *, relu: bool = True
) -> nn.Sequential:
    """Convolution, batch norm and (optionally) ReLU."""
    layers: list[nn.Module] = [
        _conv(in_channels, out_channels, kernel_size, stride),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MaxPoolSame(nn.Module):
    """Max-pooling padded as TensorFlow's ``SAME`` (the official stem's max-pool).

    The output has ``ceil(size / stride)`` rows and columns; when the padding is odd, the extra
    row/column goes on the bottom/right (PyTorch's ``padding=1`` pads both sides).
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pads(self, size: int) -> tuple[int, int]:
        out = -(-size // self.stride)
        total = max((out - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        """Pad with -inf (never the maximum), then pool without padding."""
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class AvgPool2x2(nn.Module):
    """The ResNet-D shortcut's 2x2 average pool, padded as the official code pads it.

    Stride 2: one row/column of zeros on the bottom/right, then a 2x2 stride-2 pool (for even
    sizes the padding never enters a window). Stride 1: TensorFlow's ``SAME`` pool, whose last
    row/column averages only the pixels inside the image.
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, not {stride}")
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, ceil(H / stride), ceil(W / stride)]``."""
        if self.stride == 2:
            return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 2)
        # Output k of a padding-1 pool covers inputs k-1 and k: dropping k = 0 leaves windows
        # (i, i+1), the last one half outside (excluded from the mean).
        pooled = F.avg_pool2d(x, 2, 1, padding=1, count_include_pad=False)
        return pooled[..., 1:, 1:]


class SelectiveKernelConv(nn.Module):
    """Selective-kernel 3x3 convolution (Li et al. 2019, arXiv:1903.06586), as in SimCLR v2.

    One 3x3 convolution gives ``2 x out_channels`` channels (batch norm + ReLU), read as two
    paths of ``out_channels``: the official code's split, where both paths are 3x3 (the SK
    paper's second path is a dilated 3x3). An attention picks the mixture per channel: the sum of
    the two paths is averaged over space, squeezed to ``max(out_channels * sk_ratio, 32)``
    channels (1x1 conv, batch norm, ReLU), expanded to one logit per path and channel (1x1 conv),
    and a softmax over the two paths weighs them.

    Shape:
        ``[B, in_channels, H, W]`` -> ``[B, out_channels, H / stride, W / stride]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        sk_ratio: float = SK_RATIO,
        min_dim: int = SK_MIN_DIM,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.paths = _conv_bn(in_channels, 2 * out_channels, 3, stride)
        hidden = max(int(out_channels * sk_ratio), min_dim)
        self.attention = nn.Sequential(
            _conv_bn(out_channels, hidden, 1),
            _conv(hidden, 2 * out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Mix the two 3x3 paths with per-channel softmax weights."""
        paths = self.paths(x).unflatten(1, (2, self.out_channels))  # [B, 2, C, H, W]
        context = paths.sum(1).mean((-2, -1), keepdim=True)  # [B, C, 1, 1]
        logits = self.attention(context).unflatten(1, (2, self.out_channels))  # [B, 2, C, 1, 1]
        mixed: Tensor = (paths * logits.softmax(1)).sum(1)
        return mixed


class V2Bottleneck(nn.Module):
    """Bottleneck block: 1x1 -> 3x3 (or selective kernel, carrying the stride) -> 1x1 (x4).

    Shape:
        ``[B, in_channels, H, W]`` -> ``[B, 4 * planes, H / stride, W / stride]``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        projection: bool = False,
        sk_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        out_channels = self.expansion * planes
        self.reduce = _conv_bn(in_channels, planes, 1)
        self.spatial: nn.Module = (
            SelectiveKernelConv(planes, planes, stride=stride, sk_ratio=sk_ratio)
            if sk_ratio > 0
            else _conv_bn(planes, planes, 3, stride)
        )
        self.expand = _conv_bn(planes, out_channels, 1, relu=False)
        self.shortcut: nn.Module = nn.Identity()
        if projection and sk_ratio > 0:  # ResNet-D: pool, then a stride-1 projection
            self.shortcut = nn.Sequential(
                AvgPool2x2(stride), _conv_bn(in_channels, out_channels, 1, relu=False)
            )
        elif projection:
            self.shortcut = _conv_bn(in_channels, out_channels, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch (gamma = 0 with ``zero_init_residual``)."""
        bn = self.expand[1]
        assert isinstance(bn, nn.BatchNorm2d)
        return bn

    def forward(self, x: Tensor) -> Tensor:
        """``relu(branch(x) + shortcut(x))``."""
        branch = self.expand(self.spatial(self.reduce(x)))
        out: Tensor = self.relu(branch + self.shortcut(x))
        return out


class ResNetV2(nn.Module):
    """The official SimCLR (v1 and v2) ResNet with bottleneck blocks, without a classifier.

    Args:
        depth: 50, 101 or 152.
        width: Channel multiplier (an integer: 1x, 2x, 3x, 4x in the papers).
        sk_ratio: 0 for a plain ResNet; > 0 (SimCLR v2: 0.0625) for selective kernels with a
            ResNet-C stem and ResNet-D shortcuts.
        stem: ``imagenet`` (7x7 stride-2 conv, or the 3-conv stem with SK, then a 3x3 stride-2
            max-pool) or ``cifar`` (one 3x3 stride-1 conv, no pool, with or without SK).
        zero_init_residual: Start the last batch norm of every block with gamma = 0, as the
            official code does.
        in_channels: Channels of the input images (3 for RGB).

    Shape:
        input ``[B, in_channels, H, W]`` -> output ``[B, feature_dim]`` with
        ``feature_dim = 2048 * width``.
    """

    def __init__(
        self,
        depth: int = 50,
        width: int = 1,
        *,
        sk_ratio: float = 0.0,
        stem: str = "imagenet",
        zero_init_residual: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, not {depth}")
        if width != int(width) or width < 1:
            raise ValueError(f"width must be a positive integer, not {width}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem {stem!r}; choose imagenet or cifar")
        self.depth, self.width, self.sk_ratio = depth, int(width), sk_ratio
        base = 64 * self.width
        self.stem = self._stem(base, stem, sk=sk_ratio > 0, in_channels=in_channels)
        channels = base
        stages: list[nn.Module] = []
        for index, blocks in enumerate(DEPTHS[depth]):
            planes = base * 2**index
            layers: list[nn.Module] = []
            for block in range(blocks):
                layers.append(
                    V2Bottleneck(
                        channels,
                        planes,
                        stride=2 if index > 0 and block == 0 else 1,
                        projection=block == 0,
                        sk_ratio=sk_ratio,
                    )
                )
                channels = V2Bottleneck.expansion * planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = channels
        self.reset_parameters(zero_init_residual=zero_init_residual)

    @staticmethod
    def _stem(channels: int, stem: str, *, sk: bool, in_channels: int = 3) -> nn.Sequential:
        if stem == "cifar":
            return _conv_bn(in_channels, channels, 3)
        if sk:  # ResNet-C: three 3x3 convolutions instead of one 7x7
            half = channels // 2
            layers = [
                *_conv_bn(in_channels, half, 3, 2),
                *_conv_bn(half, half, 3),
                *_conv_bn(half, channels, 3),
            ]
        else:
            layers = [*_conv_bn(in_channels, channels, 7, 2)]
        return nn.Sequential(*layers, MaxPoolSame(3, 2))

    @torch.no_grad()
    def reset_parameters(self, *, zero_init_residual: bool = True) -> None:
        """Initialise as the official code: convolutions, batch norms, closing gammas.

        Convolutions are drawn from a normal truncated at 2 standard deviations with variance
        1 / fan-in (TensorFlow's ``VarianceScaling()``); batch norms get gamma = 1 and beta = 0,
        and gamma = 0 where they close a residual branch when ``zero_init_residual``.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                std = math.sqrt(1.0 / fan_in) / _TRUNCATED_NORMAL_STD
                truncated_normal_(module.weight, std)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, V2Bottleneck):
                    nn.init.zeros_(module.last_bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, feature_dim]``."""
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((-2, -1))
