"""Reading a folder of sound files into memory: mono waveforms at one sample rate.

A dataset is a folder of WAV, FLAC or OGG files. Class subfolders give labels; files directly in
the folder make it unlabelled (everything below it is then read without labels), as for image
folders. A folder holding ``train/`` and ``test/`` subfolders is a dataset with two splits.
Every clip is averaged to mono, resampled to the configured rate and kept as one zero-padded
float32 tensor with the valid length of each clip.

A file that cannot be decoded, holds no samples, or holds samples that are not finite (NaN,
infinity) or larger in magnitude than :data:`MAX_ABS_SAMPLE` (their spectrogram power would
overflow float32) is skipped with a warning naming it, and the reader ends with a count.
"""

from __future__ import annotations

import logging
from math import gcd
from pathlib import Path

import numpy as np
import torch

from simclr.data.folders import scan_class_folders
from simclr.data.items import SPLITS, TensorItems, check_split
from simclr.errors import UserError, first_line, require

log = logging.getLogger("simclr")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
"""File suffixes read as audio (lower case); soundfile (libsndfile) decodes all three."""
MAX_ABS_SAMPLE = 1e6
"""Samples lie in [-1, 1] (integer files) or near it (float files); a sample beyond this in
magnitude marks a corrupt file: squared and summed over a spectrogram frame it could overflow
float32."""
MAX_FILE_RATE = 768_000
"""Files declaring a higher sample rate (or one below 1 Hz) are unreadable: resampling from an
arbitrary rate would need a filter as long as the rate."""


def read_clip(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """One file as a mono float32 waveform at ``sample_rate``, at most ``max_seconds`` long.

    Channels are averaged; a different file rate is converted with a polyphase filter
    (:func:`scipy.signal.resample_poly`, which low-pass filters before decimating).

    Raises:
        ValueError: the file holds no samples, samples that are not finite or beyond
            :data:`MAX_ABS_SAMPLE` (checked in float32, before and after resampling), or
            declares a rate beyond :data:`MAX_FILE_RATE`.
        soundfile.SoundFileError / RuntimeError / OSError: the file cannot be decoded.

    Shape:
        ``[T]`` float32, ``T <= max_seconds * sample_rate``.
    """
    sf = require("soundfile", "audio", "to read audio files")
    from scipy.signal import resample_poly

    with sf.SoundFile(path) as source:
        rate = int(source.samplerate)
        if not 1 <= rate <= MAX_FILE_RATE:
            raise ValueError(f"it declares {rate} samples/s, outside 1-{MAX_FILE_RATE}")
        # read only what survives the cut, so a long recording costs no more than max_seconds,
        # in blocks, so a header declaring more frames than the file holds costs nothing
        frames = min(source.frames, int(np.ceil(max_seconds * rate)))
        block = max(1, (1 << 22) // max(1, source.channels))
        blocks = []
        while frames > 0:
            data = source.read(min(frames, block), dtype="float32", always_2d=True)
            if len(data) == 0:
                break
            blocks.append(data)
            frames -= len(data)
    data = np.concatenate(blocks) if blocks else np.zeros((0, 1), dtype=np.float32)
    if data.shape[0] == 0:
        raise ValueError("it holds no samples")
    _check_samples(data)
    wave = data.mean(axis=1)
    if rate != sample_rate:
        common = gcd(rate, sample_rate)
        wave = resample_poly(wave, sample_rate // common, rate // common)
    limit = int(max_seconds * sample_rate)
    wave = np.ascontiguousarray(wave[:limit], dtype=np.float32)
    _check_samples(wave)
    return wave


def _check_samples(values: np.ndarray) -> None:
    """Raise ValueError unless every sample is finite and within :data:`MAX_ABS_SAMPLE`."""
    with np.errstate(over="ignore", invalid="ignore"):
        peak = float(np.abs(values).max()) if values.size else 0.0
    if not np.isfinite(values).all():
        raise ValueError("it holds samples that are not finite (NaN or infinity)")
    if peak > MAX_ABS_SAMPLE:
        raise ValueError(f"it holds a sample of magnitude {peak:.3g}, beyond {MAX_ABS_SAMPLE:g}")


def split_root(path: Path, split: str) -> Path:
    """The folder of ``split`` when ``path`` holds ``train/`` and ``test/``, else ``path``."""
    check_split(split)
    if all((path / name).is_dir() for name in SPLITS):
        return path / split
    return path


def list_audio(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Audio files below ``root`` with their class indices (``-1``) and the class names.

    Files directly in ``root`` make the whole folder unlabelled; otherwise each subfolder
    holding audio (at any depth) is a class, numbered in sorted order of the names.

    Raises:
        UserError: no audio file anywhere below ``root``.
    """
    paths, labels, classes = scan_class_folders(root, _is_audio)
    if not paths:
        raise UserError(f"no audio files found in {root} (looked for {', '.join(AUDIO_SUFFIXES)})")
    return [Path(p) for p in paths], labels, classes


def read_audio_folder(
    spec: str, *, split: str, sample_rate: int, max_seconds: float
) -> TensorItems:
    """Every readable clip of the dataset at ``spec`` (its ``split`` when it has two).

    Unreadable or empty files, or files with non-finite or huge samples, are skipped with one
    warning each, and a count at the end.

    Raises:
        UserError: a missing path, a file instead of a folder, no audio files, or none readable.

    Shape:
        ``inputs`` float32 ``[N, T_max]`` (zero after each clip's end), ``lengths`` int64 ``[N]``.
    """
    sf = require("soundfile", "audio", "to read audio files")

    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data path {spec} does not exist")
    if not path.is_dir():
        raise UserError(f"data path {spec} is a file; audio data is a folder of sound files")
    root = split_root(path, split)
    files, labels, classes = list_audio(root)
    waves, kept = [], []
    for position, file in enumerate(files):
        try:
            waves.append(read_clip(file, sample_rate, max_seconds))
        except (sf.SoundFileError, RuntimeError, OSError, ValueError, MemoryError) as err:
            log.warning("skipping unreadable audio file %s: %s", file, first_line(err)[:200])
            continue
        kept.append(position)
    if not kept:
        raise UserError(f"none of the {len(files)} audio files in {root} could be read")
    if len(kept) < len(files):
        log.warning(
            "skipped %d unreadable audio file(s) of %d in %s",
            len(files) - len(kept),
            len(files),
            root,
        )
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    inputs = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        inputs[row, : len(wave)] = torch.from_numpy(wave)
    return TensorItems(
        inputs,
        lengths,
        torch.tensor([labels[i] for i in kept], dtype=torch.long),
        classes,
        [str(files[i]) for i in kept],
    )


def _is_audio(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in AUDIO_SUFFIXES
