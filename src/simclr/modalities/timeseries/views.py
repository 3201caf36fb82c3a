"""Two random views per series, batched on the series' device (Um et al. 2017; TS-TCC).

A view of item i is made in this order:

1. *geometry*, one linear interpolation: a random window of the item's valid part (its
   fraction in ``crop_scale``), read through a random smooth *time warp*, resampled to the
   fitted length L;
2. *segment permutation* (with probability ``permute_p``): the L steps cut at random points into
   2 to ``permute_max_segments`` segments, concatenated in a random order;
3. normalisation, as the evaluation input gets it (:class:`Normalization`: each channel of each
   series z-normalised, or with the training set's channel statistics), so the magnitude
   changes below are relative to a unit standard deviation;
4. *magnitude warping*: times a smooth random curve through ``warp_knots`` + 2 knots drawn
   from N(1, ``magnitude_warp_sigma``), one curve per channel;
5. *scaling*: times a factor drawn from N(1, ``scaling_sigma``) per channel;
6. *jitter*: plus Gaussian noise N(0, ``jitter_sigma``) on every step.

Every random number is drawn by :func:`sample_view_params` (one entry per item, from one
generator, a fixed number of draws per batch size); the ``apply`` functions are deterministic
functions of those parameters, so a test can check that the batched views equal views made
one item at a time. The smooth curves are cubic convolution (``F.interpolate``, bicubic)
through the knots, the batched stand-in for the cubic splines of Um et al.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.config import TimeSeriesConfig
from simclr.modalities.base import SeededViews

MIN_SPEED = 0.01
"""Time-warp speeds are clamped to this, so the warp stays increasing even when the cubic
curve overshoots below zero (with ``time_warp_sigma`` of 0.2 a knot below 0 is a 5-sigma draw)."""
EPS = 1e-8
"""Standard deviations below this are treated as this: a constant channel normalises to 0."""


@dataclass
class SeriesViewParams:
    """Random parameters of one batch of views, one entry per item.

    Attributes:
        crop_start: Start of the window, as a fraction of the valid part. Shape: ``[B]``.
        crop_width: Width of the window, as a fraction of the valid part. Shape: ``[B]``.
        time_knots: Positive speeds of the time warp at ``K + 2`` equally spaced knots.
            Shape: ``[B, K + 2]``.
        bounds: Segment boundaries ``0 = b_0 <= b_1 <= ... <= b_M = L`` (unused segments are
            empty), int64. Shape: ``[B, M + 1]``.
        order: The order in which the M segments are concatenated, a permutation of
            ``0..M-1``, int64. Shape: ``[B, M]``.
        magnitude_knots: Magnitude-warp factors at the knots, per channel. Shape: ``[B, C, K+2]``.
        scale: Scaling factor per channel. Shape: ``[B, C]``.
        noise: Additive jitter. Shape: ``[B, C, L]``.
    """

    crop_start: Tensor
    crop_width: Tensor
    time_knots: Tensor
    bounds: Tensor
    order: Tensor
    magnitude_knots: Tensor
    scale: Tensor
    noise: Tensor

    def __len__(self) -> int:
        return int(self.crop_start.shape[0])

    def select(self, index: Tensor | slice) -> SeriesViewParams:
        """The parameters of a subset of items (an index tensor, bool mask or slice)."""
        return SeriesViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def sample_view_params(
    batch: int,
    channels: int,
    length: int,
    cfg: TimeSeriesConfig,
    generator: torch.Generator,
) -> SeriesViewParams:
    """Draw the parameters of ``batch`` views of ``channels`` x ``length`` steps.

    The draws happen on the generator's device, in float32; their number depends only on the
    arguments, never on the values drawn.
    """
    device = generator.device
    knots = cfg.warp_knots + 2
    segments = cfg.permute_max_segments

    def uniform(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=device)

    def normal(mean: float, sigma: float, *shape: int) -> Tensor:
        return torch.randn(shape, generator=generator, device=device).mul_(sigma).add_(mean)

    low, high = cfg.crop_scale
    crop_width = uniform(batch).mul_(high - low).add_(low)
    crop_start = uniform(batch).mul_(1 - crop_width)
    time_knots = normal(1.0, cfg.time_warp_sigma, batch, knots).clamp_(min=MIN_SPEED)

    # Segment permutation: k segments (1 = none) cut at k - 1 distinct random steps.
    permute = uniform(batch) < cfg.permute_p
    k = torch.ones(batch, dtype=torch.long, device=device)
    if segments >= 2:
        drawn_k = torch.randint(2, segments + 1, (batch,), generator=generator, device=device)
        k = torch.where(permute, drawn_k, k)
    bounds = _segment_bounds(uniform(batch, max(length - 1, 0)), k, segments, length)
    order_keys = uniform(batch, segments)
    used = torch.arange(segments, device=device) < k[:, None]
    order = torch.where(used, order_keys, 2.0).argsort(dim=1, stable=True)

    magnitude_knots = normal(1.0, cfg.magnitude_warp_sigma, batch, channels, knots)
    scale = normal(1.0, cfg.scaling_sigma, batch, channels)
    noise = normal(0.0, cfg.jitter_sigma, batch, channels, length)
    return SeriesViewParams(
        crop_start, crop_width, time_knots, bounds, order, magnitude_knots, scale, noise
    )


def _segment_bounds(cut_keys: Tensor, k: Tensor, segments: int, length: int) -> Tensor:
    """Boundaries of ``k`` segments cut at the steps with the smallest ``cut_keys``.

    Shape:
        cut_keys ``[B, L - 1]`` (one random key per step 1..L-1), k ``[B]`` ->
        ``[B, segments + 1]``: 0, the k - 1 cuts in increasing order, then L repeated.
    """
    batch, device = len(k), k.device
    cuts = cut_keys.argsort(dim=1)[:, : segments - 1] + 1  # distinct steps in 1..L-1
    missing = segments - 1 - cuts.shape[1]  # a series shorter than the segments asked
    filler = torch.full((batch, missing), length, dtype=torch.long, device=device)
    cuts = torch.cat([cuts, filler], dim=1)
    used = torch.arange(segments - 1, device=device) < (k[:, None] - 1)
    cuts = torch.where(used, cuts, length).sort(dim=1).values
    first = torch.zeros(batch, 1, dtype=torch.long, device=device)
    last = torch.full((batch, 1), length, dtype=torch.long, device=device)
    return torch.cat([first, cuts, last], dim=1)


def smooth_curve(knots: Tensor, length: int) -> Tensor:
    """A smooth curve through values at equally spaced knots, sampled at ``length`` steps.

    Cubic convolution (bicubic ``F.interpolate`` along one axis, corners aligned): the curve
    passes through every knot and has a continuous slope.

    Shape:
        knots ``[..., K]`` -> ``[..., length]``.
    """
    flat = knots.reshape(-1, 1, 1, knots.shape[-1])
    curve = F.interpolate(flat, size=(1, length), mode="bicubic", align_corners=True)
    return curve.reshape(*knots.shape[:-1], length)


def warped_grid(crop_start: Tensor, crop_width: Tensor, time_knots: Tensor, length: int) -> Tensor:
    """Where each output step reads the valid part, as a fraction of it (window + time warp).

    The warp is the normalised running sum of the speed curve through ``time_knots``: it rises
    from 0 to 1, faster where the speed is high. It is then mapped into the window
    ``[crop_start, crop_start + crop_width]``.

    Shape:
        crop_start, crop_width ``[B]``, time_knots ``[B, K]`` -> ``[B, length]`` in [0, 1].
    """
    speed = smooth_curve(time_knots, length).clamp_min(MIN_SPEED)
    run = speed.cumsum(dim=1)
    run = run - run[:, :1]
    total = run[:, -1:]
    warp = torch.where(total > 0, run / total.clamp_min(EPS), torch.zeros_like(run))
    return crop_start[:, None] + crop_width[:, None] * warp


def resample(inputs: Tensor, lengths: Tensor, grid: Tensor) -> Tensor:
    """Read each item's valid part at fractional positions, by linear interpolation.

    Position 0 is the first valid step and 1 the last (step ``lengths[i] - 1``); the padding
    after the valid part is never read.

    Shape:
        inputs ``[B, C, T]``, lengths ``[B]``, grid ``[B, L]`` -> ``[B, C, L]``.
    """
    last = (lengths.to(inputs.device) - 1).clamp_min(0)[:, None]
    position = grid.to(inputs.dtype).clamp(0, 1) * last.to(inputs.dtype)
    left = position.floor().long().clamp(min=torch.zeros_like(last), max=last)
    right = (left + 1).clamp(max=last)
    weight = (position - left.to(inputs.dtype))[:, None, :]
    channels = inputs.shape[1]
    x_left = inputs.gather(2, left[:, None, :].expand(-1, channels, -1))
    x_right = inputs.gather(2, right[:, None, :].expand(-1, channels, -1))
    return torch.lerp(x_left, x_right, weight)


def permute_segments(x: Tensor, bounds: Tensor, order: Tensor) -> Tensor:
    """Concatenate each item's segments ``[bounds[j], bounds[j+1])`` in the order ``order``.

    Shape:
        x ``[B, C, L]``, bounds ``[B, M + 1]``, order ``[B, M]`` -> ``[B, C, L]``.
    """
    length = x.shape[-1]
    starts = bounds[:, :-1]
    sizes = bounds[:, 1:] - starts
    new_sizes = sizes.gather(1, order)
    new_ends = new_sizes.cumsum(dim=1)
    step = torch.arange(length, device=x.device).expand(len(x), -1).contiguous()
    # the output step t falls in the first reordered segment that ends after it
    segment = torch.searchsorted(new_ends, step, right=True).clamp_max(order.shape[1] - 1)
    offset = step - (new_ends - new_sizes).gather(1, segment)
    source = starts.gather(1, order.gather(1, segment)) + offset
    return x.gather(2, source[:, None, :].expand(-1, x.shape[1], -1))


def standardize(x: Tensor) -> Tensor:
    """Z-normalise every channel of every item over its steps (population standard deviation).

    Shape:
        ``[B, C, L]`` -> ``[B, C, L]``.
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, correction=0).clamp_min(EPS)
    return (x - mean) / std


