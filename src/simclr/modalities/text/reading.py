"""Reading text corpora: CSV, JSON Lines and plain text files, whole or as train/test folders.

A CSV or JSONL record becomes one text (its text fields joined with ``". "``) and, where the
data has one, a raw label; a plain-text file holds one unlabelled item per non-empty line. A
record that cannot be read (a JSONL line that is not a JSON object, a CSV row with too many
fields, no text, a missing label) is skipped with one warning; a file that cannot be read at all
is a :class:`~simclr.errors.UserError`.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simclr.config import TextConfig
from simclr.data.items import check_split
from simclr.errors import UserError, first_line, require

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("simclr")

TEXT_SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".txt")
"""File endings the reader accepts (lower case)."""
JOIN = ". "
"""Separator of the text fields of one record (a title and its body read as two sentences)."""


@dataclass
class Corpus:
    """The readable records of one file, in file order.

    Attributes:
        texts: One non-empty string per item.
        labels: Raw label values (strings or integers), or ``None`` for unlabelled data.
        names: ``"<file name>:<n>"``, n the 1-based line (JSONL, text) or the n-th data row
            read (CSV).
    """

    texts: list[str]
    labels: list[Any] | None
    names: list[str]

    def take(self, positions: Sequence[int]) -> Corpus:
        """The records at ``positions``, in that order."""
        return Corpus(
            [self.texts[i] for i in positions],
            None if self.labels is None else [self.labels[i] for i in positions],
            [self.names[i] for i in positions],
        )


def text_suffix(path: Path) -> str | None:
    """The accepted ending of ``path`` (``.csv.gz``, ``.txt``...), or ``None``."""
    name = path.name.lower()
    return next((suffix for suffix in TEXT_SUFFIXES if name.endswith(suffix)), None)


def split_file(spec: str, split: str) -> tuple[Path, bool]:
    """The file holding ``split`` of the corpus at ``spec``.

    A file is the whole collection (the caller splits it); a folder holds one ``train.*`` and
    one ``test.*`` file.

    Returns:
        ``(file, whole)``: ``whole`` is true when the file holds both splits.

    Raises:
        UserError: no such path, an unsupported file type, or a folder without exactly one
            file for ``split``.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        if text_suffix(path) is None:
            raise UserError(f"{spec}: not a text corpus; expected {', '.join(TEXT_SUFFIXES)}")
        return path, True
    if not path.is_dir():
        raise UserError(f"{spec}: no such file or folder")
    check_split(split)
    found = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (suffix := text_suffix(p)) and p.name.lower() == split + suffix
    )
    if len(found) != 1:
        names = ", ".join(p.name for p in found) if found else "none"
        raise UserError(
            f"{spec}: a text folder needs exactly one {split}{{{','.join(TEXT_SUFFIXES)}}} "
            f"file (found {names})"
        )
    return found[0], False


def read_corpus(path: Path, cfg: TextConfig) -> Corpus:
    """Every readable record of a CSV, JSONL or plain-text file.

    Raises:
        UserError: an unreadable, malformed or empty file, named columns that it lacks, or no
            text column.
    """
    suffix = text_suffix(path)
    try:
        if suffix == ".txt":
            return _read_lines(path)
        if suffix in (".jsonl", ".jsonl.gz"):
            frame, names = _read_jsonl(path)
        else:
            frame, names = _read_csv(path)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {first_line(err)}") from None
    return _frame_corpus(frame, names, cfg, path)


