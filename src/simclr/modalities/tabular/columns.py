"""What a table's columns mean, fitted on the training rows, and rows encoded with it.

Column kinds (decided on the training rows only):

* **numeric**: numbers and booleans, and string columns of which at least
  :data:`NUMERIC_SHARE` of the present cells parse as numbers (``"?"`` and the like then count
  as missing). Encoded as ``(x - mean) / std`` with the training mean and standard deviation;
  missing or unparseable cells take the training median first.
* **categorical**: pandas categoricals, and other string columns with at most
  ``max_categories`` distinct values. Encoded as codes: ``1 + position`` in the sorted training
  vocabulary, ``0`` for a missing value or a category the training rows did not have.

Other columns (dates, identifiers, free text, columns without a single value) are left out
with a warning. The label column is never a feature; its classes are the sorted distinct values
(:func:`~simclr.data.items.label_names`), rows without a label get ``-1``.

Everything fitted is a list of plain dicts (JSON-able, saved in checkpoints).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from simclr.data.items import label_names
from simclr.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger("simclr")

LABEL_COLUMNS = ("target", "label", "class")
"""Columns taken as the label, in this order, when ``tabular.label_column`` is not set."""
NUMERIC_SHARE = 0.9
"""A string column is numeric when at least this share of its present cells are numbers."""
UNKNOWN_CODE = 0
"""Code of a missing category or one unseen in training; known categories are 1, 2, ..."""

Column = dict[str, Any]
"""``{"name", "kind": "numeric", "mean", "std", "fill"}`` or ``{"name", "kind":
"categorical", "categories": [...]}``."""


def label_column_of(frame: pd.DataFrame, wanted: str | None) -> str | None:
    """The label column: ``wanted``, else the first of :data:`LABEL_COLUMNS` present, else none.

    Raises:
        UserError: ``wanted`` is not a column of ``frame``.
    """
    if wanted is not None:
        if wanted not in frame.columns:
            raise UserError(
                f"tabular.label_column {wanted!r} is not a column of the table "
                f"(it has {_some(frame.columns)})"
            )
        return wanted
    return next((c for c in LABEL_COLUMNS if c in frame.columns), None)


def fit_columns(
    frame: pd.DataFrame, *, label_column: str | None, max_categories: int
) -> list[Column]:
    """The kind and statistics of every feature column of the training rows ``frame``.

    Raises:
        UserError: no column is usable as a feature.
    """
    columns = []
    for name in frame.columns:
        if name != label_column:
            column = _fit_column(str(name), frame[name], max_categories)
            if column is not None:
                columns.append(column)
    if not columns:
        raise UserError(
            f"the table has no numeric or categorical feature column (columns: "
            f"{_some(frame.columns)}; label: {label_column})"
        )
    return columns


def encode_rows(frame: pd.DataFrame, columns: Sequence[Column]) -> Tensor:
    """Rows encoded with the fitted ``columns``: standardised numbers and category codes.

    Unparseable and infinite numeric cells are imputed like missing ones, with one warning per
    column.

    Raises:
        UserError: a fitted column is missing from ``frame``.

    Shape:
        float32 ``[N, D]``, ``D = len(columns)``, in the order of ``columns``.
    """
    import numpy as np

    missing = [c["name"] for c in columns if c["name"] not in frame.columns]
    if missing:
        raise UserError(f"the table lacks the training column(s) {_some(missing)}")
    encoded = np.empty((len(frame), len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        values = frame[column["name"]]
        if column["kind"] == "numeric":
            numbers = _numbers(values)
            bad = int((values.notna().to_numpy() & np.isnan(numbers)).sum())
            if bad:
                log.warning(
                    "column %r: %d cell(s) are not finite numbers; they take the training median",
                    column["name"],
                    bad,
                )
            numbers = np.where(np.isnan(numbers), column["fill"], numbers)
            encoded[:, j] = (numbers - column["mean"]) / column["std"]
        else:
            code = {c: i + 1 for i, c in enumerate(column["categories"])}
            encoded[:, j] = [
                UNKNOWN_CODE if _missing(v) else code.get(str(v), UNKNOWN_CODE) for v in values
            ]
    return torch.from_numpy(encoded)


def fit_classes(frame: pd.DataFrame, label_column: str | None) -> list[str]:
    """The sorted class names of the label column (empty when there is none or it is empty)."""
    if label_column is None:
        return []
    return label_names(_label_values(frame[label_column]))[1]


def encode_labels(
    frame: pd.DataFrame, label_column: str | None, classes: Sequence[str]
) -> tuple[Tensor, list[str]]:
    """Class indices of the rows (``-1``: no label, with one warning) and the classes they index.

    Raises:
        UserError: a label that is not one of ``classes``.

    Shape:
        int64 ``[N]``.
    """
    if label_column is None or label_column not in frame.columns or not classes:
        return torch.full((len(frame),), -1, dtype=torch.long), []
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for value in frame[label_column]:
        if _missing(value):
            labels.append(-1)
            continue
        name = str(_label_value(value))
        if name not in index:
            raise UserError(
                f"class {name!r} of column {label_column!r} is not one of the training classes "
                f"({_some(classes)})"
            )
        labels.append(index[name])
    unlabelled = labels.count(-1)
    if unlabelled:
        log.warning(
            "column %r: %d row(s) have no label; kNN and probes need every row labelled",
            label_column,
            unlabelled,
        )
    return torch.tensor(labels, dtype=torch.long), list(classes)


def cardinalities(columns: Sequence[Column]) -> list[int]:
    """Per column: 0 for a numeric one, the number of known categories for a categorical one."""
    return [len(c["categories"]) if c["kind"] == "categorical" else 0 for c in columns]


def _fit_column(name: str, values: pd.Series, max_categories: int) -> Column | None:
    """One column's kind and statistics, or ``None`` (with a warning) when it is left out."""
    import numpy as np
    import pandas as pd
    from pandas.api import types

    present = values.dropna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        kind = "categorical"
    elif types.is_bool_dtype(values.dtype) or types.is_numeric_dtype(values.dtype):
        kind = "numeric"
    elif types.is_object_dtype(values.dtype) or types.is_string_dtype(values.dtype):
        parsed = pd.to_numeric(present, errors="coerce")
        if len(present) and parsed.notna().mean() >= NUMERIC_SHARE:
            kind = "numeric"
        elif present.astype(str).nunique() <= max_categories:
            kind = "categorical"
        else:
            log.warning(
                "column %r left out: %d distinct strings, more than tabular.max_categories = %d",
                name,
                present.astype(str).nunique(),
                max_categories,
            )
            return None
    else:
        log.warning("column %r left out: %s is neither numbers nor categories", name, values.dtype)
        return None

    if kind == "categorical":
        if len(present) == 0:
            log.warning("column %r left out: it has no value in the training rows", name)
            return None
        return {"name": name, "kind": kind, "categories": sorted(present.astype(str).unique())}
    numbers = _numbers(values)
    numbers = numbers[~np.isnan(numbers)]
    if len(numbers) == 0:
        log.warning("column %r left out: it has no number in the training rows", name)
        return None
    std = float(numbers.std())
    return {
        "name": name,
        "kind": kind,
        "mean": float(numbers.mean()),
        "std": std if std > 0 and math.isfinite(std) else 1.0,  # a constant column stays 0
        "fill": float(np.median(numbers)),
    }


def _numbers(values: pd.Series) -> np.ndarray:
    """float64 values; missing, unparseable and infinite cells are NaN."""
    import numpy as np
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    array: np.ndarray = numbers.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    array[np.isinf(array)] = np.nan
    return array


def _missing(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def _label_values(values: pd.Series) -> list[Any]:
    """Present labels as Python values, whole floats as ints (a column with gaps is float)."""
    return [_label_value(v) for v in values if not _missing(v)]


def _label_value(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if hasattr(value, "item"):  # numpy scalars
        return _label_value(value.item())
    return value


def _some(names: Sequence[Any] | Any, limit: int = 6) -> str:
    """A short listing of names for messages."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
