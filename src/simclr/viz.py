"""Pictures of a run as PNG files: the augmented views, the training curves, a 2-D feature map.

Each function draws one picture with matplotlib's Agg canvas (no pyplot, no global backend
switch, so it is safe inside notebooks and threads) at a fixed figure size, so the pixel size of
a picture depends only on its content's shape and ``dpi``. matplotlib is imported inside the
functions so that ``import simclr`` stays light.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.augment.loader import TwoCrops, eval_resize
from simclr.augment.views import SimCLRViews
from simclr.checkpoint import write_atomic
from simclr.config import AugmentConfig
from simclr.data.datasets import (
    FileImages,
    ImageDataset,
    TensorImages,
    display_channels,
    read_image,
)
from simclr.errors import UserError, require
from simclr.metrics import read_metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from simclr.evaluate.features import Features  # viz sits below evaluate (pictures of views)

log = logging.getLogger("simclr")

VIEW_CELL_IN = 1.4
"""Side of one image in the views grid, in inches."""
VIEW_LABEL_IN = 1.1
"""Width of the row-label margin of the views grid, in inches."""
VIEW_TITLE_IN = 0.75
"""Height of the title and column headers of the views grid, in inches."""
CURVES_SIZE_IN = (16.0, 7.0)
MAP_SIZE_IN = (10.0, 8.0)
MAP_LEGEND_MAX_CLASSES = 20
"""More classes than this get no legend (it would hide the map) and a continuous colour map."""
TSNE_PCA_DIM = 50
"""t-SNE runs on the first principal components (the usual speed-up; van der Maaten 2014)."""
UNLABELLED_COLOR = "0.6"


def subsample(
    labels: Tensor, max_points: int, *, seed: int = 0, option: str = "max_points"
) -> Tensor:
    """Positions of at most ``max_points`` items, drawn at random but stratified by label.

    Each label value (``-1``, unlabelled, counts as one) keeps a share of the sample
    proportional to its size, so a map of a subsample shows the classes in the proportions of
    the data; the draw depends only on ``labels``, ``max_points`` and ``seed``. ``option`` is
    the caller's name for ``max_points`` in the error for a count below 1.

    Shape:
        labels int64 ``[N]`` -> positions int64 ``[min(N, max_points)]``, sorted.
    """
    n = len(labels)
    if max_points < 1:
        raise UserError(f"{option} must be at least 1 (got {max_points})")
    if n <= max_points:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(n, generator=generator)
    _, inverse, counts = torch.unique(labels[shuffled], return_inverse=True, return_counts=True)
    # rank of each item among the shuffled items of its class
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - starts[inverse[order]]
    # taking items by ascending (rank + 0.5) / class size fills every class at the same rate
    key = (rank.double() + 0.5) / counts[inverse].double()
    chosen = shuffled[torch.argsort(key, stable=True)[:max_points]]
    return chosen.sort().values


def draw_views(
    dataset: ImageDataset,
    augment: AugmentConfig,
    out: Path,
    *,
    num_images: int = 8,
    seed: int = 0,
    dpi: int = 100,
) -> Path:
    """Draw a grid of images next to two SimCLR views of each: what the encoder is asked to match.

    The views come from the training code paths: :class:`SimCLRViews` on the uint8 images for
    in-memory data, and for image files :class:`TwoCrops` (the loader workers' crops) followed
    by :class:`SimCLRViews` on the ``[n, 2, 3, S, S]`` crops. The original is shown with the
    evaluation preprocessing. Images are picked at random, stratified by class
    (:func:`subsample`), and shown in dataset order.

    Args:
        dataset: Images to show (from :func:`simclr.data.datasets.build_dataset`).
        augment: The view recipe.
        out: PNG file to write (parent folders are created).
        num_images: Rows of the grid.
        seed: Picks the images and seeds the views.
        dpi: Pixels per inch; the picture is ``(1.1 + 3 x 1.4) x (0.75 + rows x 1.4)`` inches.

    Returns:
        ``out``.

    Raises:
        UserError: ``num_images`` < 1 or none of the picked files could be read.
    """
    picked = subsample(dataset.labels, num_images, seed=seed, option="num_images").tolist()
    originals, first, second, kept = _views_of(dataset, picked, augment, seed=seed)
    if not kept:
        raise UserError("none of the picked images could be read")

    fig, axes = view_grid(
        len(kept),
        (VIEW_CELL_IN, VIEW_CELL_IN),
        (VIEW_LABEL_IN, VIEW_TITLE_IN),
        pad_in=0.05,
        spacing=(0.05, 0.05),
    )
    smooth = "antialiased" if augment.size > 64 else "nearest"
    for row, index in enumerate(kept):
        for col, image in enumerate((originals[row], first[row], second[row])):
            ax = axes[row, col]
            ax.imshow(display_channels(image).permute(1, 2, 0).numpy(), interpolation=smooth)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(
            _row_label(dataset, index), rotation=0, ha="right", va="center", fontsize=9
        )
    for col, header in enumerate(("original (eval)", "view 1", "view 2")):
        axes[0, col].set_title(header, fontsize=9)
    fig.suptitle(_recipe_summary(augment), fontsize=9, y=1 - 0.08 / fig.get_figheight(), va="top")
    return _save(fig, out, dpi)


def plot_run(run_dir: Path, out: Path | None = None, *, dpi: int = 100) -> Path:
    """Draw a run's loss, learning rate, throughput and kNN top-1 over steps and wall-clock time.

    Steps are the top row, elapsed seconds the bottom one; the throughput shows when the
    machine was busy with something else, which a timed run's step count depends on.

    Reads ``metrics.jsonl`` (with the kNN during training, ``--eval-every``, drawn as a line),
    the end-of-run ``knn.json`` (plotted at the last logged step and time, with its random-init
    score as a dashed baseline) and the ``knn-*.json`` files written by ``simclr knn`` (plotted
    at their checkpoint's step; their time is interpolated from the metrics). A resumed run
    logs again the steps after its last checkpoint; the last record of each step is kept.

    Args:
        run_dir: A run folder.
        out: PNG file; default ``run_dir/curves.png``.
        dpi: Pixels per inch of the 16 x 7 inch figure.

    Returns:
        The PNG path.

    Raises:
        UserError: ``run_dir`` has no ``metrics.jsonl`` or no records in it.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; is it a simclr run folder?")
    logged = [r for r in read_metrics(run_dir) if "step" in r]
    by_step = {int(r["step"]): r for r in logged if "loss" in r}
    if not by_step:
        raise UserError(f"{run_dir / 'metrics.jsonl'} holds no records yet")
    records = [by_step[s] for s in sorted(by_step)]
    steps = np.array([r["step"] for r in records], dtype=float)
    seconds = np.array([r.get("elapsed_s", np.nan) for r in records], dtype=float)
    knn, baseline = _knn_points(run_dir, steps, seconds)
    during = {int(r["step"]): r for r in logged if "knn_top1" in r}
    periodic = [
        (float(s), float(during[s].get("elapsed_s", np.nan)), float(during[s]["knn_top1"]))
        for s in sorted(during)
    ]

    in_minutes = bool(np.nanmax(seconds, initial=0.0) >= 600)
    times = seconds / 60 if in_minutes else seconds
    time_label = "wall-clock time (min)" if in_minutes else "wall-clock time (s)"

    fig = _figure(CURVES_SIZE_IN, layout="constrained")
    axes = fig.subplots(2, 4, squeeze=False, sharex="row")
    loss = np.array([r.get("loss", np.nan) for r in records], dtype=float)
    lr = np.array([r.get("lr", np.nan) for r in records], dtype=float)
    rate = np.array([r.get("images_per_s", np.nan) for r in records], dtype=float)
    for row, (x, x_label) in enumerate(((steps, "step"), (times, time_label))):
        ax_loss, ax_lr, ax_rate, ax_knn = axes[row]
        ax_loss.plot(x, loss, color="tab:blue", alpha=0.35, linewidth=0.8, label="logged")
        smooth = _moving_average(loss)
        if smooth is not None:
            ax_loss.plot(x, smooth, color="tab:blue", linewidth=1.8, label="moving average")
            ax_loss.legend(fontsize=8)
        ax_loss.set_ylabel("NT-Xent loss")
        ax_lr.plot(x, lr, color="tab:orange")
        ax_lr.set_ylabel("learning rate")
        ax_rate.plot(x, rate, color="tab:purple", linewidth=1.0)
        ax_rate.set_ylabel("images / s")
        ax_rate.set_ylim(bottom=0)
        _draw_knn(ax_knn, knn, baseline, periodic, use_time=row == 1, in_minutes=in_minutes)
        for ax in (ax_loss, ax_lr, ax_rate, ax_knn):
            ax.set_xlabel(x_label)
            ax.grid(alpha=0.3)
    axes[0, 0].set_title("training loss")
    axes[0, 1].set_title("learning rate")
    axes[0, 2].set_title("training throughput")
    axes[0, 3].set_title("weighted kNN top-1")
    fig.suptitle(_run_summary(run_dir, records, knn, baseline, periodic), fontsize=11)
    return _save(fig, run_dir / "curves.png" if out is None else out, dpi)


def embed_2d(
    features: Features,
    *,
    method: str = "tsne",
    seed: int = 0,
    max_points: int = 5000,
) -> tuple[np.ndarray, Tensor, dict[str, Any]]:
    """2-D coordinates of (a stratified subsample of) L2-normalised features, with the protocol.

    t-SNE (scikit-learn, PCA initialisation, on the first 50 principal components) or UMAP
    (``umap-learn``). About a minute for 5,000 points on 2 CPU cores.

    Shape:
        features ``[N, D]`` -> coordinates float ``[n, 2]`` and positions int64 ``[n]`` (rows of
        ``features`` that were mapped), n = min(N, max_points).

    Raises:
        UserError: unknown method, ``umap`` asked but not installed, or fewer than 3 points.
    """
    if method not in ("tsne", "umap"):
        raise UserError(f"unknown map method {method!r}; choose tsne or umap")
    positions = subsample(features.labels, max_points, seed=seed)
    if len(positions) < 3:
        raise UserError(f"a 2-D map needs at least 3 points (got {len(positions)})")
    x = F.normalize(features.features[positions].float(), dim=1).numpy().astype(np.float64)
    sampled = len(positions) < len(features.labels)
    protocol: dict[str, Any] = {
        "features": "L2-normalised",
        "num_points": len(positions),
        "num_total": len(features.labels),
        "subsample": "random, stratified by label" if sampled else "all points",
        "seed": seed,
    }
    if method == "umap":
        umap = require("umap", "umap", "for --method umap (umap-learn; or use --method tsne)")
        neighbours = min(15, len(positions) - 1)
        reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed)
        protocol.update(method="UMAP (umap-learn)", n_neighbors=neighbours)
        return np.asarray(reducer.fit_transform(x)), positions, protocol

    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > TSNE_PCA_DIM and len(x) > TSNE_PCA_DIM:
        x = PCA(TSNE_PCA_DIM, random_state=seed).fit_transform(x)
        protocol["pca_dim"] = TSNE_PCA_DIM
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    protocol.update(method="t-SNE (scikit-learn, Barnes-Hut)", perplexity=perplexity, init="pca")
    # One OpenMP thread: with torch's OpenMP runtime loaded too, or other work on the cores,
    # the spinning threads made t-SNE 4-6x slower (2,000 points: 70 s vs 11 s on 2 busy cores);
    # it also makes the map independent of the core count.
    with _single_openmp_thread():
        coords = tsne.fit_transform(x)
    return np.asarray(coords), positions, protocol


def draw_map(
    features: Features,
    out: Path,
    *,
    class_names: Sequence[str] | None = None,
    method: str = "tsne",
    seed: int = 0,
    max_points: int = 5000,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draw a 2-D map of the features (:func:`embed_2d`), one colour per class.

    Classes that the encoder separates form islands; a random-init encoder gives a mixed cloud.
    Unlabelled points are grey. The protocol of the map is stored in the PNG's ``Description``
    text field.

    Args:
        features: From :func:`simclr.evaluate.features.dataset_features`.
        out: PNG file to write.
        class_names: Names of the label values (default: the numbers).
        method: ``tsne`` or ``umap``.
        seed: Subsample and map seed.
        max_points: Points mapped at most (stratified subsample).
        title: First title line (default: ``"embedding map"``).
        dpi: Pixels per inch of the 10 x 8 inch figure.

    Returns:
        ``out``.
    """
    coords, positions, protocol = embed_2d(
        features, method=method, seed=seed, max_points=max_points
    )
    labels = features.labels[positions].numpy()
    fig = _figure(MAP_SIZE_IN, layout="constrained")
    ax = fig.subplots()
    num_classes = _scatter_by_class(ax, coords, labels, class_names)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(_map_title(title, method, protocol, num_classes), fontsize=11)
    return _save(fig, out, dpi, description=json.dumps(protocol))


def _legend_fits(num_classes: int) -> bool:
    """Whether a map of ``num_classes`` classes gets a legend and a qualitative colour map."""
    return num_classes <= MAP_LEGEND_MAX_CLASSES


def _scatter_by_class(
    ax: Axes, coords: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None
) -> int:
    """Scatter the points: unlabelled grey, one colour per class; return the number of classes.

    A legend beside the map names the classes when they are few enough (:func:`_legend_fits`).

    Shape:
        coords float ``[N, 2]``, labels int ``[N]`` (-1 = unlabelled).
    """
    import matplotlib

    size = float(np.clip(20000 / len(coords), 3, 30))
    classes = sorted(int(c) for c in np.unique(labels) if c >= 0)
    unlabelled = labels < 0
    if unlabelled.any():
        ax.scatter(
            coords[unlabelled, 0],
            coords[unlabelled, 1],
            s=size,
            c=UNLABELLED_COLOR,
            linewidths=0,
            label="unlabelled",
        )
    legend = _legend_fits(len(classes))
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20" if legend else "turbo"]
    for number, label in enumerate(classes):
        color = cmap(number if legend else number / max(1, len(classes) - 1))
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        ax.scatter(
            coords[labels == label, 0],
            coords[labels == label, 1],
            s=size,
            color=color,
            linewidths=0,
            label=name,
        )
    if legend and (classes or unlabelled.any()):
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            markerscale=max(1, 6 / size**0.5),
            fontsize=10,
            frameon=False,
        )
    return len(classes)


def _map_title(title: str | None, method: str, protocol: dict[str, Any], num_classes: int) -> str:
    """The map's two title lines: ``title``, then the method and how many points it shows."""
    method_name = "t-SNE" if method == "tsne" else "UMAP"
    shown = f"{protocol['num_points']:,}" + (
        f" of {protocol['num_total']:,}" if protocol["num_points"] < protocol["num_total"] else ""
    )
    extra = "" if _legend_fits(num_classes) else f", {num_classes} classes (no legend)"
    return f"{title or 'embedding map'}\n{method_name} of {shown} L2-normalised features{extra}"


def _single_openmp_thread() -> Any:
    """A context in which OpenMP libraries use one thread (scikit-learn ships threadpoolctl)."""
    threadpoolctl = importlib.import_module("threadpoolctl")
    return threadpoolctl.threadpool_limits(1, user_api="openmp")


def _views_of(
    dataset: ImageDataset, picked: list[int], augment: AugmentConfig, *, seed: int
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[int]]:
    """Eval-preprocessed originals and two views (uint8 ``[3, S, S]`` each) of readable items."""
    size = augment.size
    views = SimCLRViews(augment, seed=seed)
    if isinstance(dataset, TensorImages):
        images = dataset.images[picked]
        originals = [img if img.shape[-1] == size else eval_resize(img, size) for img in images]
        first, second = views(images)
        return originals, _to_uint8(first), _to_uint8(second), picked
    if not isinstance(dataset, FileImages):
        raise UserError(f"cannot draw views of a {type(dataset).__name__}")
    crops = TwoCrops(augment)
    originals, pairs, kept = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # TwoCrops draws from torch's global generator, as in workers
        for index in picked:
            image = read_image(dataset.names[index])
            if image is None:
                continue
            originals.append(eval_resize(image, size))
            pairs.append(crops(image))
            kept.append(index)
    if not kept:
        return [], [], [], []
    first, second = views(torch.stack(pairs))
    return originals, _to_uint8(first), _to_uint8(second), kept


def _to_uint8(views: Tensor) -> list[Tensor]:
    return list(views.mul(255).round_().clamp_(0, 255).to(torch.uint8))


def _row_label(dataset: ImageDataset, index: int) -> str:
    label = int(dataset.labels[index])
    if 0 <= label < len(dataset.classes):
        return dataset.classes[label]
    name = dataset.names[index]
    return Path(name).name if "/" in name else name


def _recipe_summary(cfg: AugmentConfig) -> str:
    b, c, s, h = cfg.jitter_amounts()
    crop = f"crop scale {cfg.crop_scale[0]:g}-{cfg.crop_scale[1]:g}"
    blur = f"blur p {cfg.blur_p:g}" + (
        f" (sigma {cfg.blur_sigma[0]:g}-{cfg.blur_sigma[1]:g})" if cfg.blur_p > 0 else ""
    )
    return (
        f"SimCLR views, {cfg.size} px: {crop}, flip p {cfg.flip_p:g}\n"
        f"jitter p {cfg.jitter_p:g} strength {cfg.jitter_strength:g} "
        f"(b {b:g} c {c:g} s {s:g} h {h:g}), gray p {cfg.grayscale_p:g}, {blur}"
    )


def _knn_points(
    run_dir: Path, steps: np.ndarray, seconds: np.ndarray
) -> tuple[list[tuple[float, float, float, str]], float | None]:
    """``(step, seconds, top1, source)`` of the trained encoder, and the random-init top-1."""
    points: list[tuple[float, float, float, str]] = []
    baseline: float | None = None
    final = run_dir / "knn.json"
    if final.is_file():
        result = _read_json(final)
        if "trained" in result:
            top1 = float(result["trained"]["top1"])
            points.append((float(steps[-1]), float(seconds[-1]), top1, final.name))
        if "random_init" in result:
            baseline = float(result["random_init"]["top1"])
    for path in sorted(run_dir.glob("knn-*.json")):
        result = _read_json(path)
        checkpoint = result.get("checkpoint", {})
        if "top1" not in result or "step" not in checkpoint:
            log.warning("ignoring %s: no top1 or checkpoint step", path)
            continue
        if checkpoint.get("weights") == "random init":
            baseline = float(result["top1"]) if baseline is None else baseline
            continue
        step = float(checkpoint["step"])
        points.append(
            (step, float(np.interp(step, steps, seconds)), float(result["top1"]), path.name)
        )
    return points, baseline


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _draw_knn(
    ax: Axes,
    points: list[tuple[float, float, float, str]],
    baseline: float | None,
    periodic: list[tuple[float, float, float]],
    *,
    use_time: bool,
    in_minutes: bool,
) -> None:
    """Weighted kNN top-1 over steps or time: during training (a line) and of checkpoints."""
    if baseline is not None:
        ax.axhline(baseline, color="0.4", linestyle="--", label=f"random init {baseline:.1f}%")
    if periodic:
        x = [p[1] / (60 if in_minutes else 1) if use_time else p[0] for p in periodic]
        ax.plot(
            x,
            [p[2] for p in periodic],
            ".-",
            color="tab:olive",
            linewidth=1.2,
            label="during training (subset)",
        )
    if points:
        ordered = sorted(points)
        x = [p[1] / (60 if in_minutes else 1) if use_time else p[0] for p in ordered]
        y = [p[2] for p in ordered]
        ax.plot(x, y, "o-", color="tab:green", label="SimCLR-trained")
        for xi, yi in zip(x, y, strict=True):
            ax.annotate(
                f"{yi:.1f}%",
                (xi, yi),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
    if not points and not periodic and baseline is None:
        ax.text(
            0.5,
            0.5,
            "no kNN results\n(knn.json, knn-*.json)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="0.4",
        )
        return
    ax.set_ylabel("top-1 accuracy (%)")
    shown = [p[2] for p in points] + [p[2] for p in periodic]
    shown += [] if baseline is None else [baseline]
    low, high = min(shown), max(shown)
    ax.set_ylim(max(0.0, low - 10), min(100.0, high + 10))
    ax.legend(fontsize=8, loc="lower right")


def _run_summary(
    run_dir: Path,
    records: list[dict[str, Any]],
    knn: list[tuple[float, float, float, str]],
    baseline: float | None,
    periodic: list[tuple[float, float, float]],
) -> str:
    last = records[-1]
    text = (
        f"{run_dir.name}: {last['step']:,} steps ({last.get('epoch', 0):.1f} epochs) in "
        f"{last.get('elapsed_s', 0):.0f} s, last loss {last.get('loss', float('nan')):.3f}"
    )
    if knn:
        text += f"; kNN top-1 {max(knn)[2]:.1f}%"
        if baseline is not None:
            text += f" (random init {baseline:.1f}%)"
    trained = [p for p in periodic if p[0] > 0]  # step 0 is the untrained baseline
    if trained:
        best = max(trained, key=lambda p: p[2])
        text += f"; best during training {best[2]:.1f}% at step {best[0]:.0f}"
    return text


def _moving_average(values: np.ndarray, points: int = 40) -> np.ndarray | None:
    """Centred moving average over ~1/points of the curve; ``None`` when too short to matter."""
    window = len(values) // points
    if window < 3:
        return None
    kernel = np.ones(window) / window
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def view_grid(
    rows: int,
    cell_in: tuple[float, float],
    margins_in: tuple[float, float],
    *,
    pad_in: float,
    spacing: tuple[float, float],
    **subplots: Any,
) -> tuple[Figure, Any]:
    """A figure of ``rows`` x 3 axes (original, view 1, view 2) with cells of a fixed size.

    Args:
        rows: Items, one per row.
        cell_in: Width and height of one cell, in inches.
        margins_in: Left margin (row labels) and top margin (title, column headers), inches.
        pad_in: Right and bottom padding, in inches.
        spacing: ``wspace`` and ``hspace`` between cells, as fractions of a cell.
        subplots: More arguments of ``Figure.subplots`` (``sharey="row"``, ...).

    Returns:
        The figure and its ``[rows, 3]`` array of axes.
    """
    width_in = margins_in[0] + 3 * cell_in[0]
    height_in = margins_in[1] + rows * cell_in[1]
    fig = _figure((width_in, height_in))
    fig.subplots_adjust(
        left=margins_in[0] / width_in,
        right=1 - pad_in / width_in,
        top=1 - margins_in[1] / height_in,
        bottom=pad_in / height_in,
        wspace=spacing[0],
        hspace=spacing[1],
    )
    return fig, fig.subplots(rows, 3, squeeze=False, **subplots)


def _figure(size: tuple[float, float], layout: Literal["constrained"] | None = None) -> Figure:
    """A figure on an Agg canvas, without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path, dpi: int, *, description: str | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Software": "simclr"}
    if description is not None:
        metadata["Description"] = description
    # atomically: a failed write (full disk) is one line and keeps the previous picture
    write_atomic(out, lambda handle: fig.savefig(handle, dpi=dpi, format="png", metadata=metadata))
    return out
