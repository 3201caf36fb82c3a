"""Per-sample random parameters of the SimCLR view recipe (randomness only, no pixels).

Every random number of the augmentation is drawn here, from one explicit
:class:`torch.Generator`, as whole tensors (one value per sample), on the generator's device.
The pixel kernels in :mod:`simclr.augment.functional` are deterministic functions of these
tensors, so a view can be reproduced from its parameters alone and the two halves can be
tested separately against torchvision.

The recipe is appendix A of Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations" (arXiv 2002.05709): random resized crop, horizontal flip, colour
jitter applied with probability 0.8 in a random order, grayscale with probability 0.2 and
Gaussian blur with probability 0.5.

The number of random draws depends only on the batch size, never on the values drawn, so the
generator's stream (and hence :meth:`SimCLRViews.get_rng_state`) advances by the same amount
for every batch of a given size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from simclr.config import AugmentConfig

CROP_ATTEMPTS = 10
"""Random resized crop tries this many (area, aspect) draws per sample, like torchvision."""

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
"""Indices of the colour-jitter operations in :attr:`ViewParams.jitter_order`."""


@dataclass
class ViewParams:
    """Random parameters of one batch of views, one entry per sample.

    All tensors live on the generator's device and have the batch size as first dimension.

    Attributes:
        boxes: Crop boxes ``(top, left, height, width)`` in pixels, int64. Shape: ``[B, 4]``.
        flip: Horizontal flip mask, bool. Shape: ``[B]``.
        jitter: Whether colour jitter is applied, bool. Shape: ``[B]``.
        brightness: Brightness factor, U(max(0, 1 - b), 1 + b). Shape: ``[B]``.
        contrast: Contrast factor, U(max(0, 1 - c), 1 + c). Shape: ``[B]``.
        saturation: Saturation factor, U(max(0, 1 - s), 1 + s). Shape: ``[B]``.
        hue: Hue shift in turns, U(-h, h). Shape: ``[B]``.
        jitter_order: Per-sample order of the four jitter operations: row ``i`` is a
            permutation of ``(BRIGHTNESS, CONTRAST, SATURATION, HUE)`` = ``(0, 1, 2, 3)``,
            applied left to right, int64. Shape: ``[B, 4]``.
        grayscale: Grayscale mask, bool. Shape: ``[B]``.
        blur: Gaussian blur mask, bool. Shape: ``[B]``.
        sigma: Blur standard deviation in pixels, U(sigma range). Shape: ``[B]``.
    """

    boxes: Tensor
    flip: Tensor
    jitter: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    jitter_order: Tensor
    grayscale: Tensor
    blur: Tensor
    sigma: Tensor

    def __len__(self) -> int:
        return int(self.flip.shape[0])

    def select(self, index: Tensor | slice) -> ViewParams:
        """The parameters of a subset of samples (an index tensor, bool mask or slice)."""
        return ViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """``n`` draws of U(low, high) as float32 on the generator's device."""
    u = torch.rand(n, generator=generator, device=generator.device)
    return u.mul_(high - low).add_(low)


def _bernoulli(n: int, p: float, generator: torch.Generator) -> Tensor:
    """``n`` coin flips with probability ``p`` (one draw per sample, even for p in {0, 1})."""
    return torch.rand(n, generator=generator, device=generator.device) < p


def sample_crop_boxes(
    batch_size: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """Random resized crop boxes, vectorised over the batch.

    Same semantics as torchvision's ``RandomResizedCrop`` parameters: each sample draws an
    area fraction from U(scale) and a log aspect ratio (width / height) from U(log ratio),
    :data:`CROP_ATTEMPTS` times; the first attempt whose rounded box fits in the image is kept
    and its position is uniform over the valid offsets. A sample with no fitting attempt gets
    the central crop, clipped to the ratio range. All attempts are drawn at once (a fixed
    number of random numbers per sample) instead of torchvision's Python loop.

    Args:
        batch_size: Number of boxes B.
        height: Image height H in pixels.
        width: Image width W in pixels.
        scale: Range of the crop area as a fraction of the image area.
        ratio: Range of the crop aspect ratio width / height.
        generator: Source of randomness; the boxes are created on its device.

    Returns:
        Boxes ``(top, left, height, width)``, int64, each inside the image.

    Shape:
        Output: ``[B, 4]``.
    """
    n, k = batch_size, CROP_ATTEMPTS
    device = generator.device
    area = float(height * width)
    fraction = _uniform(n * k, scale[0], scale[1], generator).view(n, k)
    log_ratio = _uniform(n * k, math.log(ratio[0]), math.log(ratio[1]), generator).view(n, k)
    offsets = torch.rand(n, 2, generator=generator, device=device)
    # float32 throughout (float64 is missing on some accelerators); torchvision rounds Python
    # floats, so a box may rarely differ by a pixel for the same draws, which is immaterial.
    target = fraction * area
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting attempt
    found = fits.any(dim=1)
    w_pick = w.gather(1, first).squeeze(1).long()
    h_pick = h.gather(1, first).squeeze(1).long()
    top = (offsets[:, 0] * (height - h_pick + 1)).floor().long()
    left = (offsets[:, 1] * (width - w_pick + 1)).floor().long()
    top = torch.minimum(top, height - h_pick)
    left = torch.minimum(left, width - w_pick)
    picked = torch.stack([top, left, h_pick, w_pick], dim=1)

    # Fallback: the whole image, or its centre clipped to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    fallback = torch.tensor(
        [(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=torch.long, device=device
    )
    return torch.where(found[:, None], picked, fallback)


def sample_view_params(
    batch_size: int,
    height: int,
    width: int,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> ViewParams:
    """Draw the parameters of ``batch_size`` independent views.

    Args:
        batch_size: Number of views B (for two views of N images, B = 2N).
        height: Height of the source images (for the crop boxes).
        width: Width of the source images.
        cfg: The recipe: probabilities and ranges.
        generator: The only source of randomness; all tensors are created on its device.

    Returns:
        The per-sample parameters, see :class:`ViewParams`.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    n = batch_size
    b, c, s, h = cfg.jitter_amounts()
    if not 0 <= h <= 0.5:
        raise ValueError(f"hue jitter must be in [0, 0.5], got {h}")
    boxes = sample_crop_boxes(n, height, width, cfg.crop_scale, cfg.crop_ratio, generator)
    flip = _bernoulli(n, cfg.flip_p, generator)
    jitter = _bernoulli(n, cfg.jitter_p, generator)
    brightness = _uniform(n, max(0.0, 1.0 - b), 1.0 + b, generator)
    contrast = _uniform(n, max(0.0, 1.0 - c), 1.0 + c, generator)
    saturation = _uniform(n, max(0.0, 1.0 - s), 1.0 + s, generator)
    hue = _uniform(n, -h, h, generator)
    # A uniformly random permutation per sample: argsort of i.i.d. uniform noise.
    noise = torch.rand(n, 4, generator=generator, device=generator.device)
    jitter_order = noise.argsort(dim=1)
    grayscale = _bernoulli(n, cfg.grayscale_p, generator)
    blur = _bernoulli(n, cfg.blur_p, generator)
    sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], generator)
    return ViewParams(
        boxes=boxes,
        flip=flip,
        jitter=jitter,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        jitter_order=jitter_order,
        grayscale=grayscale,
        blur=blur,
        sigma=sigma,
    )
