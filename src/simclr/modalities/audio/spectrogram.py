"""The log-mel spectrogram the audio encoder reads, computed in batches on the waveforms' device.

The short-time Fourier transform is :func:`torch.stft` with a periodic Hann window and the
signal zero-padded by half a window at both ends (frames are centred on multiples of the hop);
the mel filter bank is librosa's (Slaney mel scale and area normalisation). So the result equals
``librosa.feature.melspectrogram`` with the same parameters (``power=2``) on the dB scale.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from simclr.config import AudioConfig
from simclr.errors import UserError, require

POWER_FLOOR = 1e-10
"""Mel energies are clamped to this before the logarithm (-100 dB; librosa's ``amin``)."""


class LogMel(nn.Module):
    """Waveforms to log-mel spectrograms in dB: ``10 log10(max(mel power, floor))``.

    The window is ``window_ms`` long, the FFT size the next power of two (the window is centred
    in it, zero elsewhere) and frames are ``hop_ms`` apart.

    Args:
        sample_rate: Rate of the waveforms (Hz).
        n_mels: Mel bands, spanning 0 Hz to the Nyquist frequency.
        window_ms: Analysis window length.
        hop_ms: Distance between frames.

    Raises:
        UserError: a band of the filter bank covers no FFT bin (too many bands for the window).

    Shape:
        ``[B, T]`` -> ``[B, n_mels, 1 + T // hop_length]``, in the input's dtype.
    """

    def __init__(self, sample_rate: int, n_mels: int, window_ms: float, hop_ms: float) -> None:
        super().__init__()
        librosa = require("librosa", "audio", "for audio spectrograms")

        self.sample_rate = sample_rate
        self.win_length = max(2, round(sample_rate * window_ms / 1000))
        self.hop_length = max(1, round(sample_rate * hop_ms / 1000))
        self.n_fft = 1 << (self.win_length - 1).bit_length()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # empty bands are reported below
            bank = librosa.filters.mel(sr=sample_rate, n_fft=self.n_fft, n_mels=n_mels)
        if not (bank.max(axis=1) > 0).all():
            raise UserError(
                f"audio.n_mels={n_mels} is too many for a {window_ms:g} ms window at "
                f"{sample_rate} Hz (some mel bands cover no frequency bin); use fewer bands "
                "or a longer audio.window_ms"
            )
        self.filters: Tensor
        self.window: Tensor
        self.register_buffer("filters", torch.from_numpy(bank), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    @classmethod
    def from_config(cls, cfg: AudioConfig) -> LogMel:
        """The spectrogram of the ``audio`` section."""
        return cls(cfg.sample_rate, cfg.n_mels, cfg.window_ms, cfg.hop_ms)

    def frames(self, num_samples: int) -> int:
        """Frames of a waveform of ``num_samples`` samples."""
        return 1 + num_samples // self.hop_length

    def forward(self, waves: Tensor) -> Tensor:
        """Log-mel spectrograms (dB) of a batch of waveforms."""
        # the FFT runs in float32 or float64 (half precision is not supported on every device)
        x = waves if waves.dtype in (torch.float32, torch.float64) else waves.float()
        spectrum = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.to(x),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = torch.view_as_real(spectrum).pow(2).sum(-1)  # [B, n_fft // 2 + 1, frames]
        mel = torch.matmul(self.filters.to(power), power)
        return mel.clamp_min(POWER_FLOOR).log10().mul(10.0).to(waves.dtype)
