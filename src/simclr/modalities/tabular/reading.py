"""Reading tables: CSV (``.csv``, ``.csv.gz``), Parquet, and the tables scikit-learn ships.

A dataset is one of

* a table file, split into ``train`` and ``test`` rows by
  :func:`~simclr.data.items.split_positions` (``data.test_fraction``, ``data.split_seed``);
* ``sklearn:<name>`` for a table bundled with scikit-learn (:data:`SKLEARN_TABLES`; nothing is
  downloaded), split the same way;
* a folder holding ``train.<suffix>`` and ``test.<suffix>``, one file per split.

What the columns mean (numbers, categories, the label) is decided in
:mod:`simclr.modalities.tabular.columns`; this module only gets the rows into a
:class:`pandas.DataFrame`.

Numbers that training could not use are treated as missing values (imputed with the training
median, as for an empty cell), never as a reason to drop the row: infinities, and magnitudes
beyond :data:`MAX_ABS_NUMBER` (float32's largest value: they would overflow once encoded).
One warning per column names the file and counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from simclr.data.items import check_split, split_positions
from simclr.errors import UserError, first_line, require
from simclr.modalities.base import csv_holds_text

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("simclr")

SKLEARN_PREFIX = "sklearn:"
SKLEARN_TABLES = ("wine", "breast_cancer", "digits", "iris")
"""Tables bundled with scikit-learn, read as ``sklearn:<name>`` (digits: 64 pixel columns)."""
TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz")
"""File endings read as tables, in the order a split folder's files are looked for."""
MAX_ABS_NUMBER = 3.4028234663852886e38
"""float32's largest value: numbers beyond it (and infinities) become missing values."""


@dataclass
class Table:
    """The rows of a dataset and which of them form the requested split.

    ``frame`` is the whole file (both splits when the data comes as one collection, so that the
    class list is the same for both); ``positions`` are the split's rows within it.
    """

    frame: pd.DataFrame
    positions: list[int]
    source: str
    """Short name of where the rows come from, used in item names and messages."""

    def rows(self) -> pd.DataFrame:
        """The split's rows, in file order."""
        return self.frame.iloc[self.positions]

    def names(self) -> list[str]:
        """One name per row of the split: ``<source>:<row number in the file>``."""
        return [f"{self.source}:{row}" for row in self.positions]


def table_suffix(path: Path) -> str | None:
    """The table ending of ``path`` (``.parquet``, ``.csv`` or ``.csv.gz``), if it has one."""
    name = path.name.lower()
    return next((s for s in TABLE_SUFFIXES if name.endswith(s)), None)


def is_table_file(path: Path) -> bool:
    """A Parquet file, or a CSV that is not a text corpus (see :func:`csv_holds_text`)."""
    suffix = table_suffix(path)
    if suffix is None or not path.is_file():
        return False
    return suffix == ".parquet" or not csv_holds_text(path)


def split_file(folder: Path, split: str) -> Path | None:
    """The file of ``split`` in a folder of split files (``train.csv``, ``test.parquet``...)."""
    return next(
        (folder / f"{split}{s}" for s in TABLE_SUFFIXES if (folder / f"{split}{s}").is_file()),
        None,
    )


def is_table(spec: str) -> bool:
    """Whether ``spec`` names a table: ``sklearn:...``, a table file, or a folder of split files.

    A folder counts when its ``train`` file is a table (text corpora come the same way).
    """
    if spec.startswith(SKLEARN_PREFIX):
        return True
    path = Path(spec).expanduser()
    if path.is_dir():
        train = split_file(path, "train")
        return train is not None and is_table_file(train)
    return is_table_file(path)


def read_table(spec: str, *, split: str, test_fraction: float, seed: int) -> Table:
    """The rows of ``spec`` and the positions of its ``split``.

    Raises:
        UserError: an unknown scikit-learn table, a missing, empty or unreadable file, a folder
            without the split's file, or a split without rows.
    """
    check_split(split)
    if spec.startswith(SKLEARN_PREFIX):
        frame, source = load_sklearn_table(spec[len(SKLEARN_PREFIX) :]), spec
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = split_file(path, split)
            if found is None:
                endings = ", ".join(f"{split}{s}" for s in TABLE_SUFFIXES)
                raise UserError(f"{spec} is a folder without a {split} table ({endings})")
            frame = read_table_file(found)
            return Table(frame, list(range(len(frame))), found.name)
        frame, source = read_table_file(path), path.name
    positions = split_positions(len(frame), split, test_fraction=test_fraction, seed=seed)
    if len(positions) == 0:
        raise UserError(f"{spec} has {len(frame)} rows, too few to hold out a test split")
    return Table(frame, sorted(positions.tolist()), source)


