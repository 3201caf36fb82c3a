"""The non-learned audio baseline: MFCC statistics per clip, then kNN and a linear probe.

Each clip (its valid part, as the audio modality read it) becomes the mean and standard
deviation over time of 20 MFCCs (``librosa.feature.mfcc`` with the spectrogram settings of the
``audio`` section), a 40-d vector; the vectors are standardised with the training statistics and
scored with the same kNN and linear-probe protocols as learned features.

The data is the Free Spoken Digit Dataset, arranged by :func:`prepare_fsdd`:

    .venv/bin/python benchmarks/baseline_audio.py            # prints the accuracies as JSON
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from baselines import knn_and_linear, open_splits

from simclr.config import Config, recipe_overrides
from simclr.data.items import TensorItems
from simclr.modalities.audio.spectrogram import LogMel

ROOT = Path(__file__).resolve().parents[1]
FSDD_ARCHIVE = ROOT.parent / "shared/data/fsdd-wav.tar.gz"
FSDD_ROOT = ROOT / ".cache/fsdd"
FSDD_TEST_INDICES = range(5)
"""The official split: recordings 0-4 of every digit and speaker are the test set."""
N_MFCC = 20


def prepare_fsdd(archive: Path = FSDD_ARCHIVE, root: Path = FSDD_ROOT) -> Path:
    """Extract FSDD once and arrange it as ``root/{train,test}/<digit>/*.wav`` symbolic links.

    The archive holds ``recordings/{digit}_{speaker}_{index}.wav``; index 0-4 goes to ``test``
    (300 clips), the rest to ``train`` (2,700). Nothing is redone when the folders exist.

    Returns:
        ``root``, ready for ``--data`` (the audio reader picks the split).
    """
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "recordings").is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    staging = root / ".arranging"
    for wav in sorted((root / "recordings").glob("*.wav")):
        digit, _speaker, index = wav.stem.split("_")
        split = "test" if int(index) in FSDD_TEST_INDICES else "train"
        link = staging / split / digit / wav.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(wav.resolve())
    for split in ("train", "test"):  # the folders appear only once complete
        (staging / split).rename(root / split)
    staging.rmdir()
    return root


def mfcc_statistics(items: TensorItems, cfg: Config) -> torch.Tensor:
    """Mean and standard deviation over time of each clip's MFCCs.

    Shape:
        float32 ``[N, 2 * N_MFCC]``.
    """
    import librosa

    spec = LogMel.from_config(cfg.audio)
    rows = []
    for wave, length in zip(items.inputs.numpy(), items.lengths.tolist(), strict=True):
        mfcc = librosa.feature.mfcc(
            y=wave[:length],
            sr=cfg.audio.sample_rate,
            n_mfcc=N_MFCC,
            n_fft=spec.n_fft,
            win_length=spec.win_length,
            hop_length=spec.hop_length,
            n_mels=cfg.audio.n_mels,
        )
        rows.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def baseline(train: TensorItems, test: TensorItems, cfg: Config) -> dict[str, float]:
    """Top-1 accuracy (percent) of kNN and a linear probe on standardised MFCC statistics."""
    x_train, x_test = mfcc_statistics(train, cfg), mfcc_statistics(test, cfg)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-8)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return knn_and_linear(x_train, train, x_test, test, cfg)


def main() -> None:
    """Arrange FSDD, read it as the ``audio-small`` recipe does and print the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=FSDD_ARCHIVE)
    parser.add_argument("--root", type=Path, default=FSDD_ROOT)
    parser.add_argument("--recipe", default="audio-small")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = prepare_fsdd(args.archive, args.root)
    cfg, train, test, _ = open_splits(str(root), recipe_overrides(args.recipe))
    print(json.dumps(baseline(train, test, cfg), indent=2))


if __name__ == "__main__":
    main()
