"""An embedding explorer: the 2-D map of the features as one HTML page that opens in a browser.

``simclr map RUN --data D --html OUT.html`` (or :func:`write_explorer`) writes a single
self-contained file: plotly.js is embedded inline and every picture is a ``data:`` URI, so the
page opens offline, from an e-mail attachment or a CI artefact. It offers:

* the map of :func:`simclr.viz.embed_2d` (t-SNE or UMAP of the L2-normalised features of a
  stratified subsample, the same computation as the PNG map), zoom and pan;
* a preview of the item under the mouse: a thumbnail of the image, the log-mel spectrogram of
  the clip's centre crop, a sparkline of the series (each from the modality's evaluation input,
  what the encoder sees), the text itself, or the table row's decoded values;
* colour by label or by k-means cluster (:func:`simclr.evaluate.cluster.cluster` on the mapped
  points), chosen with ``color`` and switched with a dropdown in the page;
* a search box that highlights the points whose name contains the typed text.

The figure is plotly's (traces, hover labels, the dropdown, selection styling); a few lines of
plotly's ``post_script`` JavaScript show the preview on ``plotly_hover`` and restyle
``selectedpoints`` as the search text changes. plotly is the ``explorer`` extra. Pictures are
:data:`THUMBNAIL_PX` pixels high at most (64-colour PNGs) and :data:`EXPLORER_MAX_POINTS` points
are mapped by default, so a page is some 5 to 10 MB (4.8 of them plotly.js).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from simclr.checkpoint import write_text_atomic
from simclr.data.datasets import display_channels
from simclr.data.items import Items
from simclr.errors import UserError, require

if TYPE_CHECKING:
    from simclr.evaluate.features import Features
    from simclr.modalities.base import Modality

EXPLORER_MAX_POINTS = 2000
"""Points mapped by default: 2,000 image previews of 32 to 48 px take 2.7 to 4.4 MB."""
THUMBNAIL_PX = 48
"""Default longest side of a picture preview, in pixels (sparklines are 3x as wide)."""
DEFAULT_CLUSTERS = 10
"""k of the k-means colouring when the mapped points have no labels to count classes from."""
TEXT_PREVIEW_CHARS = 400
"""Texts longer than this are cut (with an ellipsis) in the preview."""
TABLE_PREVIEW_COLUMNS = 16
"""Columns of a table row listed in the preview; the rest are counted."""
SPECTROGRAM_TOP_DB = 80.0
"""Dynamic range of a spectrogram thumbnail: its loudest cell down to this many dB below."""
PALETTE_COLORS = 64
"""Colours of a picture preview's PNG palette (see :func:`png_data_uri`)."""
UNLABELLED_COLOR = "#999999"
SEARCH_DIMMED_OPACITY = 0.12
"""Opacity of the points that do not match the search text while one is typed."""

Color = Literal["label", "cluster"]
"""What the points are coloured by when the page opens."""


@dataclass(frozen=True)
class Previews:
    """What the page shows of each mapped item under the mouse.

    Attributes:
        kind: ``image`` (``values`` are PNG ``data:`` URIs) or ``text`` (plain text).
        values: One per mapped item, in the order of the map's points.
        display_px: Width of a picture in the page, in CSS pixels (small thumbnails are shown
            enlarged, pixelated for images).
        pixelated: Whether pictures are enlarged without smoothing (images) or smoothly.
    """

    kind: Literal["image", "text"]
    values: list[str]
    display_px: int = 0
    pixelated: bool = False


