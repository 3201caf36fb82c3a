"""A picture of the views: each row a series, its evaluation input next to two views."""

from __future__ import annotations

from pathlib import Path

from simclr.data.items import TensorItems
from simclr.modalities.timeseries.views import SeriesViews, evaluation_input

CELL_IN = (3.2, 1.5)
"""Width and height of one plot, in inches."""
LABEL_IN = 1.6
"""Width of the row-label margin, in inches."""
TITLE_IN = 0.75
"""Height of the title and column headers, in inches."""


def draw_series_views(
    items: TensorItems,
    views: SeriesViews,
    out: Path,
    *,
    num_items: int = 8,
    seed: int = 0,
    dpi: int = 100,
) -> Path:
    """Plot items (picked at random, stratified by class) next to two views of each.

    Every channel is one line, in the same colour in the three columns; the original is shown
    as the encoder sees it at evaluation (resampled to the views' length, normalised as they
    are), so the columns share one time axis.

    Args:
        items: Series opened by the time-series modality.
        views: The view generator (reseeded with ``seed`` here).
        out: PNG file to write (parent folders are created).
        num_items: Rows of the picture.
        seed: Picks the items and seeds the views.
        dpi: Pixels per inch.

    Returns:
        ``out``.

    Raises:
        UserError: ``num_items`` < 1.
    """
    from simclr.viz import _save, subsample, view_grid

    picked = subsample(items.labels, num_items, seed=seed, option="num_items")
    inputs, lengths = items.inputs[picked], items.lengths[picked]
    views.manual_seed(seed)
    first, second = views(inputs, lengths)
    originals = evaluation_input(inputs, lengths, views.length, views.normalize)

    fig, axes = view_grid(
        len(picked), CELL_IN, (LABEL_IN, TITLE_IN), pad_in=0.1, spacing=(0.08, 0.12), sharey="row"
    )
    colours = [f"C{c % 10}" for c in range(inputs.shape[1])]
    for row, index in enumerate(picked.tolist()):
        for col, series in enumerate((originals[row], first[row], second[row])):
            ax = axes[row, col]
            for channel, values in enumerate(series):
                ax.plot(values.numpy(), color=colours[channel], linewidth=0.8)
            ax.set_xticks([])
            ax.tick_params(labelsize=7)
        axes[row, 0].set_ylabel(_row_label(items, index), rotation=0, ha="right", fontsize=8)
    for col, header in enumerate(("original (eval input)", "view 1", "view 2")):
        axes[0, col].set_title(header, fontsize=9)
    channels = inputs.shape[1]
    fig.suptitle(
        f"{len(items)} series, {channels} channel(s), views of {views.length} steps",
        fontsize=9,
        y=1 - 0.08 / fig.get_figheight(),
        va="top",
    )
    return _save(fig, out, dpi)


def _row_label(items: TensorItems, index: int) -> str:
    """The item's name, its class and its valid length."""
    label = int(items.labels[index])
    name = items.names[index]
    name = name if len(name) <= 18 else "..." + name[-15:]
    length = int(items.lengths[index])
    cls = f"\nclass {items.classes[label]}" if label >= 0 else ""
    return f"{name}{cls}\n{length} steps"
