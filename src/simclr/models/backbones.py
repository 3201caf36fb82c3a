"""Encoders f: a small registry of torchvision ResNets with a CIFAR stem and a width multiplier.

``create_backbone(name)`` returns the module (mapping images ``[B, 3, H, W]`` to pooled features
``[B, D]``) and its feature dimension D. Any other ``nn.Module`` with that contract works with
:class:`simclr.SimCLR` through the Python API; register it to reach it from the command line.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from simclr.errors import UserError

BackboneFactory = Callable[..., tuple[nn.Module, int]]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make a factory ``(width=..., stem=...) -> (module, feature_dim)`` creatable."""

    def add(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(_REGISTRY)


def create_backbone(
    name: str, *, width: float = 1.0, stem: str = "imagenet"
) -> tuple[nn.Module, int]:
    """Build a registered backbone; returns ``(module, feature_dim)``."""
    if name not in _REGISTRY:
        raise UserError(f"unknown backbone {name!r}; choose from {', '.join(list_backbones())}")
    return _REGISTRY[name](width=width, stem=stem)


class ScaledResNet(ResNet):
    """torchvision's ResNet with every stage's width multiplied by ``width`` and no classifier.

    torchvision hard-codes the stage widths (64, 128, 256, 512), so this constructor rebuilds
    the layers with scaled widths and reuses torchvision's blocks, ``_make_layer`` and forward.
    The ``cifar`` stem (3x3 conv, stride 1, no max-pool) keeps 32 px inputs at 32x32 in the first
    stage, as in the SimCLR CIFAR experiments (appendix B.9).

    Shape:
        input ``[B, 3, H, W]`` -> output ``[B, feature_dim]``.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        width: float = 1.0,
        stem: str = "imagenet",
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
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
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


def _resnet(block: type[BasicBlock | Bottleneck], layers: list[int]) -> BackboneFactory:
    def factory(*, width: float = 1.0, stem: str = "imagenet") -> tuple[nn.Module, int]:
        model = ScaledResNet(block, layers, width=width, stem=stem)
        return model, model.feature_dim

    return factory


register_backbone("resnet18")(_resnet(BasicBlock, [2, 2, 2, 2]))
register_backbone("resnet34")(_resnet(BasicBlock, [3, 4, 6, 3]))
register_backbone("resnet50")(_resnet(Bottleneck, [3, 4, 6, 3]))
