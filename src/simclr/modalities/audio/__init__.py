"""Audio: folders of sound files, waveform and SpecAugment views, a CNN over log-mel spectrograms.

* reading (:mod:`.reading`): WAV/FLAC/OGG files, mono, resampled to ``audio.sample_rate``,
  held in memory as zero-padded waveforms with their lengths;
* views (:mod:`.views`): random crop, gain, noise and circular shift of the waveform, then the
  log-mel spectrogram (:mod:`.spectrogram`) with time and frequency masks, batched on the device;
* encoder (:mod:`.encoder`): ``audio-cnn``;
* evaluation: the centre ``crop_seconds`` of each clip as a log-mel spectrogram.

Nothing is fitted on the training data: the spectrogram is fixed by the ``audio`` section and
the encoder normalises its input with batch norm.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from simclr.config import Config
from simclr.data.items import Items, TensorItems
from simclr.modalities.audio.encoder import AudioCNN
from simclr.modalities.audio.reading import AUDIO_SUFFIXES, read_audio_folder
from simclr.modalities.audio.spectrogram import LogMel
from simclr.modalities.audio.views import AudioViews, crop_samples, evaluation_input
from simclr.modalities.base import Batch, Fitted, TensorModality, file_suffixes
from simclr.models.simclr import SimCLR

__all__ = ["AudioModality", "AudioViews", "AudioCNN", "LogMel"]


class AudioModality(TensorModality):
    """Speech and sound clips; batches are ``(waveforms [B, T], lengths [B])``."""

    name = "audio"
    backbones = ("audio-cnn",)

    def __init__(self, cfg: Config, fitted: Fitted | None = None) -> None:
        super().__init__(cfg, fitted)
        self._spectrogram: LogMel | None = None

    @classmethod
    def detect(cls, spec: str) -> bool:
        """A folder whose first files (in sorted order) include WAV, FLAC or OGG files."""
        path = Path(spec).expanduser()
        return path.is_dir() and bool(file_suffixes(path) & set(AUDIO_SUFFIXES))

    def open(self, spec: str, *, split: str) -> tuple[Items, Fitted]:
        """Read every clip (see :func:`~.reading.read_audio_folder`); the fitted state is empty."""
        audio = self.cfg.audio
        items = read_audio_folder(
            spec, split=split, sample_rate=audio.sample_rate, max_seconds=audio.max_seconds
        )
        return items, {}

    def build_model(self) -> SimCLR:
        """``audio-cnn`` at ``model.width`` with the configured head."""
        self.check_backbone()
        encoder = AudioCNN(self.cfg.model.width)
        return self.with_head(encoder, encoder.feature_dim)

    def views(self, seed: int) -> AudioViews:
        """:class:`AudioViews` with the ``audio`` section."""
        return AudioViews(self.cfg.audio, seed=seed)

    def model_input(self, batch: Batch, device: torch.device | str) -> Tensor:
        """The centre crop of each clip as a log-mel spectrogram, on ``device``."""
        waves, lengths = (t.to(device, non_blocking=True) for t in batch)
        log_mel = self._log_mel().to(waves.device)
        return evaluation_input(waves, lengths, log_mel, crop_samples(self.cfg.audio))

    def preprocessing(self) -> str:
        """Resampling, centre crop and spectrogram."""
        a = self.cfg.audio
        return (
            f"mono at {a.sample_rate} Hz; the centre {a.crop_seconds:g} s of each clip "
            f"(zero-padded when shorter); log-mel spectrogram in dB ({a.n_mels} bands, "
            f"{a.window_ms:g} ms Hann window, {a.hop_ms:g} ms hop); no augmentation"
        )

    def draw_views(self, dataset: Items, out: Path, *, num_items: int, seed: int) -> Path:
        """Waveforms next to the spectrograms of two views each."""
        from simclr.modalities.audio.pictures import draw_audio_views

        assert isinstance(dataset, TensorItems)
        return draw_audio_views(dataset, self.cfg.audio, out, num_items=num_items, seed=seed)

    def _log_mel(self) -> LogMel:
        """The spectrogram, built once (its filter bank comes from librosa)."""
        if self._spectrogram is None:
            self._spectrogram = LogMel.from_config(self.cfg.audio)
        return self._spectrogram
