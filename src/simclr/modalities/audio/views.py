"""Two random views of every clip of a batch, on the batch's device, as log-mel spectrograms.

A view is made in the waveform domain, then on the spectrogram:

1. a random crop of ``crop_seconds`` inside the clip's valid part (a shorter clip is placed at
   a random position inside the crop window, zeros around it);
2. a random gain in dB;
3. with probability ``noise_p``, white Gaussian noise at a random signal-to-noise ratio,
   relative to the power of the crop itself;
4. a random circular time shift of at most ``shift_fraction`` of the crop;
5. the log-mel spectrogram (:class:`~simclr.modalities.audio.spectrogram.LogMel`);
6. SpecAugment (Park et al. 2019): ``time_masks`` bands of frames and ``freq_masks`` bands of
   mel channels replaced by the spectrogram's mean.

The per-view random parameters are drawn first (:meth:`AudioViews.sample_params`), then applied
by pure functions (:func:`apply_view`), so that a view depends only on its clip and parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from simclr.config import AudioConfig
from simclr.modalities.audio.spectrogram import LogMel
from simclr.modalities.base import SeededViews


@dataclass(frozen=True)
class AudioViewParams:
    """Random parameters of ``B`` views (row i belongs to view i).

    Shape:
        ``start``, ``shift``: int64 ``[B]``; ``gain_db``, ``snr_db``: float32 ``[B]``;
        ``noise_on``: bool ``[B]``; ``noise``: float32 ``[B, S]`` standard normal draws;
        ``time_masks``, ``freq_masks``: int64 ``[B, M, 2]`` (first index, width) pairs.
    """

    start: Tensor
    """First sample of the crop in the clip; negative when the clip is shorter than the crop."""
    gain_db: Tensor
    noise_on: Tensor
    snr_db: Tensor
    noise: Tensor
    shift: Tensor
    """Circular shift to the right, in samples."""
    time_masks: Tensor
    freq_masks: Tensor

    def select(self, index: Tensor | slice) -> AudioViewParams:
        """The parameters of the views at ``index``."""
        return AudioViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def crop(waves: Tensor, lengths: Tensor, start: Tensor, size: int) -> Tensor:
    """``size`` samples of each clip from ``start`` on; samples outside the clip are zero.

    Shape:
        waves ``[B, T]``, lengths and start int64 ``[B]`` -> ``[B, size]``.
    """
    t = start[:, None] + torch.arange(size, device=waves.device)
    inside = (t >= 0) & (t < lengths[:, None])
    taken = torch.gather(waves, 1, t.clamp(0, waves.shape[1] - 1))
    return torch.where(inside, taken, torch.zeros_like(taken))


def centre_start(lengths: Tensor, size: int) -> Tensor:
    """Crop starts that centre a ``size``-sample window on each clip (negative: padding)."""
    return torch.div(lengths - size, 2, rounding_mode="floor")


def apply_gain(waves: Tensor, gain_db: Tensor) -> Tensor:
    """Scale each waveform by its gain in dB. Shape: ``[B, S]``, ``[B]`` -> ``[B, S]``."""
    return waves * torch.pow(10.0, gain_db / 20.0).to(waves)[:, None]


def add_noise(waves: Tensor, noise: Tensor, snr_db: Tensor, noise_on: Tensor) -> Tensor:
    """Add ``noise`` (unit variance) scaled to ``snr_db`` below each waveform's mean power.

    Only rows with ``noise_on`` change; a silent waveform gets no noise (its SNR is undefined).

    Shape:
        waves, noise ``[B, S]``; snr_db, noise_on ``[B]`` -> ``[B, S]``.
    """
    power = waves.pow(2).mean(dim=1)
    scale = torch.sqrt(power / torch.pow(10.0, snr_db.to(power) / 10.0)) * noise_on.to(power)
    return waves + noise.to(waves) * scale[:, None]


def circular_shift(waves: Tensor, shift: Tensor) -> Tensor:
    """Roll each waveform ``shift`` samples to the right (``torch.roll`` per row).

    Shape:
        ``[B, S]``, int64 ``[B]`` -> ``[B, S]``.
    """
    size = waves.shape[1]
    source = torch.remainder(torch.arange(size, device=waves.device) - shift[:, None], size)
    return torch.gather(waves, 1, source)


def band_mask(bands: Tensor, size: int) -> Tensor:
    """Which of ``size`` positions fall inside any of each row's ``(first, width)`` bands.

    Shape:
        int64 ``[B, M, 2]`` -> bool ``[B, size]``.
    """
    position = torch.arange(size, device=bands.device)
    first, width = bands[..., 0:1], bands[..., 1:2]  # [B, M, 1]
    inside = (position >= first) & (position < first + width)  # [B, M, size]
    return inside.any(dim=1)


def mask_spectrogram(spec: Tensor, time_masks: Tensor, freq_masks: Tensor) -> Tensor:
    """SpecAugment: replace masked frames and mel bands by each spectrogram's mean.

    Shape:
        spec ``[B, n_mels, F]``; masks int64 ``[B, M, 2]`` -> ``[B, n_mels, F]``.
    """
    masked = (
        band_mask(time_masks, spec.shape[2])[:, None, :]
        | band_mask(freq_masks, spec.shape[1])[:, :, None]
    )
    fill = spec.mean(dim=(1, 2), keepdim=True).expand_as(spec)
    return torch.where(masked, fill, spec)


def apply_view(
    waves: Tensor, lengths: Tensor, params: AudioViewParams, log_mel: LogMel, size: int
) -> Tensor:
    """The views of a batch of clips for given parameters (no randomness here).

    Shape:
        waves ``[B, T]``, lengths int64 ``[B]`` -> ``[B, 1, n_mels, frames]``, waves' dtype.
    """
    x = crop(waves, lengths, params.start, size)
    x = apply_gain(x, params.gain_db)
    x = add_noise(x, params.noise, params.snr_db, params.noise_on)
    x = circular_shift(x, params.shift)
    spec = mask_spectrogram(log_mel(x), params.time_masks, params.freq_masks)
    return spec[:, None]


class AudioViews(SeededViews):
    """The audio view generator: ``views(waves, lengths) -> (view1, view2)``.

    Both views of a clip are independent draws: the batch of ``2B`` views is made as one batch
    whose first ``B`` rows are the first views.

    Args:
        cfg: The ``audio`` section (crop, augmentation ranges, spectrogram).
        seed: Seed of the random stream (the loop reseeds it every step).

    Shape:
        waves ``[B, T]`` (zero-padded), lengths int64 ``[B]`` -> two
        ``[B, 1, n_mels, frames]`` in the waves' dtype and on their device.
    """

    def __init__(self, cfg: AudioConfig, seed: int = 0) -> None:
        super().__init__(seed)
        self.cfg = cfg
        self.size = crop_samples(cfg)
        self.log_mel = LogMel.from_config(cfg)

    def sample_params(self, lengths: Tensor) -> AudioViewParams:
        """Draw the parameters of one view of each clip of valid length ``lengths``."""
        cfg, size, like = self.cfg, self.size, lengths
        n, device = len(lengths), lengths.device
        generator = self.generator(device)
        low = torch.clamp(lengths - size, max=0)
        high = torch.clamp(lengths - size, min=0)
        max_shift = int(cfg.shift_fraction * size)
        frames = self.log_mel.frames(size)
        return AudioViewParams(
            start=low + self._integers(high - low + 1, like),
            gain_db=self.uniform((n,), *cfg.gain_db, like),
            noise_on=self.uniform((n,), 0.0, 1.0, like) < cfg.noise_p,
            snr_db=self.uniform((n,), *cfg.noise_snr_db, like),
            noise=torch.randn((n, size), generator=generator, device=device),
            shift=self._integers(torch.full_like(lengths, 2 * max_shift + 1), like) - max_shift,
            time_masks=self._bands(n, cfg.time_masks, frames, cfg.time_mask_fraction, like),
            freq_masks=self._bands(n, cfg.freq_masks, cfg.n_mels, cfg.freq_mask_fraction, like),
        )

    @torch.no_grad()
    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Two views of every clip."""
        n = len(waves)
        both = torch.cat([lengths, lengths]).to(waves.device)
        params = self.sample_params(both)
        views = apply_view(torch.cat([waves, waves]), both, params, self.log_mel, self.size)
        return views[:n], views[n:]

    def _integers(self, counts: Tensor, like: Tensor) -> Tensor:
        """One uniform integer in ``[0, counts[i])`` per row. Shape: ``[B]`` -> int64 ``[B]``."""
        u = self.uniform((len(counts),), 0.0, 1.0, like)
        return torch.minimum((u * counts).long(), counts - 1)

    def _bands(self, n: int, count: int, size: int, fraction: float, like: Tensor) -> Tensor:
        """``count`` random bands per row: width in ``[0, fraction * size]``, inside ``size``.

        Shape:
            int64 ``[n, count, 2]`` (first, width).
        """
        widest = int(fraction * size)
        u = self.uniform((n, count, 2), 0.0, 1.0, like)
        width = (u[..., 0] * (widest + 1)).long().clamp(max=widest)
        room = size - width + 1
        first = torch.minimum((u[..., 1] * room).long(), room - 1)
        return torch.stack([first, width], dim=-1)


def crop_samples(cfg: AudioConfig) -> int:
    """Samples in a view and in the evaluation input: ``crop_seconds`` at ``sample_rate``."""
    return max(1, round(cfg.crop_seconds * cfg.sample_rate))


def evaluation_input(waves: Tensor, lengths: Tensor, log_mel: LogMel, size: int) -> Tensor:
    """The encoder's input at evaluation: the centre ``size`` samples, log-mel, no augmentation.

    Shape:
        waves ``[B, T]``, lengths int64 ``[B]`` -> ``[B, 1, n_mels, frames]``.
    """
    lengths = lengths.to(waves.device)
    spec: Tensor = log_mel(crop(waves, lengths, centre_start(lengths, size), size))
    return spec[:, None]
