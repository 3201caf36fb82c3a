"""Text: CSV, JSON Lines or plain-text corpora, a byte-level BPE and a small Transformer.

* reading (:mod:`.reading`): one text per record (its text fields joined), labels from a label
  column; one file is split into train and test by ``data.split_seed``, a folder holds
  ``train.*`` and ``test.*``;
* fitted preprocessing: the BPE tokenizer trained on the training texts (:mod:`.tokenizer`) and
  the class names, so evaluation data is encoded and labelled the same way;
* items: token ids ``[N, text.max_length]``, zero-padded, with their lengths
  (:class:`~.items.TextItems`);
* views (:mod:`.views`): token dropout, span deletion and local shuffling, plus the encoder's
  own dropout (SimCSE);
* encoder (:mod:`.encoder`): ``transformer``, a pre-norm Transformer mean-pooled over tokens.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from simclr.data.items import Items, label_names, split_positions
from simclr.errors import UserError
from simclr.modalities.base import Batch, Fitted, TensorModality, csv_holds_text
from simclr.modalities.text.encoder import TextTransformer
from simclr.modalities.text.items import TextItems
from simclr.modalities.text.reading import Corpus, read_corpus, split_file, text_suffix
from simclr.modalities.text.tokenizer import encode, load_tokenizer, train_tokenizer
from simclr.modalities.text.views import TokenViews
from simclr.models.simclr import SimCLR

__all__ = ["TextItems", "TextModality", "TextTransformer", "TokenViews"]

log = logging.getLogger("simclr")

NUMERIC_PROBE_LINES = 20
"""Lines of a ``.txt`` file read to tell a text corpus from a file of numbers (UCR series)."""


class TextModality(TensorModality):
    """Text corpora (section ``text`` of the configuration); batches are ``(ids, lengths)``."""

    name = "text"
    fits_preprocessing = True
    backbones = ("transformer",)

    @classmethod
    def detect(cls, spec: str) -> bool:
        """A ``.jsonl``, a ``.txt`` of words, a CSV with a text column, or a folder of them.

        A folder is text when its ``train.*`` file is.
        """
        path = Path(spec).expanduser()
        if path.is_dir():
            return any(
                _holds_text(p)
                for p in path.iterdir()
                if p.is_file() and p.name.lower().startswith("train.")
            )
        return path.is_file() and _holds_text(path)

    def open(self, spec: str, *, split: str) -> tuple[Items, Fitted]:
        """Read, split, tokenise and label the texts of ``split``.

        Unfitted, the tokenizer is trained on these texts and the class names are those of the
        whole file (or of the training file of a folder), so that both splits number the
        classes the same way.
        """
        cfg, fitted = self.cfg.text, self.fitted
        path, whole = split_file(spec, split)
        corpus = read_corpus(path, cfg)
        classes = fitted.get("classes", []) if fitted is not None else _class_names(corpus)
        if whole:
            data = self.cfg.data
            positions = split_positions(
                len(corpus.texts), split, test_fraction=data.test_fraction, seed=data.split_seed
            )
            if len(positions) == 0:
                raise UserError(f"{spec}: {len(corpus.texts)} texts are too few to split")
            corpus = corpus.take(positions.tolist())
        if fitted is None:
            fitted = {
                "tokenizer": train_tokenizer(
                    corpus.texts, vocab_size=cfg.vocab_size, lowercase=cfg.lowercase
                ),
                "classes": classes,
            }
            log.info(
                "text: byte-level BPE of %d tokens trained on %d texts",
                _vocab_size(fitted),
                len(corpus.texts),
            )
        tokenizer = _tokenizer_json(fitted)
        ids, lengths = encode(load_tokenizer(tokenizer), corpus.texts, cfg.max_length)
        labels, classes = _class_indices(corpus, classes, path)
        items = TextItems(
            ids, lengths, labels, classes, corpus.names, texts=corpus.texts, tokenizer=tokenizer
        )
        return items, fitted

    def build_model(self) -> SimCLR:
        """A :class:`TextTransformer` sized by ``text`` over the fitted vocabulary."""
        self.check_backbone()
        cfg = self.cfg.text
        encoder = TextTransformer(
            _vocab_size(self.require_fitted()),
            cfg.max_length,
            dim=cfg.dim,
            layers=cfg.layers,
            heads=cfg.heads,
            dropout=cfg.dropout,
        )
        return self.with_head(encoder, cfg.dim)

    def views(self, seed: int) -> TokenViews:
        """:class:`TokenViews` with the ``text`` recipe."""
        return TokenViews(self.cfg.text, seed)

    def model_input(self, batch: Batch, device: torch.device | str) -> Tensor:
        """The token ids, unchanged, on ``device``."""
        return batch[0].to(device, non_blocking=True)

    def preprocessing(self) -> str:
        """Tokenisation only."""
        return (
            f"the first {self.cfg.text.max_length} tokens of the byte-level BPE fitted on the "
            "training texts; no augmentation"
        )

    def draw_views(self, dataset: Items, out: Path, *, num_items: int, seed: int) -> Path:
        """A text file: each text with its two views decoded (see :mod:`.listing`)."""
        from simclr.modalities.text.listing import write_view_listing

        if not isinstance(dataset, TextItems):
            raise TypeError(f"expected TextItems, got {type(dataset).__name__}")
        return write_view_listing(dataset, self.cfg.text, out, num_items=num_items, seed=seed)


def _holds_text(path: Path) -> bool:
    suffix = text_suffix(path)
    if suffix in (".csv", ".csv.gz"):
        return csv_holds_text(path)
    if suffix == ".txt":
        return not _numeric_lines(path)
    return suffix is not None


def _numeric_lines(path: Path) -> bool:
    """Whether the first non-empty lines are all numbers (a series file, not text)."""
    try:
        with path.open(encoding="utf-8") as lines:
            probe = list(islice(lines, NUMERIC_PROBE_LINES))
    except (OSError, UnicodeDecodeError):
        return False
    values = [value for line in probe for value in line.replace(",", " ").split()]
    return bool(values) and all(_is_number(value) for value in values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _class_names(corpus: Corpus) -> list[str]:
    return [] if corpus.labels is None else label_names(corpus.labels)[1]


def _class_indices(corpus: Corpus, classes: list[str], path: Path) -> tuple[Tensor, list[str]]:
    """Labels as indices into ``classes`` (the training classes); -1 for unlabelled data.

    With no training classes (the training data was unlabelled) the data's own are used.
    """
    if corpus.labels is None:
        return torch.full((len(corpus.texts),), -1, dtype=torch.long), []
    if not classes:
        return label_names(corpus.labels)
    index = {name: i for i, name in enumerate(classes)}
    values = [str(v) for v in corpus.labels]
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise UserError(
            f"{path}: label {unknown[0]!r} is not a training class ({', '.join(classes)})"
        )
    return torch.tensor([index[v] for v in values], dtype=torch.long), list(classes)


def _tokenizer_json(fitted: Fitted) -> str:
    tokenizer: Any = fitted.get("tokenizer")
    if not isinstance(tokenizer, str):
        raise UserError("the fitted preprocessing has no text tokenizer (not a text run?)")
    return tokenizer


def _vocab_size(fitted: Fitted) -> int:
    size: int = load_tokenizer(_tokenizer_json(fitted)).get_vocab_size()
    return size