@dataclass(frozen=True)
class Normalization:
    """How views and evaluation inputs are normalised (``timeseries.normalize``).

    Attributes:
        mode: ``series`` (z-normalise each channel of each series over its steps), ``dataset``
            (subtract ``mean`` and divide by ``std``, per channel) or ``none``.
        mean: Per-channel mean of the training steps (``dataset`` only).
        std: Per-channel standard deviation of the training steps (``dataset`` only).
    """

    mode: str = "series"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __call__(self, x: Tensor) -> Tensor:
        """Normalise a batch. Shape: ``[B, C, L]`` -> ``[B, C, L]``."""
        if self.mode == "series":
            return standardize(x)
        if self.mode == "dataset":
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None]
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None]
            return (x - mean) / std
        return x


def channel_statistics(inputs: Tensor, lengths: Tensor) -> tuple[list[float], list[float]]:
    """Mean and (population) standard deviation of each channel over all valid steps.

    A constant channel gets a standard deviation of 1, so normalising only centres it.

    Shape:
        inputs ``[N, C, T]``, lengths ``[N]`` -> two lists of C floats.
    """
    steps = torch.arange(inputs.shape[-1], device=inputs.device)
    valid = (steps < lengths[:, None])[:, None, :]  # [N, 1, T]
    x = inputs.double()
    count = valid.sum().double()  # valid steps, the same in every channel
    mean = (x * valid).sum(dim=(0, 2)) / count
    var = (((x - mean[None, :, None]) * valid) ** 2).sum(dim=(0, 2)) / count
    std = var.sqrt()
    std = torch.where(std > EPS, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def apply_view(
    inputs: Tensor, lengths: Tensor, params: SeriesViewParams, normalize: Normalization
) -> Tensor:
    """The view of each item given its parameters (the stages of the module docstring).

    Shape:
        inputs ``[B, C, T]``, lengths ``[B]`` -> ``[B, C, L]`` with L = ``params.noise.shape[-1]``.
    """
    dtype = inputs.dtype
    length = params.noise.shape[-1]
    grid = warped_grid(params.crop_start, params.crop_width, params.time_knots, length)
    x = resample(inputs, lengths, grid)
    x = normalize(permute_segments(x, params.bounds, params.order))
    x = x * smooth_curve(params.magnitude_knots, length).to(dtype)
    x = x * params.scale.to(dtype)[:, :, None]
    return x + params.noise.to(dtype)


def evaluation_input(
    inputs: Tensor, lengths: Tensor, length: int, normalize: Normalization
) -> Tensor:
    """The valid part of each item resampled to ``length`` steps, then normalised.

    Shape:
        inputs ``[B, C, T]``, lengths ``[B]`` -> ``[B, C, length]``.
    """
    grid = torch.linspace(0, 1, length, device=inputs.device).expand(len(inputs), -1)
    return normalize(resample(inputs, lengths, grid))


class SeriesViews(SeededViews):
    """Two independent random views of every series in a batch (:func:`apply_view`).

    Args:
        cfg: The ``timeseries`` section (view strengths).
        length: Steps of every view (the fitted resampling length).
        normalize: The normalisation (the evaluation input's).
        seed: Seed of the generator (see :class:`~simclr.modalities.base.SeededViews`).
    """

    def __init__(
        self,
        cfg: TimeSeriesConfig,
        length: int,
        normalize: Normalization | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.cfg = cfg
        self.length = int(length)
        self.normalize = Normalization() if normalize is None else normalize

    def extra_repr(self) -> str:
        """Show the recipe in ``print(module)``."""
        return f"length={self.length}, cfg={self.cfg}, seed={self.seed}"

    def sample_params(self, batch: int, channels: int, device: torch.device) -> SeriesViewParams:
        """Draw the parameters of ``batch`` views with ``channels`` channels on ``device``."""
        generator = self.generator(device)
        return sample_view_params(batch, channels, self.length, self.cfg, generator)

    @torch.no_grad()
    def forward(self, inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Two views of each item, drawn independently.

        Shape:
            inputs ``[B, C, T]`` (zero-padded), lengths ``[B]`` -> two ``[B, C, L]``, same
            dtype and device as ``inputs``.
        """
        n, channels = inputs.shape[0], inputs.shape[1]
        params = self.sample_params(2 * n, channels, inputs.device)
        both = apply_view(inputs.repeat(2, 1, 1), lengths.repeat(2), params, self.normalize)
        return both[:n], both[n:]
