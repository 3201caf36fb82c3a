"""Per-image preprocessing that runs in DataLoader workers: crops of photographs, eval resize.

Datasets of photographs come in many sizes, so they cannot be stacked before cropping; the
workers cut the two random resized crops (:class:`TwoCrops`) and the rest of the SimCLR recipe
runs batched on the device (:class:`simclr.augment.SimCLRViews` with ``[B, 2, C, S, S]``
input). Cropping in the workers also shrinks what crosses to the device to two S x S crops.
"""

from __future__ import annotations

import PIL.Image
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from simclr.config import AugmentConfig

EVAL_CROP_FRACTION = 0.875
"""Evaluation centre crop as a fraction of the resized shorter side (224 of 256)."""


def _as_uint8_tensor(picture: Tensor | PIL.Image.Image) -> Tensor:
    image: Tensor = TF.pil_to_tensor(picture) if isinstance(picture, PIL.Image.Image) else picture
    if image.ndim != 3 or image.dtype != torch.uint8:
        raise ValueError(
            f"expected a uint8 [C, H, W] image, got {image.dtype} {tuple(image.shape)}"
        )
    return image


class TwoCrops:
    """Two independent random resized crops of one image, for the SimCLR loader workers.

    Uses torchvision's ``RandomResizedCrop`` with the recipe's scale and ratio ranges and
    antialiased bilinear resizing (crops of large photographs are often downsampled, where
    antialiasing matters). Randomness is torch's global generator, which the DataLoader seeds
    differently in every worker and epoch.

    Args:
        cfg: The recipe; uses ``size``, ``crop_scale`` and ``crop_ratio``.

    Shape:
        - input: ``[C, H, W]`` uint8 (a PIL image is also accepted)
        - output: ``[2, C, S, S]`` uint8, S = ``cfg.size``
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.size = cfg.size
        self.crop = T.RandomResizedCrop(
            cfg.size,
            scale=tuple(cfg.crop_scale),
            ratio=tuple(cfg.crop_ratio),
            interpolation=T.InterpolationMode.BILINEAR,
            antialias=True,
        )

    def __call__(self, image: Tensor | PIL.Image.Image) -> Tensor:
        """Cut two crops of ``image`` (see the class docstring for shapes)."""
        pixels = _as_uint8_tensor(image)
        return torch.stack([self.crop(pixels), self.crop(pixels)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.crop!r})"


def eval_resize(image: Tensor | PIL.Image.Image, size: int) -> Tensor:
    """The paper's evaluation preprocessing of one image.

    An image larger than ``size`` (shorter side above it) has its shorter side resized to
    ``round(size / 0.875)`` and is centre-cropped to ``size`` (256 then 224 on ImageNet);
    a smaller one, such as a CIFAR image, is used whole, resized to ``size`` x ``size``.
    Resizing is bilinear with antialiasing.

    Args:
        image: uint8 image (a PIL image is also accepted).
        size: Output side S.

    Returns:
        The uint8 image.

    Shape:
        - image: ``[C, H, W]``
        - output: ``[C, S, S]``
    """
    pixels = _as_uint8_tensor(image)
    height, width = pixels.shape[-2:]
    out: Tensor
    if min(height, width) > size:
        pixels = TF.resize(pixels, [round(size / EVAL_CROP_FRACTION)], antialias=True)
        out = TF.center_crop(pixels, [size, size])
    else:
        out = TF.resize(pixels, [size, size], antialias=True)
    return out
