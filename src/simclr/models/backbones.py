"""Encoders f: a registry of ResNets, by name, and the models of timm and torchvision.

``create_backbone(name)`` returns the module (mapping images ``[B, C, H, W]`` to pooled features
``[B, D]``, C = ``in_channels``, 3 by default) and its feature dimension D. Any other
``nn.Module`` with that contract works with :class:`simclr.SimCLR` through the Python API;
register it to reach it from the command line.
``timm:NAME`` and ``tv:NAME`` build a timm or torchvision model without its classifier
(:mod:`simclr.models.external`).

Two families are registered:

* ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``: torchvision's ResNets
  (:class:`ScaledResNet`) with any width multiplier ``model.width`` (0.25 gives 16/32/64/128
  channels on ResNet-18) and the ``imagenet`` or ``cifar`` stem;
* the SimCLR v2 model zoo (:mod:`simclr.models.resnet_v2`): ``resnet{50,101,152}-{1,2,3,4}x``
  and the same with ``-sk`` (selective kernels), e.g. ``resnet50-2x`` or ``resnet152-3x-sk``.
  The name carries the width, so ``model.width`` must stay 1; both stems work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from simclr.config import ModelConfig
from simclr.errors import UserError
from simclr.models.external import create_external, is_external
from simclr.models.resnet_v2 import DEPTHS, SK_RATIO, WIDTHS, ResNetV2, zoo_name

log = logging.getLogger("simclr")

BackboneFactory = Callable[..., tuple[nn.Module, int]]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make a factory ``(width=..., stem=...) -> (module, feature_dim)`` creatable.

    The factories registered here also take ``zero_init_residual`` and ``in_channels``;
    :func:`create_backbone` passes them on only when asked to (another channel count than 3),
    so a factory of your own needs them only for such data.
    """

    def add(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def list_backbones() -> list[str]:
    """Registered names accepted by :func:`create_backbone` (besides ``timm:*`` and ``tv:*``)."""
    return sorted(_REGISTRY)


def create_backbone(
    name: str,
    *,
    width: float = 1.0,
    stem: str = "imagenet",
    zero_init_residual: bool | None = None,
    args: Mapping[str, Any] | None = None,
    in_channels: int = 3,
) -> tuple[nn.Module, int]:
    """Build a registered backbone, or a timm or torchvision one; returns ``(module, dim)``.

    Args:
        name: A name from :func:`list_backbones`, ``timm:NAME`` or ``tv:NAME``.
        width: Channel multiplier of the torchvision family; the zoo's names carry their width
            (``resnet50-2x``), and this must then be 1, as for ``timm:``/``tv:`` names.
        stem: ``imagenet`` or ``cifar`` (``imagenet`` for ``timm:``/``tv:`` names).
        zero_init_residual: Start the last batch norm of every residual block with gamma = 0.
            ``None`` keeps each family's default: on for the SimCLR v2 zoo (as the official
            code), off for the torchvision family (as torchvision). Must be ``None`` for
            ``timm:``/``tv:`` names.
        args: Constructor keyword arguments of a ``timm:``/``tv:`` model
            (``model.backbone_args``); none for the registered families.
        in_channels: Channels of the input images (``model.in_channels``): the first
            convolution takes that many.

    Raises:
        UserError: an unknown name, or a setting that does not apply to it (one line).
    """
    settings = ModelConfig(
        backbone=name,
        width=width,
        stem=stem,
        zero_init_residual=zero_init_residual,
        backbone_args=dict(args or {}),
    )
    for ok, message in settings.problems():
        if not ok:
            raise UserError(message)
    if is_external(name):
        return create_external(name, args, in_channels=in_channels)
    if name not in _REGISTRY:
        raise UserError(
            f"unknown backbone {name!r}; choose from {', '.join(list_backbones())}, "
            "timm:NAME or tv:NAME"
        )
    if in_channels < 1:
        raise UserError(f"in_channels must be at least 1 (got {in_channels})")
    options: dict[str, Any] = {}
    if zero_init_residual is not None:
        options["zero_init_residual"] = zero_init_residual
    if in_channels != 3:
        options["in_channels"] = in_channels
    return _REGISTRY[name](width=width, stem=stem, **options)


def input_channels(module: nn.Module) -> int:
    """Channels of the images ``module`` takes: those of its first 2-D convolution (else 3).

    Every backbone here (ResNets, ViT patch embeddings, ConvNeXt stems) starts with one.
    """
    first = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return 3 if first is None else int(first.in_channels)


def memory_format_for(
    model: nn.Module, device: torch.device, channels_last: bool
) -> torch.memory_format:
    """The memory format to train ``model`` in on ``device``: channels_last when asked and safe.

    PyTorch 2.14's CPU kernel for the backward of a channels_last 1x1 convolution with stride 2
    and fewer than 8 input channels writes past its buffers (seen on an AVX2 machine: heap
    corruption, then an abort or a segmentation fault). Such convolutions only occur in very
    narrow networks (the downsampling shortcut of a ResNet at width 1/16), so there the
    contiguous format is kept rather than risking wrong numbers or a crash (said at info level:
    it changes speed, not results).
    """
    if not channels_last:
        return torch.contiguous_format
    if device.type == "cpu" and any(_narrow_strided_1x1(m) for m in model.modules()):
        log.info(
            "channels_last is left off: this network has a 1x1 convolution with stride 2 and "
            "fewer than 8 input channels, which PyTorch's CPU backward mishandles in that format"
        )
        return torch.contiguous_format
    return torch.channels_last


def _narrow_strided_1x1(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and max(module.stride) > 1
        and module.in_channels < 8
    )


class ScaledResNet(ResNet):
    """torchvision's ResNet with every stage's width multiplied by ``width`` and no classifier.

    torchvision hard-codes the stage widths (64, 128, 256, 512), so this constructor rebuilds
    the layers with scaled widths and reuses torchvision's blocks, ``_make_layer`` and forward.
    The ``cifar`` stem (3x3 conv, stride 1, no max-pool) keeps 32 px inputs at 32x32 in the first
    stage, as in the SimCLR CIFAR experiments (appendix B.9).

    Shape:
        input ``[B, in_channels, H, W]`` -> output ``[B, feature_dim]``.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        width: float = 1.0,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ) -> None:
        nn.Module.__init__(self)
        if stem not in ("imagenet", "cifar"):
            raise UserError(f"unknown stem {stem!r}; choose imagenet or cifar")
        widths = [max(1, round(base * width)) for base in (64, 128, 256, 512)]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        if stem == "cifar":
            self.conv1 = nn.Conv2d(
                in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False
            )
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(
                in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False
            )
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = widths[3] * block.expansion
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)


def _resnet(block: type[BasicBlock | Bottleneck], layers: list[int]) -> BackboneFactory:
    def factory(
        *,
        width: float = 1.0,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ) -> tuple[nn.Module, int]:
        model = ScaledResNet(
            block,
            layers,
            width=width,
            stem=stem,
            zero_init_residual=zero_init_residual,
            in_channels=in_channels,
        )
        return model, model.feature_dim

    return factory


register_backbone("resnet18")(_resnet(BasicBlock, [2, 2, 2, 2]))
register_backbone("resnet34")(_resnet(BasicBlock, [3, 4, 6, 3]))
register_backbone("resnet50")(_resnet(Bottleneck, [3, 4, 6, 3]))
register_backbone("resnet101")(_resnet(Bottleneck, [3, 4, 23, 3]))
register_backbone("resnet152")(_resnet(Bottleneck, [3, 8, 36, 3]))


def _zoo(depth: int, multiplier: int, sk: bool) -> BackboneFactory:
    name = zoo_name(depth, multiplier, sk)

    def factory(
        *,
        width: float = 1.0,
        stem: str = "imagenet",
        zero_init_residual: bool = True,
        in_channels: int = 3,
    ) -> tuple[nn.Module, int]:
        if width != 1:
            raise UserError(
                f"{name} carries its width in its name; leave model.width at 1 (not {width:g}),"
                f" or use resnet{depth} with model.width={width:g}"
            )
        if stem not in ("imagenet", "cifar"):
            raise UserError(f"unknown stem {stem!r}; choose imagenet or cifar")
        model = ResNetV2(
            depth,
            multiplier,
            sk_ratio=SK_RATIO if sk else 0.0,
            stem=stem,
            zero_init_residual=zero_init_residual,
            in_channels=in_channels,
        )
        return model, model.feature_dim

    return factory


for _depth in DEPTHS:
    for _width in WIDTHS:
        for _sk in (False, True):
            register_backbone(zoo_name(_depth, _width, _sk))(_zoo(_depth, _width, _sk))
