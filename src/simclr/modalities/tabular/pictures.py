"""A picture of SCARF views: a few encoded rows as heatmaps, next to their two views.

Each panel shows the rows (one per line) by columns; the colour is the encoded value
(standardised numbers, clipped to +-3; category codes are spread over the same colour range),
and a black dot marks every cell the view replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from simclr.modalities.tabular.columns import Column, cardinalities
from simclr.modalities.tabular.views import ScarfParams, corrupted_count, scarf_corrupt
from simclr.viz import _figure, _save

CLIP = 3.0
"""Standardised values beyond +-CLIP share the end colours."""
MAX_NAMED_COLUMNS = 32
"""Wider tables get column numbers instead of names on the x axis."""


def draw_scarf_views(
    rows: Tensor,
    pool: Tensor,
    params: tuple[ScarfParams, ScarfParams],
    *,
    columns: Sequence[Column],
    row_labels: Sequence[str],
    corruption: float,
    out: Path,
    dpi: int = 100,
) -> Path:
    """Draw ``rows`` and their two views (:func:`scarf_corrupt`), marking the replaced cells.

    Args:
        rows: Encoded rows ``[N, D]``.
        pool: The batch the replacement values are drawn from ``[P, D]``.
        params: The parameters of the two views of ``rows``.
        columns: The fitted columns (names and kinds), or empty when unknown (all numeric).
        row_labels: One label per row (name and class).
        corruption: The fraction replaced, for the title.
        out: PNG file to write.
        dpi: Pixels per inch.

    Returns:
        ``out``.
    """
    count, width = len(rows), rows.shape[1]
    panel_in = min(8.0, max(2.5, 0.16 * width))
    fig = _figure((1.6 + 3 * panel_in, 1.0 + 0.32 * count), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    panels: list[tuple[Tensor, ScarfParams | None]] = [(rows, None)]
    panels += [(scarf_corrupt(rows, pool, p), p) for p in params]
    for ax, (values, drawn), title in zip(
        axes, panels, ("original", "view 1", "view 2"), strict=True
    ):
        image = ax.imshow(
            _display(values, cardinalities(columns)).numpy(),
            cmap="coolwarm",
            vmin=-CLIP,
            vmax=CLIP,
            aspect="auto",
            interpolation="nearest",
        )
        if drawn is not None:
            hit_rows, hit_cols = drawn.mask.nonzero(as_tuple=True)
            ax.scatter(hit_cols.numpy(), hit_rows.numpy(), s=6, c="black", marker="o")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if columns and width <= MAX_NAMED_COLUMNS:
            ax.set_xticks(range(width), [c["name"] for c in columns], rotation=90, fontsize=7)
        else:
            ax.set_xlabel("column", fontsize=8)
    axes[0].set_yticks(range(count), list(row_labels), fontsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="encoded value")
    replaced = corrupted_count(width, corruption)
    fig.suptitle(
        f"SCARF: {replaced} of {width} features per row replaced (black dots) by the same "
        "column of a random row of the batch",
        fontsize=9,
    )
    return _save(fig, out, dpi)


def _display(values: Tensor, cardinalities: Sequence[int]) -> Tensor:
    """Numbers clipped to +-CLIP; category codes 0..n mapped linearly onto the same range."""
    shown = values.float().clamp(-CLIP, CLIP).clone()
    for j, n in enumerate(cardinalities):
        if n > 0:
            shown[:, j] = values[:, j].float() / n * 2 * CLIP - CLIP
    return shown
