"""Reading time series: aeon's shipped UCR/UEA datasets, ``.ts`` files and numpy arrays.

Every reader returns a :class:`SeriesCollection` of float arrays ``[C, T_i]`` (lengths may
differ), their raw labels and names; :func:`to_items` pads them with zeros into the in-memory
:class:`~simclr.data.items.TensorItems` the modality trains on. Three sources:

* ``aeon:<Name>``: a classification dataset shipped inside the aeon package (GunPoint,
  JapaneseVowels, OSULeaf...), with its official train/test split. Only the copy inside the
  package is read: a name that is not shipped is an error, never a download.
* a UCR/UEA ``.ts`` file (one split per file, so ``split`` is ignored), or a folder holding one
  ``*_TRAIN.ts`` and one ``*_TEST.ts`` file (``split`` picks one).
* a numpy ``.npy`` array ``[N, T]`` or ``[N, C, T]``, or an ``.npz`` with an array ``series`` of
  that shape and an optional ``labels`` array ``[N]``; the one collection is split into train
  and test by :func:`~simclr.data.items.split_positions`.

Unequal lengths are written as trailing NaN padding (the aeon convention for arrays) or, in
``.ts`` files, as rows of different lengths. A series with no valid step, or with a missing value
(NaN, infinity) inside its valid part, is skipped with one warning naming it. So is a series
whose values overflow the float32 arithmetic of training: not finite once converted to float32,
or whose float32 mean, variance or mean square (the per-series standardisation statistics) is
not finite, which happens from magnitudes of about 1e19 on. The reader ends with a count.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr.data.items import TensorItems, check_split, label_names, split_positions
from simclr.errors import UserError, first_line, require

log = logging.getLogger("simclr")

AEON_PREFIX = "aeon:"
"""Data specs starting with this name a dataset shipped inside the aeon package."""


@dataclass
class SeriesCollection:
    """Series of possibly different lengths, before padding.

    Attributes:
        series: One float64 array ``[C, T_i]`` per item, finite, ``T_i >= 1``, same ``C``.
        labels: The raw label of each item (strings or numbers), or ``None`` when unlabelled.
        names: One name per item (its source and position there).
    """

    series: list[np.ndarray]
    labels: list[Any] | None
    names: list[str]


def read_series(
    spec: str,
    split: str,
    *,
    test_fraction: float,
    split_seed: int,
) -> SeriesCollection:
    """Read the ``split`` part of the series named by ``spec`` (see the module docstring).

    Args:
        spec: ``aeon:<Name>``, a ``.ts`` file, a folder of ``*_TRAIN.ts``/``*_TEST.ts`` files, or
            an ``.npy``/``.npz`` file.
        split: ``train`` or ``test``.
        test_fraction: Share of an array's items held out as ``test``.
        split_seed: Seed of that split.

    Raises:
        UserError: an unknown split, a missing, empty or malformed input, or an aeon name that is
            not shipped with aeon.
    """
    check_split(split)
    if spec.startswith(AEON_PREFIX):
        return read_aeon(spec[len(AEON_PREFIX) :], split)
    path = Path(spec).expanduser()
    if path.is_dir():
        return read_ts_file(ts_file_for_split(path, split))
    if not path.is_file():
        raise UserError(f"{spec} does not exist (expected aeon:<Name>, a .ts, .npy or .npz file)")
    suffix = path.suffix.lower()
    if suffix == ".ts":
        return read_ts_file(path)
    if suffix in (".npy", ".npz"):
        return read_array(path, split, test_fraction=test_fraction, split_seed=split_seed)
    raise UserError(f"{spec} is not a time-series file (.ts, .npy or .npz)")


def shipped_datasets() -> list[str]:
    """Names of the classification datasets shipped inside the aeon package, sorted.

    A dataset counts when its folder holds ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts`` whose header
    declares class labels (aeon also ships regression problems).
    """
    root = _aeon_data_root()
    names = []
    for entry in sorted(os.listdir(root)):
        train = Path(root, entry, f"{entry}_TRAIN.ts")
        test = Path(root, entry, f"{entry}_TEST.ts")
        if train.is_file() and test.is_file() and _declares_class_labels(train):
            names.append(entry)
    return names


def read_aeon(name: str, split: str) -> SeriesCollection:
    """The ``split`` part of a classification dataset shipped with aeon, with its labels.

    ``aeon.datasets.load_classification`` is pointed at the package's own data folder, which
    keeps it from ever downloading or creating a cache folder.

    Raises:
        UserError: ``name`` is not one of :func:`shipped_datasets`.
    """
    require("aeon.datasets", "timeseries", "to read .ts files and aeon datasets")
    from aeon.datasets import load_classification

    shipped = shipped_datasets()
    if name not in shipped:
        raise UserError(
            f"aeon:{name} is not a classification dataset shipped with aeon (nothing is "
            f"downloaded); choose one of {', '.join(shipped)}, or give a .ts file"
        )
    x, y = load_classification(name, split=split, extract_path=_aeon_data_root())
    series = _as_series_list(x)
    names = [f"{name}/{split}/{i}" for i in range(len(series))]
    return _clean(series, list(y), names, source=f"aeon:{name}")


def ts_file_for_split(folder: Path, split: str) -> Path:
    """The one ``*_TRAIN.ts`` or ``*_TEST.ts`` file of ``folder`` (case-insensitive) for ``split``.

    Raises:
        UserError: none or several such files.
    """
    ending = f"_{split}.ts"
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(ending))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UserError(
            f"{folder} holds {what} *_{split.upper()}.ts file(s); a time-series folder needs "
            "exactly one *_TRAIN.ts and one *_TEST.ts (or give the file itself)"
        )
    return found[0]


def read_ts_file(path: Path) -> SeriesCollection:
    """Every series of a UCR/UEA ``.ts`` file, with its class labels when it has them.

    Raises:
        UserError: the file cannot be read or parsed.
    """
    require("aeon.datasets", "timeseries", "to read .ts files and aeon datasets")
    from aeon.datasets import load_from_ts_file

    try:
        x, y, meta = load_from_ts_file(str(path), return_meta_data=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except (OSError, ValueError, TypeError, IndexError, KeyError) as err:  # aeon: IOError
        raise UserError(f"{path} is not a valid .ts file: {first_line(err)}") from None
    series = _as_series_list(x)
    labels = list(y) if meta.get("classlabel") and len(y) == len(series) else None
    names = [f"{path.name}#{i}" for i in range(len(series))]
    return _clean(series, labels, names, source=str(path))


def read_array(
    path: Path,
    split: str,
    *,
    test_fraction: float,
    split_seed: int,
) -> SeriesCollection:
    """The ``split`` part of a numpy array of series (``.npy``, or ``series`` in an ``.npz``).

    Raises:
        UserError: an unreadable file, a missing ``series`` array, a shape other than
            ``[N, T]`` / ``[N, C, T]``, non-numeric values, or labels of another length.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"cannot read {path}: {first_line(err)}") from None
    labels: np.ndarray | None = None
    if isinstance(loaded, np.ndarray):
        array = loaded
    else:
        with loaded:
            if "series" not in loaded.files:
                raise UserError(
                    f"{path} has no array named 'series' (it holds {', '.join(loaded.files)})"
                )
            array = loaded["series"]
            labels = loaded["labels"] if "labels" in loaded.files else None
    if array.ndim not in (2, 3) or array.shape[0] == 0:
        raise UserError(
            f"{path} must hold series [N, T] or [N, C, T] with N >= 1, not {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise UserError(f"{path} holds {array.dtype} values; series must be numbers")
    if array.ndim == 2:
        array = array[:, None, :]
    if labels is not None and labels.shape != (array.shape[0],):
        raise UserError(
            f"{path}: 'labels' has shape {labels.shape}, expected one label per series "
            f"({array.shape[0]},)"
        )
    keep = split_positions(len(array), split, test_fraction=test_fraction, seed=split_seed)
    positions = keep.tolist()
    series = [np.asarray(array[i], dtype=np.float64) for i in positions]
    kept_labels = None if labels is None else [labels[i].item() for i in positions]
    names = [f"{path.name}#{i}" for i in positions]
    return _clean(series, kept_labels, names, source=str(path))


def to_items(collection: SeriesCollection, classes: Sequence[str] | None = None) -> TensorItems:
    """Pad the series with zeros after their valid part into one float32 tensor.

    Labels become class indices over ``classes`` (the training data's, so that every split
    numbers them alike) or, without them, over the sorted distinct values (integer-valued
    strings such as aeon's ``"2"`` and ``"10"`` sort as numbers); unlabelled collections get
    ``-1`` and no classes.

    Raises:
        UserError: a label that is not one of ``classes``.

    Shape:
        ``inputs`` float32 ``[N, C, T_max]``, ``lengths`` int64 ``[N]``.
    """
    n, names = len(collection.series), collection.names
    channels = collection.series[0].shape[0]
    lengths = torch.tensor([s.shape[1] for s in collection.series], dtype=torch.long)
    inputs = torch.zeros(n, channels, int(lengths.max()), dtype=torch.float32)
    for i, values in enumerate(collection.series):
        inputs[i, :, : values.shape[1]] = torch.from_numpy(values)
    if collection.labels is None:
        return TensorItems(inputs, lengths, torch.full((n,), -1, dtype=torch.long), [], names)
    raw = _numeric_labels(collection.labels)
    if not classes:
        labels, own = label_names(raw)
        return TensorItems(inputs, lengths, labels, own, names)
    position = {name: i for i, name in enumerate(classes)}
    unknown = sorted({str(v) for v in raw} - set(position))
    if unknown:
        raise UserError(
            f"class(es) {', '.join(unknown[:5])} are not among the training classes "
            f"({', '.join(list(classes)[:10])})"
        )
    labels = torch.tensor([position[str(v)] for v in raw], dtype=torch.long)
    return TensorItems(inputs, lengths, labels, list(classes), names)


def _aeon_data_root() -> str:
    """The folder of the datasets shipped inside the installed aeon package."""
    require("aeon.datasets", "timeseries", "to read .ts files and aeon datasets")
    import aeon.datasets

    return os.path.join(os.path.dirname(aeon.datasets.__file__), "data")


def _declares_class_labels(path: Path) -> bool:
    """Whether a ``.ts`` header says ``@classLabel true`` (read up to ``@data``)."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            words = line.strip().lower().split()
            if words[:1] == ["@data"]:
                return False
            if words[:2] == ["@classlabel", "true"]:
                return True
    return False


def _as_series_list(x: Any) -> list[np.ndarray]:
    """An aeon ``[N, C, T]`` array or list of ``[C, T_i]`` arrays, as float64 arrays."""
    return [np.asarray(item, dtype=np.float64).reshape(np.shape(item)[0], -1) for item in x]


def _clean(
    series: Sequence[np.ndarray], labels: list[Any] | None, names: list[str], *, source: str
) -> SeriesCollection:
    """Strip trailing NaN padding; skip series with no valid step or a missing value inside.

    Raises:
        UserError: no series left, or series with different numbers of channels.
    """
    kept: list[int] = []
    trimmed: list[np.ndarray] = []
    for i, values in enumerate(series):
        finite = np.isfinite(values)
        steps = np.flatnonzero(finite.any(axis=0))
        length = int(steps[-1]) + 1 if len(steps) else 0
        if length == 0:
            log.warning("skipping series %s: no finite values", names[i])
        elif not finite[:, :length].all():
            log.warning("skipping series %s: missing values (NaN or inf) inside it", names[i])
        elif not _fits_float32(values[:, :length]):
            log.warning(
                "skipping series %s: values too large for float32 arithmetic (magnitude "
                "%.3g; its float32 statistics overflow)",
                names[i],
                float(np.abs(values[:, :length]).max()),
            )
        else:
            kept.append(i)
            trimmed.append(values[:, :length])
    if not kept:
        raise UserError(f"no readable series in {source}")
    if len(kept) < len(series):
        log.warning(
            "skipped %d unreadable series of %d in %s", len(series) - len(kept), len(series), source
        )
    channels = {v.shape[0] for v in trimmed}
    if len(channels) > 1:
        raise UserError(f"{source} mixes series with {sorted(channels)} channels")
    return SeriesCollection(
        trimmed,
        None if labels is None else [labels[i] for i in kept],
        [names[i] for i in kept],
    )


def _fits_float32(values: np.ndarray) -> bool:
    """Whether ``values`` ``[C, T]`` stay finite in float32, and so do their statistics.

    The per-channel mean, variance and mean square: what standardising a series computes.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        single = values.astype(np.float32)
        mean = single.mean(axis=1, keepdims=True)
        variance = np.square(single - mean).mean(axis=1)
        power = np.square(single).mean(axis=1)
    return bool(
        np.isfinite(single).all()
        and np.isfinite(mean).all()
        and np.isfinite(variance).all()
        and np.isfinite(power).all()
    )


def _numeric_labels(values: list[Any]) -> list[Any]:
    """Labels as ints when every one is an integer-valued string or number, else unchanged."""
    try:
        as_int = [int(str(v)) for v in values]
    except ValueError:
        return values
    return as_int
