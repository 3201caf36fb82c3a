"""Reading a folder of sound files into memory: mono waveforms at one sample rate.

A dataset is a folder of WAV, FLAC or OGG files. Class subfolders give labels; files directly in
the folder make it unlabelled (everything below it is then read without labels), as for image
folders. A folder holding ``train/`` and ``test/`` subfolders is a dataset with two splits.
Every clip is averaged to mono, resampled to the configured rate and kept as one zero-padded
float32 tensor with the valid length of each clip.
"""

from __future__ import annotations

import logging
from math import gcd
from pathlib import Path

import numpy as np
import torch

from simclr.data.folders import scan_class_folders
from simclr.data.items import SPLITS, TensorItems, check_split
from simclr.errors import UserError

log = logging.getLogger("simclr")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
"""File suffixes read as audio (lower case); soundfile (libsndfile) decodes all three."""


def read_clip(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """One file as a mono float32 waveform at ``sample_rate``, at most ``max_seconds`` long.

    Channels are averaged; a different file rate is converted with a polyphase filter
    (:func:`scipy.signal.resample_poly`, which low-pass filters before decimating).

    Raises:
        ValueError: the file holds no samples.
        soundfile.SoundFileError / RuntimeError / OSError: the file cannot be decoded.

    Shape:
        ``[T]`` float32, ``T <= max_seconds * sample_rate``.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    with sf.SoundFile(path) as source:
        rate = int(source.samplerate)
        # read only what survives the cut, so a long recording costs no more than max_seconds
        frames = min(source.frames, int(np.ceil(max_seconds * rate)))
        data = source.read(frames, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError("no samples")
    wave = data.mean(axis=1)
    if rate != sample_rate:
        common = gcd(rate, sample_rate)
        wave = resample_poly(wave, sample_rate // common, rate // common)
    limit = int(max_seconds * sample_rate)
    return np.ascontiguousarray(wave[:limit], dtype=np.float32)


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

    Unreadable or empty files are skipped with one warning each.

    Raises:
        UserError: a missing path, a file instead of a folder, no audio files, or none readable.

    Shape:
        ``inputs`` float32 ``[N, T_max]`` (zero after each clip's end), ``lengths`` int64 ``[N]``.
    """
    import soundfile as sf

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
        except (sf.SoundFileError, RuntimeError, OSError, ValueError) as err:
            log.warning("skipping unreadable audio file %s: %s", file, err)
            continue
        kept.append(position)
    if not kept:
        raise UserError(f"none of the {len(files)} audio files in {root} could be read")
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