def png_data_uri(pixels: np.ndarray, colors: int | None = PALETTE_COLORS) -> str:
    """A PNG ``data:`` URI of an RGB (or grey) picture.

    RGB pictures are reduced to a palette of ``colors`` (median cut, dithered; ``None`` keeps
    them true-colour): for photos a 64-colour palette makes the PNG some 2.3x smaller (CIFAR-10
    at 32 px: 1.3 instead of 3.0 kB in base64), the difference barely visible at this size.

    Shape:
        pixels uint8 ``[H, W, 3]`` or ``[H, W]``.
    """
    image = Image.fromarray(pixels)
    if colors is not None and image.mode == "RGB":
        image = image.quantize(colors)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def fit_within(height: int, width: int, box: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` scaled down (never up) to fit a ``(height, width)`` box, aspect kept."""
    scale = min(1.0, box[0] / height, box[1] / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def image_thumbnails(images: Tensor, px: int = THUMBNAIL_PX) -> list[str]:
    """PNG data URIs of images shrunk (antialiased) to at most ``px`` on their longest side.

    Shape:
        images float ``[B, C, H, W]`` in [0, 1]; other than RGB, as
        :func:`~simclr.data.datasets.display_channels` shows them.
    """
    images = display_channels(images)
    height, width = fit_within(images.shape[-2], images.shape[-1], (px, px))
    if (height, width) != tuple(images.shape[-2:]):
        images = torch.nn.functional.interpolate(
            images.float(), size=(height, width), mode="bilinear", antialias=True
        )
    pixels = images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [png_data_uri(p) for p in pixels]


def spectrogram_thumbnails(spectrograms: Tensor, px: int = THUMBNAIL_PX) -> list[str]:
    """PNG data URIs of log-mel spectrograms in the magma colour map, low frequencies at the bottom.

    Each shows its loudest cell down to :data:`SPECTROGRAM_TOP_DB` below it (the usual display
    range), shrunk to fit ``px`` rows by ``2 px`` columns.

    Shape:
        spectrograms dB ``[B, 1, n_mels, frames]`` or ``[B, n_mels, frames]``.
    """
    import matplotlib

    specs = spectrograms.float().reshape(len(spectrograms), *spectrograms.shape[-2:])
    height, width = fit_within(specs.shape[-2], specs.shape[-1], (px, 2 * px))
    loudest = specs.amax(dim=(1, 2), keepdim=True)
    scaled = ((specs - loudest) / SPECTROGRAM_TOP_DB + 1).clamp(0, 1).flip(1)  # low bands down
    scaled = torch.nn.functional.interpolate(
        scaled[:, None], size=(height, width), mode="bilinear", antialias=True
    )[:, 0]
    colours = matplotlib.colormaps["magma"](scaled.numpy())[..., :3]  # [B, h, w, 3] in [0, 1]
    return [png_data_uri((c * 255).round().astype(np.uint8)) for c in colours]


def sparkline_thumbnails(series: Tensor, px: int = THUMBNAIL_PX) -> list[str]:
    """PNG data URIs of line plots of series, one colour per channel, ``3 px`` wide by ``px`` high.

    All channels of an item share its vertical scale (its minimum to its maximum); longer series
    are averaged down to about two points per pixel column.

    Shape:
        series ``[B, C, T]``.
    """
    import matplotlib

    width, height, margin = 3 * px, px, 2
    palette = [
        tuple(round(255 * v) for v in matplotlib.colormaps["tab10"](c % 10)[:3]) for c in range(10)
    ]
    values = series.float()
    if values.shape[-1] > 2 * width:
        values = torch.nn.functional.adaptive_avg_pool1d(values, 2 * width)
    steps = values.shape[-1]
    x = np.linspace(margin, width - 1 - margin, steps) if steps > 1 else np.full(1, width / 2)
    uris = []
    for item in values.numpy():
        low, high = float(np.nanmin(item)), float(np.nanmax(item))
        span = high - low if high > low else 1.0
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        for channel, line in enumerate(item):
            y = height - 1 - margin - (line - low) / span * (height - 1 - 2 * margin)
            points = [(float(a), float(b)) for a, b in zip(x, y, strict=True)]
            draw.line(points, fill=palette[channel % 10], width=1)
        uris.append(png_data_uri(np.asarray(canvas)))
    return uris


def table_rows(rows: Tensor, columns: Sequence[dict[str, Any]]) -> list[str]:
    """Each encoded table row as ``name = value`` lines, decoded with the fitted columns.

    Numbers are shown as read (the standardisation undone), categories by name (``?``: missing,
    or unseen in training); after :data:`TABLE_PREVIEW_COLUMNS` columns the rest are counted.

    Shape:
        rows float ``[B, D]``, D = ``len(columns)`` (columns: ``{"name", "kind", ...}`` dicts of
        :mod:`simclr.modalities.tabular.columns`; numbered ``x0, x1, ...`` when empty).
    """
    shown = columns[:TABLE_PREVIEW_COLUMNS] if columns else []
    previews = []
    for row in rows.tolist():
        if not shown:
            lines = [f"x{j} = {v:.4g}" for j, v in enumerate(row[:TABLE_PREVIEW_COLUMNS])]
        else:
            lines = [f"{c['name']} = {_decoded(v, c)}" for v, c in zip(row, shown, strict=False)]
        hidden = len(row) - len(lines)
        previews.append("\n".join(lines + ([f"(+{hidden} more columns)"] if hidden > 0 else [])))
    return previews


def _decoded(value: float, column: dict[str, Any]) -> str:
    """One encoded cell as its value: a number, or a category name (``?`` for code 0)."""
    if column.get("kind") == "categorical":
        code = round(value)
        categories = column.get("categories", [])
        return str(categories[code - 1]) if 1 <= code <= len(categories) else "?"
    return f"{value * column.get('std', 1.0) + column.get('mean', 0.0):.4g}"


def short_text(text: str, limit: int = TEXT_PREVIEW_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def item_previews(
    modality: Modality,
    items: Items,
    index: Tensor,
    *,
    px: int = THUMBNAIL_PX,
    batch_size: int = 256,
) -> Previews:
    """Previews of the items at ``index`` of ``items``, as the modality shows them.

    Pictures are made from the modality's evaluation input (:meth:`Modality.model_input`: the
    resized image, the centre crop's log-mel spectrogram, the resampled and normalised series),
    so they show what the encoder embedded. A modality without a preview maker here (one
    registered from outside the package) gets its item names.

    Shape:
        index int64 ``[n]`` (positions in ``items``) -> ``n`` previews.
    """
    maker = PREVIEW_MAKERS.get(modality.name)
    if maker is None:
        return Previews("text", [items.names[i] for i in index.tolist()])
    return maker(modality, items, index, px, batch_size)


def _picture_previews(
    draw: Callable[[Tensor, int], list[str]], *, pixelated: bool
) -> Callable[[Modality, Items, Tensor, int, int], Previews]:
    """A preview maker that draws the evaluation inputs of the items with ``draw``.

    The page shows every picture ``3 px`` wide: sparklines at their size, thumbnails enlarged.
    """

    def make(modality: Modality, items: Items, index: Tensor, px: int, batch_size: int) -> Previews:
        values = [""] * len(index)  # an item unreadable now keeps an empty preview
        for batch, _, positions in modality.eval_batches(
            items.subset(index), batch_size=batch_size
        ):
            inputs = modality.model_input(batch, "cpu")
            for position, uri in zip(positions.tolist(), draw(inputs, px), strict=True):
                values[position] = uri
        return Previews("image", values, 3 * px, pixelated)

    return make


def _text_previews(
    modality: Modality, items: Items, index: Tensor, px: int, batch_size: int
) -> Previews:
    from simclr.modalities.text.items import TextItems

    assert isinstance(items, TextItems)
    return Previews("text", [short_text(items.texts[i]) for i in index.tolist()])


def _table_previews(
    modality: Modality, items: Items, index: Tensor, px: int, batch_size: int
) -> Previews:
    from simclr.modalities.tabular import TableItems

    assert isinstance(items, TableItems)
    return Previews("text", table_rows(items.inputs[index], items.columns))


PREVIEW_MAKERS: dict[str, Callable[[Modality, Items, Tensor, int, int], Previews]] = {
    "image": _picture_previews(image_thumbnails, pixelated=True),
    "audio": _picture_previews(spectrogram_thumbnails, pixelated=False),
    "timeseries": _picture_previews(sparkline_thumbnails, pixelated=False),
    "text": _text_previews,
    "tabular": _table_previews,
}
"""How each built-in modality previews its items: ``(modality, items, index, px, batch_size)``."""


def short_names(names: Sequence[str]) -> list[str]:
    """Item names without the folder they all share (file paths become paths in the data).

    Names that are not all paths below one folder are returned unchanged.
    """
    if len(names) < 2 or not all(os.sep in n for n in names):
        return list(names)
    try:
        common = os.path.commonpath(names)
    except ValueError:  # absolute and relative paths mixed
        return list(names)
    if not common or common in names:
        return list(names)
    return [os.path.relpath(n, common) for n in names]


def default_clusters(labels: Tensor) -> int:
    """The k of the k-means colouring: the classes in ``labels``, else :data:`DEFAULT_CLUSTERS`."""
    classes = int(torch.unique(labels[labels >= 0]).numel())
    return classes if classes > 1 else DEFAULT_CLUSTERS


def explorer_figure(
    coords: np.ndarray,
    names: Sequence[str],
    labels: np.ndarray,
    clusters: np.ndarray,
    previews: Previews,
    *,
    class_names: Sequence[str] | None = None,
    color: Color = "label",
    title: str = "embedding explorer",
    meta: dict[str, Any] | None = None,
) -> Any:
    """The explorer's plotly figure: one trace per class and one per cluster, a colour dropdown.

    Every point is in one label trace and one cluster trace; the dropdown shows one group. Each
    point's ``customdata`` is ``[item, name, class, cluster]`` (``item``: its position in
    ``previews.values``); ``layout.meta`` holds the previews (read by the page's script) and
    ``meta``.

    Shape:
        coords float ``[n, 2]``; names, labels (int, -1 = unlabelled), clusters (int) ``[n]``.

    Returns:
        A ``plotly.graph_objects.Figure``.
    """
    go = require("plotly.graph_objects", "explorer", "for simclr map --html (the explorer page)")
    colors = require("plotly.colors", "explorer", "for simclr map --html (the explorer page)")
    if not len(coords) == len(names) == len(labels) == len(clusters) == len(previews.values):
        raise ValueError("coords, names, labels, clusters and previews need one entry per point")

    def class_name(label: int) -> str:
        if label < 0:
            return "unlabelled"
        return class_names[label] if class_names and label < len(class_names) else str(label)

    size = float(np.clip(300 / np.sqrt(len(coords)), 5, 12))
    customdata = [
        [i, names[i], class_name(int(labels[i])), int(clusters[i])] for i in range(len(coords))
    ]
    hover = "<b>%{customdata[1]}</b><br>class: %{customdata[2]}<br>cluster: %{customdata[3]}"
    groups = {
        "label": _trace_groups(labels, class_name, colors.qualitative),
        "cluster": _trace_groups(clusters, lambda v: f"cluster {v}", colors.qualitative),
    }

    fig = go.Figure()
    visibility: dict[str, list[bool]] = {"label": [], "cluster": []}
    for group, traces in groups.items():
        for name, mask, trace_color in traces:
            chosen = np.flatnonzero(mask)
            fig.add_trace(
                go.Scatter(
                    x=coords[chosen, 0],
                    y=coords[chosen, 1],
                    mode="markers",
                    name=name,
                    marker={"size": size, "color": trace_color, "line": {"width": 0}},
                    customdata=[customdata[i] for i in chosen],
                    hovertemplate=hover + "<extra></extra>",
                    selected={"marker": {"size": size * 1.8, "opacity": 1.0}},
                    unselected={"marker": {"opacity": SEARCH_DIMMED_OPACITY}},
                    visible=group == color,
                )
            )
            for key in visibility:
                visibility[key].append(key == group)

    legend_titles = {"label": "class", "cluster": f"k-means cluster (k={len(groups['cluster'])})"}
    buttons = [
        {
            "label": f"colour by {'class label' if key == 'label' else 'k-means cluster'}",
            "method": "update",
            "args": [{"visible": visibility[key]}, {"legend.title.text": legend_titles[key]}],
        }
        for key in ("label", "cluster")
    ]
    fig.update_layout(
        title={"text": title, "x": 0.5, "font": {"size": 15}},
        template="plotly_white",
        hovermode="closest",
        margin={"l": 10, "r": 10, "t": 80, "b": 10},
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
        legend={"title": {"text": legend_titles[color]}, "itemsizing": "constant"},
        updatemenus=[
            {
                "buttons": buttons,
                "active": 0 if color == "label" else 1,
                "direction": "down",
                "x": 0.0,
                "xanchor": "left",
                "y": 1.02,
                "yanchor": "bottom",
            }
        ],
        meta={
            **(meta or {}),
            "preview_kind": previews.kind,
            "preview_px": previews.display_px,
            "preview_pixelated": previews.pixelated,
            "previews": previews.values,
        },
    )
    return fig


def _trace_groups(
    values: np.ndarray, name: Callable[[int], str], qualitative: Any
) -> list[tuple[str, np.ndarray, str]]:
    """``(name, mask, colour)`` of one trace per value (``-1``, unlabelled, first and grey).

    Ten values or fewer get plotly's D3 colours (matplotlib's tab10), more the 26 of Alphabet.
    """
    found = sorted(int(v) for v in np.unique(values) if v >= 0)
    palette = qualitative.D3 if len(found) <= 10 else qualitative.Alphabet
    traces = [(name(v), values == v, palette[n % len(palette)]) for n, v in enumerate(found)]
    if (values < 0).any():
        traces.insert(0, ("unlabelled", values < 0, UNLABELLED_COLOR))
    return traces


PAGE_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var meta = gd.layout.meta;
var panel = document.getElementById('simclr-preview');
var thumb = document.getElementById('simclr-thumb');
var text = document.getElementById('simclr-text');
var caption = document.getElementById('simclr-caption');
var box = document.getElementById('simclr-search');
var matches = document.getElementById('simclr-matches');
if (meta.preview_kind === 'image') {
  thumb.style.width = meta.preview_px + 'px';
  thumb.style.imageRendering = meta.preview_pixelated ? 'pixelated' : 'auto';
} else {
  thumb.remove();
}
gd.on('plotly_hover', function (event) {
  var point = event.points[0];
  var preview = meta.previews[point.customdata[0]];
  if (meta.preview_kind === 'image') { thumb.src = preview; } else { text.textContent = preview; }
  caption.textContent = point.customdata[1];
  panel.hidden = false;
  // left of the pointer (plotly's hover label is on its right), unless there is no room
  var mouse = event.event || {clientX: 0, clientY: 0};
  var left = mouse.clientX - panel.offsetWidth - 24;
  if (left < 0) { left = mouse.clientX + 24; }
  var top = Math.min(mouse.clientY - panel.offsetHeight / 2,
                     window.innerHeight - panel.offsetHeight - 4);
  panel.style.left = left + 'px';
  panel.style.top = Math.max(0, top) + 'px';
});
gd.on('plotly_unhover', function () { panel.hidden = true; });
box.addEventListener('input', function () {
  var query = box.value.trim().toLowerCase();
  var shown = 0;
  var selected = gd.data.map(function (trace) {
    if (!query) { return null; }
    var hits = [];
    trace.customdata.forEach(function (row, j) {
      if (String(row[1]).toLowerCase().indexOf(query) !== -1) { hits.push(j); }
    });
    if (trace.visible !== false) { shown += hits.length; }
    return hits;
  });
  Plotly.restyle(gd, {selectedpoints: selected});
  matches.textContent = query ? shown + ' matching' : '';
});
"""
"""The page's script (plotly ``post_script``): the hover preview and the search highlight."""

PAGE_STYLE = """
body { margin: 0; font: 13px system-ui, sans-serif; color: #222; }
#simclr-toolbar { display: flex; gap: 12px; align-items: center; padding: 8px 12px;
  border-bottom: 1px solid #ddd; }
#simclr-search { width: 22em; padding: 3px 6px; font: inherit; }
#simclr-matches { color: #555; }
#simclr-note { color: #777; margin-left: auto; }
#simclr-preview { position: fixed; z-index: 10; pointer-events: none; background: white;
  border: 1px solid #bbb; border-radius: 4px; padding: 6px; box-shadow: 0 2px 8px #0003;
  max-width: 420px; }
#simclr-preview img { display: block; }
#simclr-text { margin: 0; white-space: pre-wrap; font: 12px ui-monospace, monospace; }
#simclr-text:empty { display: none; }
#simclr-caption { margin-top: 4px; font-size: 11px; color: #555; word-break: break-all; }
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<div id="simclr-toolbar">
<label>search names <input id="simclr-search" type="search" autocomplete="off"
 placeholder="part of a file name"></label>
<span id="simclr-matches"></span>
<span id="simclr-note">{note}</span>
</div>
<div id="simclr-preview" hidden><img id="simclr-thumb" alt="preview"><pre id="simclr-text"></pre>
<div id="simclr-caption"></div></div>
{plot}
</body>
</html>
"""


def explorer_html(figure: Any, *, title: str, note: str = "") -> str:
    """The page: a toolbar (search box), the hover panel, and the figure with plotly.js inline.

    Args:
        figure: From :func:`explorer_figure`.
        title: The page's ``<title>``.
        note: A line at the right of the toolbar (what is mapped); plain text.
    """
    plot = figure.to_html(
        include_plotlyjs=True,  # inline: the page opens without a network
        include_mathjax=False,
        full_html=False,
        default_height="calc(100vh - 48px)",
        div_id="simclr-map",
        post_script=PAGE_SCRIPT,
        config={"displaylogo": False, "scrollZoom": True},
    )
    return PAGE.format(
        title=html.escape(title), style=PAGE_STYLE, note=html.escape(note), plot=plot
    )


def write_explorer(
    features: Features,
    items: Items,
    modality: Modality,
    out: Path,
    *,
    method: str = "tsne",
    seed: int = 0,
    max_points: int = EXPLORER_MAX_POINTS,
    color: Color | None = None,
    k: int | None = None,
    thumbnail_px: int = THUMBNAIL_PX,
    title: str | None = None,
) -> Path:
    """Write the explorer page of ``features``: map, previews, colours and search in one file.

    Args:
        features: From :func:`simclr.evaluate.features.dataset_features` (row ``r`` is the item
            ``features.index[r]`` of ``items``).
        items: The dataset the features were computed on.
        modality: The checkpoint's modality (:meth:`Encoder.modality`); it draws the previews.
        out: HTML file to write (parent folders are created; written atomically).
        method: ``tsne`` or ``umap`` (see :func:`simclr.viz.embed_2d`).
        seed: Subsample, map and k-means seed.
        max_points: Points mapped at most (stratified subsample).
        color: Colouring when the page opens; default ``label`` when the mapped points have
            labels, else ``cluster``.
        k: Clusters of the k-means colouring; default :func:`default_clusters` (at most the
            number of mapped points).
        thumbnail_px: Longest side of a picture preview, in pixels (at most 256).
        title: First title line (default ``"embedding explorer"``).

    Returns:
        ``out``.

    Raises:
        UserError: plotly missing (the ``explorer`` extra), a bad ``method``, ``color``, ``k``
            or ``thumbnail_px``, or fewer than 3 points.
    """
    from simclr.evaluate.cluster import cluster
    from simclr.evaluate.features import Features
    from simclr.viz import _map_title, embed_2d

    require("plotly", "explorer", "for simclr map --html (the explorer page)")
    if color not in (None, "label", "cluster"):
        raise UserError(f"unknown colouring {color!r}; choose label or cluster")
    if not 8 <= thumbnail_px <= 256:
        raise UserError(f"thumbnail size must be 8 to 256 pixels (got {thumbnail_px})")
    coords, positions, protocol = embed_2d(
        features, method=method, seed=seed, max_points=max_points
    )
    labels = features.labels[positions]
    mapped = Features(features.features[positions], labels, features.index[positions])
    k = min(default_clusters(labels), len(positions)) if k is None else k
    if not 1 <= k <= len(positions):
        raise UserError(f"k must be between 1 and the number of mapped points ({len(positions)})")
    clustered = cluster(mapped, k=k, seed=seed)
    index = features.index[positions]
    previews = item_previews(modality, items, index, px=thumbnail_px)
    num_classes = int(torch.unique(labels[labels >= 0]).numel())
    heading = _map_title(title or "embedding explorer", method, protocol, num_classes)
    protocol["clusters"] = clustered["protocol"]
    figure = explorer_figure(
        coords,
        short_names([items.names[i] for i in index.tolist()]),
        labels.numpy(),
        clustered["assignment"].numpy(),
        previews,
        class_names=items.classes or None,
        color=color or ("label" if num_classes > 0 else "cluster"),
        title=heading.replace("\n", "<br>"),
        meta={"protocol": protocol},
    )
    page = explorer_html(
        figure,
        title=title or "embedding explorer",
        note=f"{modality.name}: {len(positions):,} points, k-means k={k}; "
        "hover a point for its preview",
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out, page)
