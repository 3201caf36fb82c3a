"""A picture of audio views: each clip's waveform next to the log-mel spectrograms of two views."""

from __future__ import annotations

from pathlib import Path

import torch

from simclr.config import AudioConfig
from simclr.data.items import TensorItems
from simclr.modalities.audio.views import AudioViews, centre_start, crop_samples

WAVE_IN = (3.2, 1.3)
"""Width and height of one cell (waveform or spectrogram), in inches."""
MARGIN_IN = (1.3, 0.7)
"""Row-label margin and title height, in inches."""


def draw_audio_views(
    items: TensorItems,
    cfg: AudioConfig,
    out: Path,
    *,
    num_items: int = 6,
    seed: int = 0,
    dpi: int = 100,
) -> Path:
    """Draw clips (rows) as waveform, view 1 and view 2 (columns) to a PNG file.

    The waveform is the whole clip, with the evaluation crop (its centre ``crop_seconds``)
    shaded; the views come from :class:`AudioViews` seeded with ``seed``, exactly as the
    training loop makes them. Clips are picked at random, stratified by class.

    Args:
        items: Clips read by the audio modality.
        cfg: The ``audio`` section.
        out: PNG file to write (parent folders are created).
        num_items: Rows of the picture.
        seed: Picks the clips and seeds the views.
        dpi: Pixels per inch.

    Returns:
        ``out``.

    Raises:
        UserError: ``num_items`` < 1.
    """
    from simclr.viz import _save, subsample, view_grid

    picked = subsample(items.labels, num_items, seed=seed, option="num_items")
    waves, lengths = items.inputs[picked], items.lengths[picked]
    first, second = AudioViews(cfg, seed=seed)(waves, lengths)
    size = crop_samples(cfg)
    starts = centre_start(lengths, size)

    fig, axes = view_grid(len(picked), WAVE_IN, MARGIN_IN, pad_in=0.1, spacing=(0.08, 0.12))
    low = float(torch.cat([first, second]).amin())
    high = float(torch.cat([first, second]).amax())
    for row, index in enumerate(picked.tolist()):
        n = int(lengths[row])
        seconds = torch.arange(n) / cfg.sample_rate
        wave_ax = axes[row, 0]
        wave_ax.plot(seconds.numpy(), waves[row, :n].numpy(), linewidth=0.4, color="C0")
        begin = int(starts[row]) / cfg.sample_rate
        wave_ax.axvspan(begin, begin + size / cfg.sample_rate, color="C1", alpha=0.15, lw=0)
        wave_ax.set_xlim(min(0.0, begin), max(n, int(starts[row]) + size) / cfg.sample_rate)
        wave_ax.set_ylabel(_row_label(items, index), rotation=0, ha="right", va="center")
        for col, view in ((1, first[row, 0]), (2, second[row, 0])):
            axes[row, col].imshow(
                view.numpy(), origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma"
            )
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    titles = ("waveform (shaded: evaluation crop)", "view 1 (log-mel)", "view 2 (log-mel)")
    for ax, title in zip(axes[0], titles, strict=True):
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        f"audio views: {cfg.crop_seconds:g} s crops at {cfg.sample_rate} Hz, "
        f"{cfg.n_mels} mel bands ({low:.0f} to {high:.0f} dB)",
        fontsize=10,
    )
    return _save(fig, out, dpi, description="simclr audio views")


def _row_label(items: TensorItems, index: int) -> str:
    """The class name (when labelled) above the file name."""
    name = Path(items.names[index]).name
    label = int(items.labels[index])
    return f"{items.classes[label]}\n{name}" if label >= 0 and items.classes else name
