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
from typing import Any

import numpy as np
import torch
from torch import Tensor

from simclr.config import AugmentConfig

CROP_ATTEMPTS = 10
"""Random resized crop tries this many (area, aspect) draws per sample, like torchvision."""

TF_CROP_ATTEMPTS = 100
"""``max_attempts`` of the official code's ``tf.image.sample_distorted_bounding_box`` call."""

TF_FIRST_ATTEMPTS = 8
"""Attempts of the TF crop evaluated for every sample before the remaining ones are evaluated
for the samples still without a box (the result is the same; it only saves work)."""

TF_MIN_OBJECT_COVERED = 0.1
"""``min_object_covered`` of the official call: with the whole image as the only bounding box,
a crop must cover at least this fraction of the image, which raises the 0.08 of ``area_range``
to 0.1."""

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
        brightness: Brightness factor, U(max(0, 1 - b), 1 + b), or with
            ``brightness_mode="additive"`` the offset, U(-b, b). Shape: ``[B]``.
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


def sample_crop_boxes_tf(
    batch_size: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> Tensor:
    """Crop boxes with the semantics of the official code's TensorFlow crop, batched.

    The official ``crop_and_resize`` calls ``tf.image.sample_distorted_bounding_box`` with the
    whole image as bounding box, ``area_range=scale``, ``aspect_ratio_range=ratio``,
    ``min_object_covered`` = :data:`TF_MIN_OBJECT_COVERED` and ``max_attempts`` =
    :data:`TF_CROP_ATTEMPTS`. Each sample draws its :data:`TF_CROP_ATTEMPTS` aspect ratios and
    heights and its two offsets at once (a fixed number of random numbers per sample); the
    geometry is :func:`tf_crop_boxes`.

    Args:
        batch_size: Number of boxes B.
        height: Image height H in pixels.
        width: Image width W in pixels.
        scale: ``area_range``: range of the crop area as a fraction of the image area.
        ratio: ``aspect_ratio_range``: range of the aspect ratio width / height.
        generator: Source of randomness, the boxes are created on its device; ``None`` uses
            torch's global generator on the CPU (in loader workers).

    Returns:
        Boxes ``(top, left, height, width)``, int64, each inside the image.

    Shape:
        Output: ``[B, 4]``.
    """
    n, k = batch_size, TF_CROP_ATTEMPTS
    device = generator.device if generator is not None else torch.device("cpu")
    aspect_u = torch.rand(n, k, generator=generator, device=device)
    height_u = torch.rand(n, k, generator=generator, device=device)
    offset_u = torch.rand(n, 2, generator=generator, device=device)
    return tf_crop_boxes(aspect_u, height_u, offset_u, height, width, scale, ratio)


def _f32(value: float | np.floating[Any]) -> float:
    """``value`` rounded to float32, as a Python float (TF's attributes are C++ floats)."""
    return float(np.float32(value))


def tf_crop_boxes(
    aspect_u: Tensor,
    height_u: Tensor,
    offset_u: Tensor,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    min_object_covered: float = TF_MIN_OBJECT_COVERED,
) -> Tensor:
    """``sample_distorted_bounding_box`` (whole image as box) for given uniform draws.

    The TensorFlow kernel (``sample_distorted_bounding_box_op.cc``), attempt after attempt
    until one is accepted: the aspect ratio ``r`` is uniform in ``ratio``; the height is
    uniform over the whole numbers from ``rint(sqrt(min_area / r))`` to ``max_height =
    rint(sqrt(max_area / r))`` (lowered so that ``rint(max_height r) <= W``, and to at most
    H), the width is ``rint(height r)``; a box whose area misses ``[min_area, max_area]`` is
    grown, then shrunk, by one pixel of height; it is rejected if it still misses, if it does
    not fit, or if it covers less than ``min_object_covered`` of the image. An accepted box's
    offsets are uniform in ``[0, H - h)`` and ``[0, W - w)`` (0 when the side is full). With no
    accepted attempt the box is the whole image. Areas and ratios are computed in float32, as
    the kernel does (its one double-precision expression in float64 where the device has it),
    and rounding is half-to-even like ``lrintf``, so for the same draws the boxes are the
    kernel's. TensorFlow's ``Uniform(n)`` integer draws are ``floor(u n)`` here.

    Args:
        aspect_u: Uniform [0, 1) draws for the aspect ratio of each attempt.
        height_u: Uniform [0, 1) draws for the height of each attempt.
        offset_u: Uniform [0, 1) draws for the (top, left) offsets of the accepted box.
        height: Image height H.
        width: Image width W.
        scale: ``area_range``.
        ratio: ``aspect_ratio_range`` (width / height).
        min_object_covered: Fraction of the image the box must cover.

    Returns:
        Boxes ``(top, left, height, width)``, int64.

    Shape:
        - aspect_u, height_u: ``[B, K]`` (K attempts)
        - offset_u: ``[B, 2]``
        - output: ``[B, 4]``
    """
    device = aspect_u.device
    attempts = aspect_u.shape[1]
    args = (height, width, scale, ratio, min_object_covered)
    # Nearly every sample accepts one of its first attempts: try those for all, the rest
    # only for the samples still without a box (one host synchronisation).
    head = min(attempts, TF_FIRST_ATTEMPTS)
    found, h_pick, w_pick = _tf_first_accepted(aspect_u[:, :head], height_u[:, :head], *args)
    if head < attempts and not bool(found.all()):
        rest = (~found).nonzero().squeeze(1)
        found_r, h_r, w_r = _tf_first_accepted(aspect_u[rest, head:], height_u[rest, head:], *args)
        found = found.index_put((rest,), found_r)
        h_pick = h_pick.index_put((rest,), h_r)
        w_pick = w_pick.index_put((rest,), w_r)
    f32 = torch.float32
    room_y, room_x = height - h_pick, width - w_pick
    top = torch.minimum(torch.floor(offset_u[:, 0].to(f32) * room_y), room_y - 1).clamp(min=0)
    left = torch.minimum(torch.floor(offset_u[:, 1].to(f32) * room_x), room_x - 1).clamp(min=0)
    picked = torch.stack([top, left, h_pick, w_pick], dim=1).long()
    whole = torch.tensor([0, 0, height, width], dtype=torch.long, device=device)
    return torch.where(found[:, None], picked, whole)


def _tf_first_accepted(
    aspect_u: Tensor,
    height_u: Tensor,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    min_object_covered: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``GenerateRandomCrop`` and the overlap test of every attempt (see :func:`tf_crop_boxes`).

    Returns:
        Whether an attempt was accepted, and the height and width (float32) of the first one.

    Shape:
        - aspect_u, height_u: ``[B, K]``
        - outputs: ``[B]``
    """
    f32 = torch.float32
    device = aspect_u.device
    wide = torch.float32 if device.type == "mps" else torch.float64
    lo, hi = _f32(ratio[0]), _f32(ratio[1])
    # C++ float arithmetic: area_range[i] * original_width * original_height
    min_area = _f32(np.float32(scale[0]) * np.float32(width) * np.float32(height))
    max_area = _f32(np.float32(scale[1]) * np.float32(width) * np.float32(height))
    span_ratio = _f32(np.float32(hi) - np.float32(lo))
    ar = aspect_u.to(f32) * span_ratio + lo

    # (a Python number divided by a tensor is a reciprocal and a product in torch: not IEEE
    # division, so the dividends are tensors)
    h = torch.round(torch.sqrt(torch.full_like(ar, min_area) / ar))
    max_h = torch.round(torch.sqrt(torch.full_like(ar, max_area) / ar))
    # Too wide: the largest height with rint(h r) <= W, computed in double by the kernel.
    limit = torch.full_like(ar, float(width) + 0.5 - float(np.float32(1e-7)), dtype=wide)
    max_h_w = torch.trunc(limit / ar.to(wide)).to(f32)
    max_h_w = max_h_w - (torch.round(max_h_w * ar) > width).to(f32)
    max_h = torch.where(torch.round(max_h * ar) > width, max_h_w, max_h).clamp(max=height)
    h = torch.minimum(h, max_h)
    span = max_h - h + 1
    h = h + torch.where(h < max_h, torch.minimum(torch.floor(height_u.to(f32) * span), span - 1), 0)
    w = torch.round(h * ar)
    area = w * h
    small = area < min_area  # one pixel taller
    h = h + small.to(f32)
    w = torch.where(small, torch.round(h * ar), w)
    area = torch.where(small, w * h, area)
    large = area > max_area  # one pixel shorter
    h = h - large.to(f32)
    w = torch.where(large, torch.round(h * ar), w)
    area = torch.where(large, w * h, area)
    ok = (area >= min_area) & (area <= max_area) & (w <= width) & (h <= height)
    ok &= (w > 0) & (h > 0) & (area >= 1)
    # Overlap with the image (the only bounding box): covered fraction, in float32.
    ok &= area / _f32(width * height) >= _f32(min_object_covered)

    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    return ok.any(dim=1), h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)


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
    sampler = sample_crop_boxes_tf if cfg.crop_method == "tf" else sample_crop_boxes
    boxes = sampler(n, height, width, cfg.crop_scale, cfg.crop_ratio, generator)
    flip = _bernoulli(n, cfg.flip_p, generator)
    jitter = _bernoulli(n, cfg.jitter_p, generator)
    if cfg.brightness_mode == "additive":
        brightness = _uniform(n, -b, b, generator)
    else:
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
