"""Backbones built by timm or torchvision, by prefixed name: ``timm:NAME`` and ``tv:NAME``.

Both keep the contract of :func:`simclr.models.create_backbone`: a module mapping images
``[B, C, H, W]`` to pooled features ``[B, D]``, and D. Images of another channel count than 3
(``model.in_channels``) reach timm as ``in_chans``; a torchvision model gets its first
convolution rebuilt with that many input channels (freshly initialised, as all its weights).
The classifier is removed, so h is the model's pooled pre-logits feature (a ViT's class token
after its final norm, a CNN's global average pool):

* ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=0, **args)``; D is the
  model's ``head_hidden_size`` (the pre-logits width, timm >= 1.0), else its ``num_features``.
  Needs timm (the ``timm`` extra: ``pip install "simclr-kit[timm]"``, or ``pip install timm``).
* ``tv:NAME``: ``torchvision.models.get_model(NAME, weights=None, **args)``, any name of
  ``torchvision.models.list_models(module=torchvision.models)`` whose classifier (``fc``,
  ``classifier``, ``heads`` or ``head``) ends in a linear layer; that layer becomes
  ``nn.Identity`` and D is its input width (``tv:mobilenet_v3_small`` keeps its 1024-wide hidden
  layer, as timm's pre-logits; ``tv:convnext_tiny`` its final layer norm).

The weights start random (SimCLR pretrains them; no download). ``args`` is
``model.backbone_args``: the size of a ViT (``img_size`` for timm, ``image_size`` for
torchvision), drop-path rates and so on. ``model.width`` and ``model.stem`` do not apply
(:meth:`simclr.config.ModelConfig.problems`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from simclr.config import EXTERNAL_BACKBONES
from simclr.errors import UserError, first_line, require

_RESERVED = ("pretrained", "num_classes", "weights", "pretrained_cfg", "in_chans")
"""Constructor arguments this module sets itself."""
_TV_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
"""Models whose auxiliary classifiers would change the training output into a tuple."""


def is_external(name: str) -> bool:
    """True for ``timm:NAME`` and ``tv:NAME``."""
    return name.startswith(EXTERNAL_BACKBONES)


def create_external(
    name: str, args: Mapping[str, Any] | None = None, *, in_channels: int = 3
) -> tuple[nn.Module, int]:
    """Build ``timm:NAME`` or ``tv:NAME`` without its classifier; returns ``(module, dim)``.

    Raises:
        UserError: timm missing, an unknown model, arguments the model does not take, or a
            torchvision model without a first convolution to give ``in_channels``.
    """
    args = dict(args or {})
    reserved = sorted(set(args) & set(_RESERVED))
    if reserved:
        raise UserError(
            f"model.backbone_args must not set {', '.join(reserved)}: {name} starts from random "
            "weights without a classifier, and takes model.in_channels channels"
        )
    library, _, model_name = name.partition(":")
    if library == "timm":
        return _timm(model_name, {**args, "in_chans": in_channels} if in_channels != 3 else args)
    if library == "tv":
        model, dim = _torchvision(model_name, args)
        if in_channels != 3:
            _first_convolution_takes(model, in_channels, name)
        return model, dim
    raise UserError(f"unknown backbone {name!r}: external names start with timm: or tv:")


def check_image_size(
    backbone: nn.Module, name: str, size: int, feature_dim: int, *, channels: int = 3
) -> None:
    """Run one blank ``size`` px image through ``backbone`` (eval mode, no gradient, no RNG).

    A model that cannot take the training size (a ViT built for 224 px given 32 px) fails here
    in one line, not with a traceback at the first training step; the output must be
    ``[1, feature_dim]``. The train/eval mode is restored.
    """
    was_training = backbone.training
    try:
        with torch.no_grad():
            out = backbone.eval()(torch.zeros(1, channels, size, size))
    except Exception as err:  # noqa: BLE001 - any failure of the model on this input
        key = "img_size" if name.startswith("timm:") else "image_size"
        raise UserError(
            f"{name} cannot take {size} px images (augment.size): {first_line(err).rstrip('.')}; "
            f"a ViT needs model.backbone_args.{key}={size}"
        ) from None
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.flatten(1).shape != (1, feature_dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{name} gives {got} for one image, not [1, {feature_dim}] features")


def _timm(model_name: str, args: dict[str, Any]) -> tuple[nn.Module, int]:
    timm = require("timm", "timm", f"for the backbone timm:{model_name}")
    try:
        model: nn.Module = timm.create_model(model_name, pretrained=False, num_classes=0, **args)
    except RuntimeError as err:  # timm's "Unknown model (NAME)"
        raise UserError(
            f"timm:{model_name}: {first_line(err)}; timm.list_models() names them"
        ) from None
    except (TypeError, ValueError, AssertionError) as err:
        raise UserError(f"timm:{model_name} with backbone_args {args}: {first_line(err)}") from None
    timm_model: Any = model  # its width attributes are plain ints, not submodules
    dim = getattr(timm_model, "head_hidden_size", None) or timm_model.num_features
    return model, int(dim)


def _torchvision(model_name: str, args: dict[str, Any]) -> tuple[nn.Module, int]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if model_name not in names:
        raise UserError(
            f"tv:{model_name} is not a torchvision classification model; "
            "torchvision.models.list_models(module=torchvision.models) names them"
        )
    kwargs = {**_TV_DEFAULTS.get(model_name, {}), **args}
    try:
        model: nn.Module = torchvision.models.get_model(model_name, weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise UserError(f"tv:{model_name} with backbone_args {args}: {first_line(err)}") from None
    dim = _drop_classifier(model)
    if dim is None:
        raise UserError(
            f"tv:{model_name} has no linear classifier to remove (fc, classifier, heads or head); "
            "use another model, or register_backbone a wrapper"
        )
    return model, dim


def _drop_classifier(model: nn.Module) -> int | None:
    """Replace the last linear layer of the classifier with Identity; its input width."""
    for attribute in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attribute, None)
        if isinstance(head, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential):
            linear = [(key, m) for key, m in head.named_children() if isinstance(m, nn.Linear)]
            if linear:
                key, last = linear[-1]
                setattr(head, key, nn.Identity())
                return int(last.in_features)
    return None


def _first_convolution_takes(model: nn.Module, in_channels: int, name: str) -> None:
    """Rebuild the first ``Conv2d`` of ``model`` (its stem) for ``in_channels`` input channels.

    The new convolution keeps every other setting and gets PyTorch's default initialisation
    (the model starts from random weights anyway).

    Raises:
        UserError: the model does not start with a plain 2-D convolution taking 3 channels.
    """
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None or found[1].in_channels != 3 or found[1].groups != 1:
        raise UserError(
            f"{name} does not start with a 3-channel convolution to give {in_channels} "
            "channels; use a built-in ResNet or a timm: backbone (model.in_channels)"
        )
    path, conv = found
    parent_name, _, key = path.rpartition(".")

    def pair(value: tuple[int, ...]) -> tuple[int, int]:
        return value[0], value[1]

    padding = conv.padding if isinstance(conv.padding, str) else pair(conv.padding)
    replacement = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=pair(conv.kernel_size),
        stride=pair(conv.stride),
        padding=padding,
        dilation=pair(conv.dilation),
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    setattr(model.get_submodule(parent_name), key, replacement)
