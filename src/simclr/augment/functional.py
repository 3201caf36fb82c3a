"""Batched pixel kernels of the SimCLR views, with per-sample parameters.

Every function takes a float batch ``[B, C, H, W]`` with values in [0, 1] and parameter
tensors with one entry per sample (see :mod:`simclr.augment.params`), runs on the images'
device and keeps their dtype. There is no Python loop over images: per-sample behaviour comes
from broadcasting, ``torch.where`` or index subsets (for the two expensive operations, hue and
blur, so that unselected samples cost nothing; on CUDA this costs one host synchronisation
each, which is negligible next to the work it saves). On the CPU the kernels run over groups
of samples small enough for their intermediates to stay in cache (see :func:`_group_size`);
on accelerators every kernel sees the whole batch at once.

Each kernel matches the corresponding single-image operation of
``torchvision.transforms.v2.functional`` for the same parameters, up to float rounding
(bilinear crop, blur and hue within about 1e-5, point operations exactly or within 1e-6).
The recipe is appendix A of Chen et al. 2020 (arXiv 2002.05709).

Any number of channels C: the geometric kernels (crop, flip), the blur, brightness and contrast
treat every channel alike, with one factor per sample (contrast blends with the mean gray level,
which for C != 3 is the mean over all channels and pixels). Hue, saturation and grayscale are
defined for RGB only (C = 3) and refuse other inputs; :class:`~simclr.augment.SimCLRViews` skips
them for C != 3. Values are floats whose working range is [0, 1] (uint8 images divided by 255,
16-bit ones by 65535, see :func:`to_float`): every colour operation clips to it.

The operations of the official TensorFlow code that differ from torchvision's are here too,
selected by :class:`~simclr.config.AugmentConfig` (see docs/design.md, "Fidelity to the
official code"): TensorFlow's bicubic resizes (:func:`resized_crop` with ``interpolation``),
additive brightness, ``tf.image.adjust_contrast`` and ``tf.image.adjust_saturation``
(:func:`color_jitter` with ``brightness_mode`` / ``color_mode``) and the zero-padded blur
(:func:`gaussian_blur` with ``padding``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.augment.params import BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewParams

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
"""ITU-R 601-2 luma weights, with torchvision's rounding of the red weight (0.2989); TensorFlow's
``rgb_to_grayscale`` uses the same three numbers."""

INTERPOLATIONS = ("bilinear", "bicubic_tf1", "bicubic_tf2")
"""Resize methods of :func:`resized_crop` (see ``AugmentConfig.interpolation``)."""

TF_CUBIC_TABLE = 1024
"""TensorFlow's bicubic resize reads its weights from a table of 1024 steps per pixel, so the
fractional source position is rounded to a multiple of 1/1024."""


def _per_sample(values: Tensor, images: Tensor) -> Tensor:
    """Reshape ``[B]`` values to ``[B, 1, 1, 1]`` in the images' dtype and device."""
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def _check_rgb(images: Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} needs RGB images [B, 3, H, W], got shape {tuple(images.shape)}")


def _check_batch(images: Tensor, name: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{name} needs images [B, C, H, W], got shape {tuple(images.shape)}")


def to_float(images: Tensor, *, copy: bool = True) -> Tensor:
    """float32 pixels for the views and the encoder: uint8 divided by 255, floats as they are.

    Float images are taken to be on the [0, 1] scale already: the readers divide 16-bit
    images by 65535 and keep float data as it is (:mod:`simclr.data.datasets`).

    Args:
        images: uint8 or floating-point images.
        copy: Always return a new buffer (the colour stages then work in place); without it a
            float32 input is returned as it is.

    Raises:
        TypeError: another dtype.
    """
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255)
    if images.is_floating_point():
        return images.to(torch.float32, copy=copy)
    raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")


CPU_GROUP_PIXELS = 1 << 18
"""Pixels per plane in one group of samples on the CPU (see :func:`_group_size`).

Each pass of an eager element-wise kernel reads and writes whole planes; in groups of about
256k pixels (1 MiB per float32 plane: 5 views of 224 px, 256 of 32 px) the intermediates are
reused from the allocator and the caches instead of being faulted in fresh from memory, while
the fixed cost of each call stays small. Measured on one core, the views of 224 px (hue and
blur) ran 1.75x faster than with the whole batch at once, those of 32 px 1.15x; smaller groups
were no faster at 224 px and slower at 32 px, where the per-call cost dominates.
"""