def read_table_file(path: Path) -> pd.DataFrame:
    """A CSV (``.csv``, ``.csv.gz``) or Parquet file as a frame with string column names.

    CSV rows with more fields than the header are skipped with one warning each; rows with fewer
    get missing values in their last columns (they are imputed later).

    Raises:
        UserError: a missing, unreadable, empty or column-less file, or another ending.
    """
    suffix = table_suffix(path)
    if suffix is None:
        raise UserError(f"{path} is not a table; use {', '.join(TABLE_SUFFIXES)} or sklearn:NAME")
    if not path.is_file():
        raise UserError(f"table {path} does not exist")
    frame = _read_parquet(path) if suffix == ".parquet" else _read_csv(path)
    if frame.shape[1] == 0:
        raise UserError(f"table {path} has no columns")
    if len(frame) == 0:
        raise UserError(f"table {path} has no rows")
    frame.columns = [str(c) for c in frame.columns]
    return _unusable_numbers_missing(frame.reset_index(drop=True), path)


def _unusable_numbers_missing(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Infinite numbers and numbers beyond :data:`MAX_ABS_NUMBER` become missing values.

    Numeric columns, and text columns whose cells parse as such numbers (``"inf"``,
    ``"1e400"``); one warning per column.
    """
    import numpy as np
    import pandas as pd
    from pandas.api import types

    for name in frame.columns:
        values = frame[name]
        if types.is_bool_dtype(values.dtype) or isinstance(values.dtype, pd.CategoricalDtype):
            continue
        if not (
            types.is_numeric_dtype(values.dtype)
            or types.is_object_dtype(values.dtype)
            or types.is_string_dtype(values.dtype)
        ):
            continue
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            unusable = np.isinf(numbers) | (np.abs(numbers) > MAX_ABS_NUMBER)
        count = int(unusable.sum())
        if count:
            log.warning(
                "%s: column %r: %d cell(s) are infinite or beyond float32's range (%.3g); "
                "they are treated as missing",
                path,
                name,
                count,
                MAX_ABS_NUMBER,
            )
            column = values.astype(object) if not types.is_float_dtype(values.dtype) else values
            frame[name] = column.mask(unusable)
    return frame


def load_sklearn_table(name: str) -> pd.DataFrame:
    """One of scikit-learn's bundled tables, its ``target`` column holding the class names.

    Raises:
        UserError: a name outside :data:`SKLEARN_TABLES`.
    """
    require("pandas", "tables", "to read tables")
    from sklearn import datasets

    loaders: dict[str, Callable[..., object]] = {
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
    }
    if name not in loaders:
        raise UserError(
            f"unknown table sklearn:{name}; choose sklearn:{', sklearn:'.join(SKLEARN_TABLES)}"
        )
    bunch = loaders[name](as_frame=True)
    frame: pd.DataFrame = bunch.frame.copy()  # type: ignore[attr-defined]
    names = [str(n) for n in bunch.target_names]  # type: ignore[attr-defined]
    frame["target"] = [names[t] for t in frame["target"]]
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    """The fast C parser first; the Python one (which can skip bad rows) when a row is bad."""
    require("pandas", "tables", "to read tables")
    import pandas as pd

    def skip(fields: list[str]) -> None:
        shown = ",".join(fields)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        log.warning("%s: skipping a row with %d fields: %s", path, len(fields), shown)

    try:
        try:
            return pd.read_csv(path)
        except pd.errors.ParserError:
            return pd.read_csv(path, engine="python", on_bad_lines=skip)
    except pd.errors.EmptyDataError:
        raise UserError(f"table {path} is empty") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise UserError(f"cannot read table {path}: {first_line(err)}") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    require("pandas", "tables", "to read tables")
    require("pyarrow", "tables", "to read Parquet tables")
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, ImportError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"cannot read table {path}: {first_line(err)}") from None
