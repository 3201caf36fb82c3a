"""The per-image torchvision version of the SimCLR recipe, the reference for tests and speed."""

from __future__ import annotations

import torch
import torchvision.transforms.v2 as T

from simclr.augment.functional import blur_kernel_size
from simclr.config import AugmentConfig


def reference_transform(cfg: AugmentConfig) -> T.Compose:
    """One view of one image with torchvision's transforms (Chen et al. 2020, appendix A).

    The same recipe as :class:`simclr.augment.SimCLRViews`, one image at a time on the CPU:
    random resized crop (antialiased, as torchvision's default), flip, colour jitter applied
    with probability ``jitter_p`` in a random order, grayscale, Gaussian blur, and conversion
    to float. It is the usual way SimCLR is reimplemented in PyTorch and the baseline the
    batched version is compared against. The colour operations run on uint8 pixels here, so
    values differ from the batched float pipeline by rounding. It is torchvision's recipe: the
    settings for the official code's semantics (``crop_method``, ``interpolation``,
    ``brightness_mode``, ``color_mode``, ``blur_padding``) are not used.

    Args:
        cfg: The recipe.

    Returns:
        A transform mapping a uint8 ``[C, H, W]`` tensor to a float32 ``[C, S, S]`` in [0, 1].
    """
    brightness, contrast, saturation, hue = cfg.jitter_amounts()
    kernel = blur_kernel_size(cfg.size, cfg.blur_kernel_fraction)
    return T.Compose(
        [
            T.RandomResizedCrop(
                cfg.size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio), antialias=True
            ),
            T.RandomHorizontalFlip(p=cfg.flip_p),
            T.RandomApply([T.ColorJitter(brightness, contrast, saturation, hue)], p=cfg.jitter_p),
            T.RandomGrayscale(p=cfg.grayscale_p),
            T.RandomApply([T.GaussianBlur(kernel, sigma=tuple(cfg.blur_sigma))], p=cfg.blur_p),
            T.ToDtype(torch.float32, scale=True),
        ]
    )
