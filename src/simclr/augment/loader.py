"""Per-image preprocessing that runs in DataLoader workers: crops of photographs, eval resize.

Datasets of photographs come in many sizes, so they cannot be stacked before cropping; the
workers cut the two random resized crops (:class:`TwoCrops`) and the rest of the SimCLR recipe
runs batched on the device (:class:`simclr.augment.SimCLRViews` with ``[B, 2, C, S, S]``
input). Cropping in the workers also shrinks what crosses to the device to two S x S crops.

Images are uint8 (8-bit files) or float32 (16-bit files divided by 65535, float data as it is;
see :mod:`simclr.data.datasets`) with any number of channels; every function here keeps the
dtype and the channels of its input.
"""

from __future__ import annotations

from collections.abc import Callable

import PIL.Image
import torch
import torchvision.transforms as T1
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from simclr.augment.functional import resized_crop, to_float
from simclr.augment.params import sample_crop_boxes_tf
from simclr.config import AugmentConfig

EVAL_CROP_FRACTION = 0.875
"""Evaluation centre crop as a fraction of the resized shorter side (224 of 256)."""


def _as_image_tensor(picture: Tensor | PIL.Image.Image) -> Tensor:
    image: Tensor = TF.pil_to_tensor(picture) if isinstance(picture, PIL.Image.Image) else picture
    if image.ndim != 3 or not (image.dtype == torch.uint8 or image.is_floating_point()):
        raise ValueError(
            f"expected a uint8 or float [C, H, W] image, got {image.dtype} {tuple(image.shape)}"
        )
    return image


class RecipeCrop:
    """One random resized crop of one image with the recipe's crop method and interpolation.

    :class:`TwoCrops` uses it when either is not torchvision's (``RandomResizedCrop``). The
    box comes from :func:`~simclr.augment.params.sample_crop_boxes_tf` (``crop_method: tf``)
    or torchvision's ``RandomResizedCrop.get_params``, drawn from torch's global generator.
    ``bilinear`` resizes with antialiasing, as :class:`TwoCrops` always has; the TensorFlow
    bicubic resizes run on the crop in float and are rounded back to uint8 (which also clips
    their overshoot); a float image stays float, its overshoot clipped to [0, 1].

    Shape:
        - input: ``[C, H, W]`` uint8 or float (a PIL image is also accepted)
        - output: ``[C, S, S]``, the input's dtype, S = ``cfg.size``
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.size = cfg.size
        self.scale = (float(cfg.crop_scale[0]), float(cfg.crop_scale[1]))
        self.ratio = (float(cfg.crop_ratio[0]), float(cfg.crop_ratio[1]))
        self.method = cfg.crop_method
        self.interpolation = cfg.interpolation

    def box(self, pixels: Tensor) -> tuple[int, int, int, int]:
        """A random ``(top, left, height, width)`` for this image."""
        height, width = pixels.shape[-2:]
        if self.method == "tf":
            drawn = sample_crop_boxes_tf(1, height, width, self.scale, self.ratio, None)
            top, left, box_h, box_w = (int(v) for v in drawn[0].tolist())
            return top, left, box_h, box_w
        top, left, box_h, box_w = T1.RandomResizedCrop.get_params(pixels, self.scale, self.ratio)
        return top, left, box_h, box_w

    def __call__(self, picture: Tensor | PIL.Image.Image) -> Tensor:
        """Cut one crop (see the class docstring for shapes)."""
        pixels = _as_image_tensor(picture)
        top, left, box_h, box_w = self.box(pixels)
        if self.interpolation == "bilinear":
            out: Tensor = TF.resized_crop(
                pixels, top, left, box_h, box_w, [self.size, self.size], antialias=True
            )
            return out
        crop = to_float(pixels[None, :, top : top + box_h, left : left + box_w])
        box = torch.tensor([[0, 0, box_h, box_w]])
        resized = resized_crop(crop, box, self.size, interpolation=self.interpolation)[0]
        if pixels.is_floating_point():
            return resized.clamp_(0, 1).to(pixels.dtype)
        return resized.mul_(255).round_().clamp_(0, 255).to(torch.uint8)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"crop_method={self.method!r}, interpolation={self.interpolation!r})"
        )


class TwoCrops:
    """Two independent random resized crops of one image, for the SimCLR loader workers.

    By default torchvision's ``RandomResizedCrop`` with the recipe's scale and ratio ranges and
    antialiased bilinear resizing (crops of large photographs are often downsampled, where
    antialiasing matters); with ``crop_method: tf`` or a TensorFlow bicubic ``interpolation``,
    :class:`RecipeCrop`. Randomness is torch's global generator, which the DataLoader seeds
    differently in every worker and epoch.

    Args:
        cfg: The recipe; uses ``size``, ``crop_scale``, ``crop_ratio``, ``crop_method`` and
            ``interpolation``.

    Shape:
        - input: ``[C, H, W]`` uint8 or float (a PIL image is also accepted)
        - output: ``[2, C, S, S]`` in the input's dtype, S = ``cfg.size``
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.size = cfg.size
        self.crop: Callable[[Tensor], Tensor]
        if cfg.crop_method == "torchvision" and cfg.interpolation == "bilinear":
            self.crop = T.RandomResizedCrop(
                cfg.size,
                scale=tuple(cfg.crop_scale),
                ratio=tuple(cfg.crop_ratio),
                interpolation=T.InterpolationMode.BILINEAR,
                antialias=True,
            )
        else:
            self.crop = RecipeCrop(cfg)

    def __call__(self, image: Tensor | PIL.Image.Image) -> Tensor:
        """Cut two crops of ``image`` (see the class docstring for shapes)."""
        pixels = _as_image_tensor(image)
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
        image: uint8 or float image of any number of channels (a PIL image is also accepted).
        size: Output side S.

    Returns:
        The image, in the input's dtype.

    Shape:
        - image: ``[C, H, W]``
        - output: ``[C, S, S]``
    """
    pixels = _as_image_tensor(image)
    height, width = pixels.shape[-2:]
    out: Tensor
    if min(height, width) > size:
        pixels = TF.resize(pixels, [round(size / EVAL_CROP_FRACTION)], antialias=True)
        out = TF.center_crop(pixels, [size, size])
    else:
        out = TF.resize(pixels, [size, size], antialias=True)
    return out