def _read_lines(path: Path) -> Corpus:
    texts, names = [], []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                texts.append(line.strip())
                names.append(f"{path.name}:{number}")
    if not texts:
        raise UserError(f"{path}: no text (every line is empty)")
    return Corpus(texts, None, names)


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[str]]:
    require("pandas", "text", "to read text corpora")
    import pandas as pd

    records: list[dict[str, Any]] = []
    names: list[str] = []
    with _open_text(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                log.warning("skipping %s line %d: not JSON (%s)", path.name, number, err.msg)
                continue
            if not isinstance(record, dict):
                log.warning("skipping %s line %d: not a JSON object", path.name, number)
                continue
            records.append(record)
            names.append(f"{path.name}:{number}")
    if not records:
        raise UserError(f"{path}: no JSON records")
    return pd.DataFrame.from_records(records), names


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    require("pandas", "text", "to read text corpora")
    import pandas as pd

    try:
        # pandas reports each row with too many fields as a ParserWarning ("Skipping line 7:
        # expected 3 fields, saw 4"); they are passed on as our warnings. index_col=False keeps
        # pandas from taking a first column without header as the index.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = pd.read_csv(path, index_col=False, on_bad_lines="warn")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file") from None
    except pd.errors.ParserError as err:
        raise UserError(f"{path}: malformed CSV ({_parser_message(err)})") from None
    for warning in caught:
        if issubclass(warning.category, pd.errors.ParserWarning):
            for line in str(warning.message).splitlines():
                log.warning("%s: %s", path.name, line.strip())
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if frame.empty:
        raise UserError(f"{path}: no rows below the header")
    return frame, [f"{path.name}:{row}" for row in range(1, len(frame) + 1)]


def _parser_message(err: Exception) -> str:
    """The parser's message without its "Error tokenizing data. C error:" preamble."""
    return first_line(err).rpartition("C error: ")[2]


def _open_text(path: Path) -> Any:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _frame_corpus(frame: pd.DataFrame, names: list[str], cfg: TextConfig, path: Path) -> Corpus:
    """Join the text columns of every record and read its label; skip what lacks either."""
    label = _label_column(frame, cfg, path)
    columns = _text_columns(frame, cfg, label, path)
    parts = [frame[c].tolist() for c in columns]
    raw_labels = frame[label].tolist() if label is not None else None
    texts, labels, kept = [], [], []
    for row, fields in enumerate(zip(*parts, strict=True)):
        text = JOIN.join(s for f in fields if not _missing(f) and (s := str(f).strip()))
        if not text:
            log.warning("skipping %s: no text in %s", names[row], ", ".join(columns))
            continue
        if raw_labels is not None:
            value = raw_labels[row]
            if _missing(value):
                log.warning("skipping %s: no value in label column %r", names[row], label)
                continue
            labels.append(_plain_label(value))
        texts.append(text)
        kept.append(names[row])
    if not texts:
        raise UserError(f"{path}: no record has both text and a label")
    return Corpus(texts, labels if raw_labels is not None else None, kept)


def _label_column(frame: pd.DataFrame, cfg: TextConfig, path: Path) -> str | None:
    if cfg.label_column is None:
        return "label" if "label" in frame.columns else None
    if cfg.label_column not in frame.columns:
        raise UserError(
            f"{path}: no label column {cfg.label_column!r} (columns: {_listing(frame.columns)})"
        )
    return cfg.label_column


def _text_columns(frame: pd.DataFrame, cfg: TextConfig, label: str | None, path: Path) -> list[str]:
    import pandas as pd

    if cfg.text_columns:
        missing = [c for c in cfg.text_columns if c not in frame.columns]
        if missing:
            raise UserError(
                f"{path}: no column {missing[0]!r} (columns: {_listing(frame.columns)})"
            )
        return list(cfg.text_columns)
    columns = [
        str(c) for c in frame.columns if c != label and pd.api.types.is_string_dtype(frame[c])
    ]
    if not columns:
        raise UserError(f"{path}: no column of strings; set text.text_columns")
    return columns


def _listing(columns: Sequence[Any]) -> str:
    return ", ".join(str(c) for c in columns)


def _missing(value: Any) -> bool:
    """``None`` or NaN (pandas' empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain_label(value: Any) -> Any:
    """A Python label value; integral floats (a column with gaps reads as float) become ints."""
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
