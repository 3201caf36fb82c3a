"""Two random views per image, batched on the images' device (Chen et al. 2020, appendix A).

Images of any number of channels C and of any bit depth: uint8 batches are divided by 255,
float batches (16-bit images divided by 65535, float data as it is) are used as they are, so a
16-bit image keeps its precision through the views. The crop, flip and blur act on every
channel alike; brightness and contrast scale all channels of an image by the same factor; hue,
saturation and grayscale exist for RGB only and are skipped when C != 3 (their random
parameters are still drawn, so the stream of a given batch size does not depend on C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.augment import functional as AF
from simclr.augment.params import ViewParams, sample_view_params
from simclr.config import AugmentConfig


def progressive_size(cfg: AugmentConfig, progress: float) -> int:
    """Side of the views at ``progress`` (0 to 1) of training, for progressive resolution.

    From ``cfg.start_size()`` (``progressive_from`` of ``size``) the side grows linearly to
    ``cfg.size`` at ``cfg.full_size_at``, taken in whole 8 px steps (16, 24, 32 px for 32 px
    views from 0.5): few distinct sizes, each a shape the convolution kernels handle well.
    Without ``progressive_from``: always ``size``.
    """
    start = cfg.start_size()
    if progress >= cfg.full_size_at:
        return cfg.size
    grown = (cfg.size - start) * max(0.0, progress) / cfg.full_size_at
    return min(cfg.size, start + 8 * int(grown // 8))


class SimCLRViews(nn.Module):
    """The SimCLR augmentation: two independently augmented views of every image in a batch.

    Stages, in the paper's order (arXiv 2002.05709, appendix A): random resized crop to
    ``cfg.size`` (bilinear, or TensorFlow's bicubic: ``cfg.interpolation``), horizontal flip,
    colour jitter with probability ``jitter_p`` (the four operations in a random order per
    view), grayscale, Gaussian blur with a kernel of ``blur_kernel_fraction`` of the side.
    ``cfg.crop_method``, ``brightness_mode``, ``color_mode`` and ``blur_padding`` choose
    between torchvision's semantics and the official TensorFlow code's. The whole batch is
    processed at once, with per-view random parameters, on whatever device the input is on
    (typically the GPU, fed uint8 to keep the host-to-device copy small). Images that are not
    RGB (C != 3 channels) get the geometric stages, brightness, contrast and blur only (see the
    module docstring). Both views of an
    image are drawn independently: the batch of ``2B`` views is augmented as one batch whose
    first ``B`` entries are the first views.

    Randomness comes only from this module's own :class:`torch.Generator`, created on the
    input's device at the first call and seeded from ``seed``: the same seed gives the same
    views. :meth:`manual_seed` restarts the stream (the training loop reseeds it at every step
    from (seed, step, rank), so its checkpoints need no random state);
    :meth:`get_rng_state` / :meth:`set_rng_state` let a loop of your own checkpoint the stream
    instead.

    Args:
        cfg: The recipe (probabilities, ranges, output size).
        seed: Seed of the generator.
    """

    def __init__(self, cfg: AugmentConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = int(seed)
        self.size = cfg.size
        """Side of the views drawn now: ``cfg.size`` until :meth:`set_progress` says otherwise."""
        amounts = cfg.jitter_amounts()
        self._jitter_ops = (
            amounts[0] > 0,
            amounts[1] > 0,
            amounts[2] > 0,
            amounts[3] > 0,
        )
        self._generator: torch.Generator | None = None
        self._pending_state: Tensor | None = None

    def extra_repr(self) -> str:
        """Show the recipe in ``print(module)``."""
        return f"cfg={self.cfg}, seed={self.seed}"

    def _rng(self, device: torch.device) -> torch.Generator:
        generator = self._generator
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            if self._pending_state is not None:
                _restore(generator, self._pending_state)
                self._pending_state = None
            self._generator = generator
        elif not _same_device(generator.device, device):
            raise RuntimeError(
                f"SimCLRViews generator lives on {generator.device} but the images are on "
                f"{device}; create a new SimCLRViews (or set_rng_state(torch.empty(0))) to "
                "move it"
            )
        return generator

    @property
    def blur_kernel(self) -> int:
        """Side of the blur kernel for views of the current :attr:`size`."""
        return AF.blur_kernel_size(self.size, self.cfg.blur_kernel_fraction)

    def set_progress(self, progress: float) -> None:
        """Where training is (0 to 1): sets the views' side (:func:`progressive_size`)."""
        self.size = progressive_size(self.cfg, progress)

    def manual_seed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (the training loop seeds every step)."""
        self.seed = int(seed)
        if self._generator is None:
            self._pending_state = None
        else:
            self._generator.manual_seed(self.seed)

    def get_rng_state(self) -> Tensor:
        """The generator state, for checkpoints.

        Returns:
            A uint8 tensor on the CPU; empty when no view has been drawn yet (resuming from it
            starts again from ``seed``).
        """
        if self._generator is None:
            if self._pending_state is not None:
                return self._pending_state.clone()
            return torch.empty(0, dtype=torch.uint8)
        return self._generator.get_state()

    def set_rng_state(self, state: Tensor) -> None:
        """Restore a state from :meth:`get_rng_state`, so the next views repeat exactly.

        Before the first call of the module the state is kept and applied when the generator
        is created; a state from a generator on another device type fails then. An empty
        state resets the module to a fresh generator seeded from ``seed``.
        """
        state = state.detach().to(device="cpu", dtype=torch.uint8)
        if state.numel() == 0:
            self._generator = None
            self._pending_state = None
        elif self._generator is None:
            self._pending_state = state.clone()
        else:
            _restore(self._generator, state)

    def sample_params(
        self, batch_size: int, height: int, width: int, device: torch.device
    ) -> ViewParams:
        """Draw the parameters of ``batch_size`` views of ``height`` x ``width`` images."""
        return sample_view_params(batch_size, height, width, self.cfg, self._rng(device))

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Two augmented views of each image.

        Args:
            images: uint8 images (or floats on the [0, 1] scale), either ``[B, C, H, W]`` of
                one size, cropped here, or ``[B, 2, C, S, S]``: two crops per image already cut
                at the output size (by :class:`simclr.augment.TwoCrops` in the loader workers),
                for which the crop stage is skipped. One channel is repeated to RGB; any other
                ``C`` is kept (hue, saturation and grayscale then only where C = 3).

        Returns:
            The first and second views, float32 (in [0, 1] for uint8 input).

        Shape:
            - images: ``[B, C, H, W]`` or ``[B, 2, C, S, S]``
            - outputs: two ``[B, C', S, S]``, S = :attr:`size` (``cfg.size`` unless progressive
              resolution is on), C' = 3 if C = 1 else C
        """
        size = self.size
        if images.ndim == 5:
            if images.shape[1] != 2:
                raise ValueError(
                    f"pre-cropped input must be [B, 2, C, S, S], got {tuple(images.shape)}"
                )
            full = self.cfg.size
            if tuple(images.shape[-2:]) != (full, full):
                raise ValueError(
                    f"pre-cropped views must be {full}x{full} (augment.size), "
                    f"got {images.shape[-2]}x{images.shape[-1]}"
                )
            n = images.shape[0]
            views = images.transpose(0, 1).reshape(2 * n, *images.shape[2:])
            x = AF.to_float(views)
            if size != full:  # progressive resolution: the workers cut full-size crops
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
            params = self.sample_params(2 * n, size, size, images.device)
        elif images.ndim == 4:
            n, _, height, width = images.shape
            params = self.sample_params(2 * n, height, width, images.device)
            source = AF.to_float(images, copy=False)  # the crops below write new buffers
            how = self.cfg.interpolation
            x = torch.cat(  # the flip is folded into the crops' sampling grids
                [
                    AF.resized_crop(source, params.boxes[:n], size, params.flip[:n], how),
                    AF.resized_crop(source, params.boxes[n:], size, params.flip[n:], how),
                ]
            )
            if how != "bilinear":
                x.clamp_(0, 1)  # bicubic overshoot
        else:
            raise ValueError(
                f"images must be [B, C, H, W] or [B, 2, C, S, S], got {tuple(images.shape)}"
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        # the crops of [B, C, H, W] input came out mirrored already
        x = self._augment_colors_(x, params, flip=images.ndim == 5)
        return x[:n], x[n:]

    def augment_colors(self, x: Tensor, params: ViewParams) -> Tensor:
        """Every stage after the crop: flip, colour jitter, grayscale, blur (``x`` is kept).

        Stages with probability 0 are skipped without touching the pixels, and so are hue,
        saturation and grayscale when C != 3.

        Shape:
            - x: ``[N, C, S, S]`` float in [0, 1]
            - output: ``[N, C, S, S]``
        """
        return self._augment_colors_(x.clone(), params)

    def _augment_colors_(self, x: Tensor, params: ViewParams, *, flip: bool = True) -> Tensor:
        """:meth:`augment_colors` in place, on a buffer this module owns.

        ``flip=False`` when the crop already mirrored the views (see ``AF.resized_crop``).
        """
        cfg = self.cfg
        rgb = x.shape[1] == 3
        # hue and saturation are RGB operations: other channel counts get brightness, contrast
        ops = self._jitter_ops if rgb else (self._jitter_ops[0], self._jitter_ops[1], False, False)
        if flip and cfg.flip_p > 0:
            AF.hflip_(x, params.flip)
        if cfg.jitter_p > 0 and any(ops):
            AF.color_jitter_(
                x,
                params,
                ops,
                brightness_mode=cfg.brightness_mode,
                color_mode=cfg.color_mode,
            )
        if cfg.grayscale_p > 0 and rgb:
            AF.grayscale_(x, params.grayscale)
        if cfg.blur_p > 0:
            AF.gaussian_blur_(x, params.sigma, self.blur_kernel, params.blur, cfg.blur_padding)
        return x


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name the same device when the current device is 0."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current
    )


def _restore(generator: torch.Generator, state: Tensor) -> None:
    try:
        generator.set_state(state.to(device="cpu", dtype=torch.uint8))
    except RuntimeError as err:
        raise ValueError(
            f"RNG state does not fit the {generator.device} generator of SimCLRViews: {err}"
        ) from None