def _group_size(images: Tensor) -> int:
    """Samples per group: about :data:`CPU_GROUP_PIXELS` pixels per plane, at least one.

    Only on the CPU; on accelerators one launch per kernel over the whole batch is what is
    fast, so the group is the batch.
    """
    if images.device.type != "cpu":
        return max(1, images.shape[0])
    return max(1, CPU_GROUP_PIXELS // max(1, images.shape[-2] * images.shape[-1]))


def _cpu_slices(images: Tensor) -> list[slice]:
    """Consecutive groups of samples (see :func:`_group_size`)."""
    size = _group_size(images)
    return [slice(start, start + size) for start in range(0, images.shape[0], size)]


def _update_selected_(
    images: Tensor,
    index: Tensor,
    kernel: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """Replace ``images[index]`` by ``kernel(images[index], index)``, group by group.

    Only the selected samples are read and written.
    """
    for group in index.split(_group_size(images)) if index.numel() else ():
        images.index_copy_(0, group, kernel(images.index_select(0, group), group))
    return images


def _source_coords(start: Tensor, length: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """Input pixel coordinates sampled by a bilinear resize of ``[start, start + length)``.

    Half-pixel centres (``align_corners=False``), clamped to the crop's first and last pixel:
    this is what cropping and then calling ``interpolate`` does, so the crop border repeats
    instead of blending with pixels outside the box.
    """
    out = torch.arange(size, device=start.device, dtype=dtype)
    start = start.to(dtype)[:, None]
    length = length.to(dtype)[:, None]
    src = start + (out[None, :] + 0.5) * (length / size) - 0.5
    return torch.minimum(torch.maximum(src, start), start + length - 1)


def resized_crop(
    images: Tensor,
    boxes: Tensor,
    size: int | tuple[int, int],
    flip: Tensor | None = None,
    interpolation: str = "bilinear",
) -> Tensor:
    """Crop a box out of each image and resize it, bilinearly in one ``grid_sample``.

    Equivalent to torchvision's ``resized_crop(image, top, left, height, width, size,
    antialias=False)`` per image. The sampling grid holds, for every output pixel, the
    half-pixel-centred source coordinate inside that sample's box, clamped to the box (as
    cropping first would), so the result matches within float rounding (max abs diff about
    1e-5 at 224 px). No antialiasing: SimCLR crops are mostly upsampled, and the official
    TensorFlow code's bicubic resizes do not antialias either. ``bicubic_tf1`` and
    ``bicubic_tf2`` are those resizes instead (see :func:`tf_bicubic_taps`), as two passes of
    four gathered taps per output pixel.

    Why ``grid_sample``: measured on 2 CPU threads it was the fastest exact option (224 px,
    B=64: 29 ms, against 60 ms for ``torchvision.ops.roi_align`` and 103 ms for two batched
    interpolation matmuls); ``roi_align`` also differs on the box border, since it blends
    with pixels outside the box instead of clamping to it.

    Args:
        images: Float images.
        boxes: ``(top, left, height, width)`` per sample, inside the image.
        size: Output side S, or ``(height, width)``.
        flip: Optional bool mask: these samples' crops come out mirrored left-right, as
            :func:`hflip` of the result would give, at no cost (their grid runs right to left).
        interpolation: ``bilinear``, ``bicubic_tf1`` (TF1 ``tf.image.resize_bicubic``) or
            ``bicubic_tf2`` (TF2 ``tf.image.resize`` with ``method="bicubic"``). The bicubic
            results may overshoot [0, 1] a little, as TensorFlow's do.

    Returns:
        The resized crops, in the images' dtype (float32 for integer images).

    Shape:
        - images: ``[B, C, H, W]``
        - boxes: ``[B, 4]``
        - flip: ``[B]``
        - output: ``[B, C, S, S]`` (or ``[B, C, height, width]``)
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    n, c, height, width = images.shape
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if n == 0:
        return images.new_empty((0, c, out_h, out_w))
    dtype = images.dtype if images.is_floating_point() else torch.float32
    boxes = boxes.to(images.device)
    top, left, box_h, box_w = boxes.unbind(dim=1)
    if interpolation != "bilinear":
        legacy = interpolation == "bicubic_tf1"
        rows, row_w = tf_bicubic_taps(top, box_h, out_h, legacy=legacy)
        cols, col_w = tf_bicubic_taps(left, box_w, out_w, legacy=legacy)
        if flip is not None:
            mirrored = flip.to(images.device)[:, None, None]
            cols = torch.where(mirrored, cols.flip(1), cols)
            col_w = torch.where(mirrored, col_w.flip(1), col_w)
        return _gather_resize(images.to(dtype), rows, row_w.to(dtype), cols, col_w.to(dtype))
    ys = _source_coords(top, box_h, out_h, dtype)
    xs = _source_coords(left, box_w, out_w, dtype)
    if flip is not None:
        xs = torch.where(flip.to(images.device)[:, None], xs.flip(1), xs)
    # grid_sample's normalised coordinates with align_corners=False: x_pix = ((g + 1) W - 1) / 2.
    gy = (2 * ys + 1) / height - 1
    gx = (2 * xs + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(
        images.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def tf_bicubic_taps(
    start: Tensor, length: Tensor, size: int, *, legacy: bool
) -> tuple[Tensor, Tensor]:
    """Source pixels and weights of TensorFlow's bicubic resize of ``[start, start + length)``.

    The resize kernel of ``resize_bicubic_op.cc``, per output pixel ``o`` with ``scale =
    length / size`` (float32, as the kernel): the source position is ``x = o scale``
    (``legacy``: TF1's ``tf.image.resize_bicubic``, ``half_pixel_centers=False``) or ``x = (o +
    0.5) scale - 0.5`` (TF2's ``tf.image.resize(method="bicubic")``, half-pixel centres); with
    ``i = floor(x)`` and ``d`` = ``x - i`` rounded to a multiple of 1/:data:`TF_CUBIC_TABLE`,
    the taps ``i - 1 .. i + 2`` weigh ``K(1 + d), K(d), K(1 - d), K(2 - d)`` with the cubic
    convolution kernel ``K`` of parameter ``a = -0.75`` (legacy) or Keys' ``a = -0.5``. Taps
    outside the crop are moved to its edge pixel (legacy) or dropped with the remaining weights
    renormalised to sum 1 (half-pixel).

    Args:
        start: First pixel of each sample's crop along the axis.
        length: Crop length along the axis (positive).
        size: Output length.
        legacy: TF1 semantics (see above) instead of TF2's.

    Returns:
        Absolute source indices (int64) and float32 weights.

    Shape:
        - start, length: ``[B]``
        - outputs: ``[B, size, 4]``
    """
    f32 = torch.float32
    device = start.device
    wide = f32 if device.type == "mps" else torch.float64
    a = -0.75 if legacy else -0.5
    scale = length.to(f32)[:, None] / size
    out = torch.arange(size, device=device, dtype=f32)[None, :]
    pos = out * scale if legacy else (out + 0.5) * scale - 0.5
    base = torch.floor(pos)
    d = (torch.round((pos - base) * TF_CUBIC_TABLE) / TF_CUBIC_TABLE).to(wide)

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 <= |x| <= 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = torch.stack([far(1 + d), near(d), near(1 - d), far(2 - d)], dim=-1).to(f32)
    taps = base.long()[..., None] + torch.arange(-1, 3, device=device)
    inside = torch.minimum(taps.clamp(min=0), (length.to(device) - 1)[:, None, None])
    if not legacy:
        weights = torch.where(inside == taps, weights, 0.0)
        total = weights[..., 0] + weights[..., 1] + weights[..., 2] + weights[..., 3]
        usable = total.abs() >= 1000 * torch.finfo(f32).tiny
        weights = torch.where(usable[..., None], weights * (1 / total)[..., None], weights)
    return inside + start.to(device)[:, None, None], weights


def _gather_resize(
    images: Tensor, rows: Tensor, row_w: Tensor, cols: Tensor, col_w: Tensor
) -> Tensor:
    """Separable 4-tap resize: rows first, then columns (TensorFlow's order).

    Each pass copies whole source lines with ``index_select`` (lines of all samples stacked,
    so one call per tap serves the batch) and adds its four weighted taps in order.

    Shape:
        - images: ``[B, C, H, W]``
        - rows, row_w: ``[B, S_h, 4]``
        - cols, col_w: ``[B, S_w, 4]``
        - output: ``[B, C, S_h, S_w]``
    """
    n, c, height, width = images.shape
    out_h, out_w = rows.shape[1], cols.shape[1]
    first = torch.arange(n, device=images.device)[:, None]
    lines = images.permute(0, 2, 1, 3).reshape(n * height, c * width)  # [B H, C W]
    tall = _weighted_lines(lines, rows + (first * height)[..., None], row_w)  # [B S_h, C W]
    lines = tall.view(n, out_h, c, width).permute(0, 3, 2, 1).reshape(n * width, c * out_h)
    wide = _weighted_lines(lines, cols + (first * width)[..., None], col_w)  # [B S_w, C S_h]
    return wide.view(n, out_w, c, out_h).permute(0, 2, 3, 1).contiguous()


def _weighted_lines(lines: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """``sum_t weights[..., t] * lines[index[..., t]]``, taps added in order.

    Shape:
        - lines: ``[L, D]``
        - index, weights: ``[B, S, 4]``
        - output: ``[B S, D]``
    """
    out: Tensor | None = None
    for t in range(4):
        term = lines.index_select(0, index[..., t].reshape(-1))
        term.mul_(weights[..., t].reshape(-1, 1))
        out = term if out is None else out.add_(term)
    assert out is not None
    return out


def _selected(mask: Tensor, images: Tensor) -> Tensor:
    """Indices of the samples selected by a ``[B]`` bool mask, on the images' device."""
    return mask.to(device=images.device, dtype=torch.bool).nonzero().squeeze(1)


def hflip(images: Tensor, mask: Tensor) -> Tensor:
    """Mirror the samples selected by ``mask`` left-right.

    Shape:
        - images: ``[B, C, H, W]``
        - mask: ``[B]`` bool
        - output: ``[B, C, H, W]``
    """
    return hflip_(images.clone(), mask)


def hflip_(images: Tensor, mask: Tensor) -> Tensor:
    """:func:`hflip` in place: only the selected samples are read and written."""
    return _update_selected_(images, _selected(mask, images), lambda chosen, _: chosen.flip(-1))


def rgb_to_gray(images: Tensor) -> Tensor:
    """Luma of RGB images with the ITU-R 601-2 weights (as torchvision and PIL).

    Shape:
        - images: ``[B, 3, H, W]``
        - output: ``[B, 1, H, W]``
    """
    r, g, b = images.unbind(dim=1)
    wr, wg, wb = GRAY_WEIGHTS
    gray = r * wr  # then fused multiply-adds in place: three passes, one new tensor
    return gray.add_(g, alpha=wg).add_(b, alpha=wb).unsqueeze(1)


def grayscale(images: Tensor, mask: Tensor) -> Tensor:
    """Replace the samples selected by ``mask`` with their luma, keeping 3 channels.

    Keeping three identical channels (torchvision's ``RandomGrayscale`` behaviour) lets the
    encoder's input shape stay fixed.

    Shape:
        - images: ``[B, 3, H, W]``
        - mask: ``[B]`` bool
        - output: ``[B, 3, H, W]``
    """
    return grayscale_(images.clone(), mask)


def grayscale_(images: Tensor, mask: Tensor) -> Tensor:
    """:func:`grayscale` in place: only the selected samples are read and written."""
    _check_rgb(images, "grayscale")
    return _update_selected_(
        images, _selected(mask, images), lambda chosen, _: rgb_to_gray(chosen).expand_as(chosen)
    )


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * images + (1 - factor) * other``, clamped to [0, 1] (torchvision's blend).

    ``factor`` is ``[B, 1, 1, 1]``; ``other`` broadcasts against the images.
    """
    return (images * factor + other * (1 - factor)).clamp_(0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Multiply each sample by its brightness factor, clamped to [0, 1].

    Shape:
        - images: ``[B, C, H, W]``
        - factor: ``[B]``, non-negative
        - output: ``[B, C, H, W]``
    """
    return (images * _per_sample(factor, images)).clamp_(0, 1)


def gray_level(images: Tensor) -> Tensor:
    """The gray level of each pixel: the luma for RGB, the mean over channels otherwise.

    Shape:
        - images: ``[B, C, H, W]``
        - output: ``[B, 1, H, W]``
    """
    if images.shape[1] == 3:
        return rgb_to_gray(images)
    return images.mean(dim=1, keepdim=True)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each sample with the mean of its grayscale image (as torchvision and PIL).

    For C != 3 the blend is with the mean over every channel and pixel (:func:`gray_level`).

    Shape:
        - images: ``[B, C, H, W]``
        - factor: ``[B]``, non-negative
        - output: ``[B, C, H, W]``
    """
    _check_batch(images, "adjust_contrast")
    mean = gray_level(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, _per_sample(factor, images))


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each sample with its own grayscale image.

    Shape:
        - images: ``[B, 3, H, W]``
        - factor: ``[B]``, non-negative (0 gives grayscale, 1 the input)
        - output: ``[B, 3, H, W]``
    """
    _check_rgb(images, "adjust_saturation")
    return _blend(images, rgb_to_gray(images), _per_sample(factor, images))


def adjust_brightness_additive(images: Tensor, delta: Tensor) -> Tensor:
    """Add each sample's offset, clipped to [0, 1].

    ``tf.image.adjust_brightness``, then the clip the official colour jitter applies after
    every operation.

    Shape:
        - images: ``[B, C, H, W]``
        - delta: ``[B]``
        - output: ``[B, C, H, W]``
    """
    return (images + _per_sample(delta, images)).clamp_(0, 1)


def adjust_contrast_tf(images: Tensor, factor: Tensor) -> Tensor:
    """``tf.image.adjust_contrast``, ``(x - m) f + m``, clipped to [0, 1].

    ``m`` is the mean of each channel of the sample (torchvision uses the mean gray level).

    Shape:
        - images: ``[B, C, H, W]``
        - factor: ``[B]``, non-negative
        - output: ``[B, C, H, W]``
    """
    mean = images.mean(dim=(-2, -1), keepdim=True)
    return ((images - mean) * _per_sample(factor, images) + mean).clamp_(0, 1)


def adjust_saturation_tf(images: Tensor, factor: Tensor) -> Tensor:
    """``tf.image.adjust_saturation``: the HSV saturation times ``f``, clipped to [0, 1].

    Hue and value are kept, so in RGB every channel moves along the line to the pixel's maximum
    ``v``: ``v - k (v - x)`` with ``k = S' / S = min(f, v / (v - min))`` (the clip of ``S f`` at
    1), and a gray or non-positive pixel becomes ``v``. One pass without the HSV round trip.

    Shape:
        - images: ``[B, 3, H, W]``
        - factor: ``[B]``, non-negative
        - output: ``[B, 3, H, W]``
    """
    _check_rgb(images, "adjust_saturation_tf")
    return _saturate_tf(images, factor.to(device=images.device, dtype=images.dtype)).clamp_(0, 1)


def _saturate_tf(images: Tensor, factor: Tensor) -> Tensor:
    """:func:`adjust_saturation_tf` before the clip, into a new tensor (``factor``: ``[B]``)."""
    r, g, b = images.unbind(dim=1)
    top = torch.maximum(torch.maximum(r, g), b)
    chroma = top - torch.minimum(torch.minimum(r, g), b)
    colored = (top > 0) & (chroma > 0)
    tiny = torch.finfo(images.dtype).tiny
    keep = torch.minimum(factor.view(-1, 1, 1), top / chroma.clamp_min(tiny))
    keep = torch.where(colored, keep, 0.0).unsqueeze(1)
    top = top.unsqueeze(1)
    return top - keep * (top - images)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each sample by its shift (in turns), through HSV.

    RGB -> HSV with the hexcone formulas (red, then green, then blue wins ties, as PIL and
    torchvision; hue 0 where the pixel is gray), add the shift, then back to RGB: channel
    ``n`` (5, 3, 1 for red, green, blue) is ``v - (v s) f((n + 6 h) mod 6)`` with the
    trapezoid ``f(k) = clamp(min(k, 4 - k), 0, 1)``. Written with one division, one modulo
    and no six-way sector gather, to keep the number of passes over memory low; on the CPU it
    runs in cache-sized groups of samples (:func:`_group_size`). Matches torchvision's
    ``adjust_hue`` within about 2e-6.

    Shape:
        - images: ``[B, 3, H, W]``
        - shift: ``[B]``, in [-0.5, 0.5]
        - output: ``[B, 3, H, W]``
    """
    _check_rgb(images, "adjust_hue")
    shift = shift.to(device=images.device, dtype=images.dtype)
    out = torch.empty_like(images)
    for part in _cpu_slices(images):
        out[part] = _rotate_hue(images[part], shift[part])
    return out


def _rotate_hue(images: Tensor, shift: Tensor) -> Tensor:
    """:func:`adjust_hue` of one group, into a new tensor."""
    r, g, b = images.unbind(dim=1)
    # element-wise over the three planes: faster than a reduction across the channel dim
    max_c = torch.maximum(torch.maximum(r, g), b)
    min_c = torch.minimum(torch.minimum(r, g), b)
    chroma = max_c - min_c  # = v * s
    # Hue in sextants, up to a multiple of 6: (g - b) / c, (b - r) / c + 2 or (r - g) / c + 4,
    # red winning ties, then green. The choice is made with exact 0/1 weights,
    # 1 + sign(channel - max), and lerp (exact at 0 and 1): on the CPU, comparisons and
    # torch.where cost 5-10x a float operation. A gray pixel has c = 0 and a zero numerator,
    # so the clamped division gives hue 0.
    is_red, is_green = ((channel - max_c).sign_().add_(1) for channel in (r, g))
    hue = torch.lerp((r - g).add_(chroma, alpha=4), (b - r).add_(chroma, alpha=2), is_green)
    hue = torch.lerp(hue, g - b, is_red)
    hue.div_(chroma.clamp_min(torch.finfo(images.dtype).tiny))
    hue.add_(shift.view(-1, 1, 1), alpha=6)
    hue.sub_(torch.floor(hue / 6), alpha=6)  # mod 6, cheaper than torch.remainder on the CPU
    # f((n + h) mod 6) is the distance of (n + h) to 5 around the circle of length 6, minus 1,
    # clamped to [0, 1]; with h in [0, 6] that distance is 3 - ||h + n - 5| - 3| for every
    # channel, so only one plane needed the modulo.
    out = torch.empty_like(images)
    for channel, offset in enumerate((0.0, -2.0, -4.0)):  # red, green, blue
        # plane by plane: broadcasting one plane against three is slow on the CPU
        ramp = hue.add(offset).abs_().sub_(3).abs_().neg_().add_(2).clamp_(0, 1)
        # v - c f stays in [min, max] (c = v - min), so no clamp is needed after it.
        torch.addcmul(max_c, ramp, chroma, value=-1, out=out[:, channel])
    return out


def color_jitter(
    images: Tensor,
    params: ViewParams,
    active: tuple[bool, bool, bool, bool] = (True, True, True, True),
    *,
    brightness_mode: str = "multiplicative",
    color_mode: str = "torchvision",
) -> Tensor:
    """SimCLR colour distortion: the four jitter operations in each sample's own order.

    Samples with ``params.jitter`` off are returned unchanged. For the others, step ``k``
    applies operation ``params.jitter_order[:, k]`` (brightness, contrast, saturation or hue),
    each clamping to [0, 1], like torchvision's ``ColorJitter`` with a random permutation per
    image and like the official code's ``color_jitter_rand`` (which clips after each step).

    Brightness, contrast and saturation are all a blend ``f x + (1 - f) t`` with ``t`` = 0,
    the mean gray level or the gray image, so one step applies whichever of the three each
    sample needs in a single fused pass, ``f x + a gray + m mean`` with per-sample
    coefficients (zero for the terms a sample does not use, and ``f = 1`` for samples whose
    step is hue or whose jitter is off, which leaves them exactly unchanged). Hue, the
    expensive operation, reads and writes only the samples whose step is hue.

    Args:
        images: Float images in [0, 1]: RGB, or any number of channels when saturation and
            hue are inactive (brightness and contrast then treat all channels alike).
        params: Per-sample parameters (``jitter``, ``jitter_order`` and the four factors).
        active: Which of (brightness, contrast, saturation, hue) to run at all; an inactive
            operation is skipped (the recipe's amount is 0, so it would be the identity, or
            the images are not RGB).
        brightness_mode: ``multiplicative`` (``params.brightness`` is a factor) or
            ``additive`` (an offset, :func:`adjust_brightness_additive`).
        color_mode: ``torchvision`` or ``tf`` (:func:`adjust_contrast_tf`, whose per-channel
            means join the fused pass, and :func:`adjust_saturation_tf`, which like hue reads and
            writes only the samples whose step it is).

    Returns:
        The jittered images.

    Raises:
        ValueError: saturation or hue active on images that are not RGB.

    Shape:
        - images: ``[B, C, H, W]`` (C = 3 when saturation or hue is active)
        - output: ``[B, C, H, W]``
    """
    return color_jitter_(
        images.clone(), params, active, brightness_mode=brightness_mode, color_mode=color_mode
    )


def color_jitter_(
    images: Tensor,
    params: ViewParams,
    active: tuple[bool, bool, bool, bool] = (True, True, True, True),
    *,
    brightness_mode: str = "multiplicative",
    color_mode: str = "torchvision",
) -> Tensor:
    """:func:`color_jitter` in place; hue reads and writes only the samples it changes."""
    if active[SATURATION] or active[HUE]:
        _check_rgb(images, "color_jitter with saturation or hue")
    else:
        _check_batch(images, "color_jitter")
    if brightness_mode not in ("multiplicative", "additive"):
        raise ValueError(f"brightness_mode: multiplicative|additive, got {brightness_mode!r}")
    if color_mode not in ("torchvision", "tf"):
        raise ValueError(f"color_mode must be torchvision or tf, got {color_mode!r}")
    if images.shape[0] == 0:
        return images
    additive, tf_color = brightness_mode == "additive", color_mode == "tf"
    device, dtype = images.device, images.dtype
    apply = params.jitter.to(device)
    order = params.jitter_order.to(device)
    factors = torch.stack([params.brightness, params.contrast, params.saturation], dim=1)
    factors = factors.to(device=device, dtype=dtype)
    blend_active = torch.tensor(active[:3], device=device)
    hue = params.hue.to(device=device, dtype=dtype)
    saturation = factors[:, SATURATION]
    for step in range(4):
        op = torch.where(apply, order[:, step], torch.full_like(order[:, step], -1))
        if any(active[:3]):  # brightness, contrast or saturation: one fused pass per sample
            blend_op = op.clamp(BRIGHTNESS, SATURATION)
            is_blend = (op >= 0) & (op < HUE) & blend_active[blend_op]
            if tf_color:  # TF's saturation is not a blend: its own pass below
                is_tf_saturation = is_blend & (op == SATURATION)
                is_blend = is_blend & (op != SATURATION)
            factor = factors.gather(1, blend_op[:, None]).squeeze(1)
            factor = torch.where(is_blend, factor, torch.ones_like(factor))
            offset = None
            if additive:  # the brightness "factor" is an offset: x + d
                is_offset = is_blend & (op == BRIGHTNESS)
                offset = torch.where(is_offset, factor, 0.0).view(-1, 1, 1, 1)
                factor = torch.where(is_offset, 1.0, factor)
            rest = 1 - factor  # weight of the blend target; 0 leaves the sample unchanged
            gray_coef = torch.where(op == SATURATION, rest, torch.zeros_like(rest))
            mean_coef = torch.where(op == CONTRAST, rest, torch.zeros_like(rest))
            coefs = torch.stack([factor, gray_coef, mean_coef]).view(3, -1, 1, 1, 1)
            # In place over consecutive samples: cheaper than gathering the ones that blend.
            for part in _cpu_slices(images):
                if additive or tf_color:
                    _jitter_blend_tf_(
                        images[part],
                        coefs[:, part],
                        None if offset is None else offset[part],
                        channel_mean=tf_color,
                    )
                else:
                    _jitter_blend_(images[part], coefs[:, part])
            if tf_color and active[SATURATION]:
                _update_selected_(
                    images,
                    is_tf_saturation.nonzero().squeeze(1),
                    lambda x, group: _saturate_tf(x, saturation[group]).clamp_(0, 1),
                )
        if active[HUE]:
            _update_selected_(
                images,
                (op == HUE).nonzero().squeeze(1),
                lambda x, group: _rotate_hue(x, hue[group]),
            )
    return images


def _jitter_blend_(images: Tensor, coefs: Tensor) -> Tensor:
    """``f x + a gray(x) + m mean(gray(x))`` in place, clamped to [0, 1].

    ``coefs`` holds ``(f, a, m)`` per sample, ``[3, B, 1, 1, 1]``: brightness is ``(f, 0, 0)``,
    saturation ``(f, 1 - f, 0)``, contrast ``(f, 0, 1 - f)`` and ``(1, 0, 0)`` no change.
    ``gray`` is :func:`gray_level` (the luma of RGB, the channel mean otherwise).
    """
    factor, gray_coef, mean_coef = coefs
    gray = gray_level(images)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    images.mul_(factor).addcmul_(gray, gray_coef).add_(mean * mean_coef)
    return images.clamp_(0, 1)


def _jitter_blend_tf_(
    images: Tensor, coefs: Tensor, offset: Tensor | None, *, channel_mean: bool
) -> Tensor:
    """:func:`_jitter_blend_` with an additive brightness and TF's contrast.

    ``offset`` (``[B, 1, 1, 1]``) is added after the blend; with ``channel_mean`` the contrast
    blends with each channel's mean and the saturation blend is unused (its coefficients are 0).
    """
    factor, gray_coef, mean_coef = coefs
    if channel_mean:
        mean = images.mean(dim=(2, 3), keepdim=True)
        images.mul_(factor).add_(mean * mean_coef)
    else:
        gray = gray_level(images)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        images.mul_(factor).addcmul_(gray, gray_coef).add_(mean * mean_coef)
    if offset is not None:
        images.add_(offset)
    return images.clamp_(0, 1)


def gaussian_kernels(sigma: Tensor, kernel_size: int, dtype: torch.dtype) -> Tensor:
    """Normalised 1-D Gaussian kernels, one per sample, centred on the middle tap.

    Shape:
        - sigma: ``[B]``
        - output: ``[B, kernel_size]``
    """
    taps = torch.arange(kernel_size, device=sigma.device, dtype=dtype) - (kernel_size - 1) / 2
    sigma = sigma.to(dtype)[:, None]
    weights = torch.exp(-(taps[None, :] ** 2) / (2 * sigma**2))
    return weights / weights.sum(dim=1, keepdim=True)


BLUR_PADDINGS = ("reflect", "zeros")
"""Borders of :func:`gaussian_blur` (see ``AugmentConfig.blur_padding``)."""


def _blur_all(images: Tensor, sigma: Tensor, kernel_size: int, padding: str = "reflect") -> Tensor:
    n, c, height, width = images.shape
    pad = kernel_size // 2
    weights = gaussian_kernels(sigma.to(images.device), kernel_size, images.dtype)
    weights = weights.repeat_interleave(c, dim=0)  # one kernel per (sample, channel) group
    x = images.reshape(1, n * c, height, width)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect" if padding == "reflect" else "constant")
    x = F.conv2d(x, weights.view(n * c, 1, 1, kernel_size), groups=n * c)
    x = F.conv2d(x, weights.view(n * c, 1, kernel_size, 1), groups=n * c)
    return x.view(n, c, height, width)


def gaussian_blur(
    images: Tensor,
    sigma: Tensor,
    kernel_size: int,
    mask: Tensor | None = None,
    padding: str = "reflect",
) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma, on the samples selected by ``mask``.

    The per-sample kernels run as one grouped (depthwise) convolution over ``B * C``
    channels, first along rows then along columns; measured on 2 CPU threads this is about 8x
    faster than an unfold-and-reduce formulation and 3-40x faster than a per-image loop.
    Borders use reflect padding to match torchvision's ``gaussian_blur``, or with ``padding=
    "zeros"`` the official TensorFlow code's SAME convolution (zeros outside the image, which
    darkens the border).

    Args:
        images: Float images.
        sigma: Standard deviation in pixels per sample (positive).
        kernel_size: Odd kernel side, smaller than twice the image side.
        mask: Samples to blur; ``None`` blurs all. Only selected samples are computed.
        padding: ``reflect`` or ``zeros``.

    Returns:
        The blurred images.

    Shape:
        - images: ``[B, C, H, W]``
        - sigma: ``[B]``
        - mask: ``[B]`` bool
        - output: ``[B, C, H, W]``
    """
    _check_blur_kernel(images, kernel_size, padding)
    if mask is None:
        if images.shape[0] == 0:
            return images.clone()
        return _blur_all(images, sigma, kernel_size, padding)
    return gaussian_blur_(images.clone(), sigma, kernel_size, mask, padding)


def gaussian_blur_(
    images: Tensor, sigma: Tensor, kernel_size: int, mask: Tensor, padding: str = "reflect"
) -> Tensor:
    """:func:`gaussian_blur` of the samples selected by ``mask``, written back in place."""
    _check_blur_kernel(images, kernel_size, padding)
    sigma = sigma.to(images.device)
    return _update_selected_(
        images,
        _selected(mask, images),
        lambda chosen, group: _blur_all(chosen, sigma[group], kernel_size, padding),
    )


def _check_blur_kernel(images: Tensor, kernel_size: int, padding: str = "reflect") -> None:
    if padding not in BLUR_PADDINGS:
        raise ValueError(f"padding must be one of {BLUR_PADDINGS}, got {padding!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    too_large = kernel_size // 2 >= min(images.shape[-2:], default=0)
    if padding == "reflect" and too_large and images.numel() > 0:
        raise ValueError(
            f"kernel_size {kernel_size} too large for reflect padding of "
            f"{images.shape[-2]}x{images.shape[-1]} images"
        )


def blur_kernel_size(size: int, fraction: float) -> int:
    """Blur kernel side for images of side ``size``: ``fraction`` of it, odd, at least 3.

    The paper uses 10% of the image side (23 px at 224 px); the kernel is also kept small
    enough for reflect padding (half of it below the image side).
    """
    kernel = int(size * fraction)
    if kernel % 2 == 0:
        kernel += 1
    # Reflect padding needs kernel // 2 < size, so the largest odd kernel is 2 size - 1.
    return max(1, min(max(kernel, 3), 2 * size - 1))
