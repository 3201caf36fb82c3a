"""Tables: CSV, Parquet and scikit-learn's tables, SCARF views and an MLP encoder.

* Reading (:mod:`.reading`): ``.csv``, ``.csv.gz``, ``.parquet``, ``sklearn:<name>``, or a
  folder of ``train.*`` / ``test.*`` files; one file is split into train and test rows.
* Fitted preprocessing (:mod:`.columns`, training rows only): each feature column's kind and
  statistics (numeric mean, standard deviation and median; category vocabularies) and the class
  list. Items are :class:`TableItems`, :class:`~simclr.data.items.TensorItems` of float32 rows
  ``[N, D]`` (standardised numbers and category codes, 0 = unknown) with ``lengths = D``.
* Views (:mod:`.views`): SCARF, features replaced by values of random rows of the batch.
* Encoder (:mod:`.encoder`): ``mlp``, category embeddings and Linear -> BN -> ReLU blocks.
* Evaluation input: the encoded row unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from simclr.data.items import Items, TensorItems
from simclr.errors import UserError
from simclr.modalities.base import Batch, Fitted, TensorModality
from simclr.modalities.tabular.columns import (
    Column,
    cardinalities,
    encode_labels,
    encode_rows,
    fit_classes,
    fit_columns,
    label_column_of,
)
from simclr.modalities.tabular.encoder import TabularMLP
from simclr.modalities.tabular.reading import Table, is_table, read_table
from simclr.modalities.tabular.views import ScarfViews, sample_scarf
from simclr.models.simclr import SimCLR


class TableItems(TensorItems):
    """Encoded rows with the fitted columns they were encoded with (names and kinds).

    Shape:
        ``inputs`` float32 ``[N, D]``, ``D = len(columns)``; ``lengths`` all ``D``.
    """

    def __init__(
        self,
        inputs: Tensor,
        labels: Tensor,
        classes: Sequence[str],
        names: Sequence[str],
        columns: Sequence[Column],
    ) -> None:
        lengths = torch.full((len(inputs),), inputs.shape[1], dtype=torch.long)
        super().__init__(inputs, lengths, labels, classes, names)
        self.columns = list(columns)

    def subset(self, index: Tensor) -> TableItems:
        """The rows at ``index`` (int64 positions), in that order, with the same columns."""
        return TableItems(
            self.inputs[index],
            self.labels[index],
            self.classes,
            [self.names[i] for i in index.tolist()],
            self.columns,
        )


class TabularModality(TensorModality):
    """Table rows: ``tabular`` is the column handling, SCARF and the MLP's size.

    The fitted preprocessing is ``{"label_column", "classes", "columns"}`` (see
    :mod:`simclr.modalities.tabular.columns` for the column dicts).
    """

    name = "tabular"
    fits_preprocessing = True
    backbones = ("mlp",)

    @classmethod
    def detect(cls, spec: str) -> bool:
        """``sklearn:<name>``, a Parquet file, a CSV that is not text, or a folder of them."""
        return is_table(spec)

    def open(self, spec: str, *, split: str) -> tuple[Items, Fitted]:
        """The rows of ``split`` encoded with :attr:`fitted` (fitted on them when unfitted).

        For a single table the class list is fitted on all its rows (the label is not a
        feature), so both splits number the classes alike.

        Raises:
            UserError: unreadable or empty data, no feature column, a training column missing
                from evaluation data, or a class the training data did not have.
        """
        data = self.cfg.data
        table = read_table(
            spec, split=split, test_fraction=data.test_fraction, seed=data.split_seed
        )
        fitted = self._fit(table) if self.fitted is None else _checked(self.fitted)
        rows = table.rows()
        inputs = encode_rows(rows, fitted["columns"])
        label_column, classes = fitted["label_column"], fitted["classes"]
        if label_column is None:  # pretrained on unlabelled rows: the data brings its classes
            label_column = label_column_of(table.frame, self.cfg.tabular.label_column)
            classes = fit_classes(table.frame, label_column)
        labels, classes = encode_labels(rows, label_column, classes)
        items = TableItems(inputs, labels, classes, table.names(), fitted["columns"])
        return items, fitted

    def _fit(self, table: Table) -> Fitted:
        settings = self.cfg.tabular
        label_column = label_column_of(table.frame, settings.label_column)
        columns = fit_columns(
            table.rows(), label_column=label_column, max_categories=settings.max_categories
        )
        return {
            "label_column": label_column,
            "classes": fit_classes(table.frame, label_column),
            "columns": columns,
        }

    def build_model(self) -> SimCLR:
        """The ``mlp`` encoder for the fitted columns, with the configured head."""
        self.check_backbone()
        settings = self.cfg.tabular
        encoder = TabularMLP(
            cardinalities(_checked(self.require_fitted())["columns"]),
            hidden_dim=settings.hidden_dim,
            layers=settings.layers,
            batch_norm=settings.batch_norm,
            dropout=settings.dropout,
            embedding_dim=settings.embedding_dim,
        )
        return self.with_head(encoder, encoder.feature_dim)

    def views(self, seed: int) -> ScarfViews:
        """:class:`ScarfViews` with ``tabular.corruption``."""
        return ScarfViews(self.cfg.tabular.corruption, seed=seed)

    def model_input(self, batch: Batch, device: torch.device | str) -> Tensor:
        """The encoded rows, unchanged, on ``device``."""
        return batch[0].to(device, non_blocking=True)

    def preprocessing(self) -> str:
        """What :meth:`model_input` feeds the encoder."""
        return (
            "the encoded row: numbers standardised with the training mean and standard "
            "deviation (missing ones set to the training median), categories as codes of the "
            "training vocabulary (0 = unknown); no corruption"
        )

    def draw_views(self, dataset: Items, out: Path, *, num_items: int, seed: int) -> Path:
        """Heatmaps of a few rows and their two SCARF views, the replaced cells marked.

        The rows are drawn at random, stratified by class; the replacement values come from a
        random pool of rows as large as a training batch, as they do in training.
        """
        from simclr.modalities.tabular.pictures import draw_scarf_views
        from simclr.viz import subsample

        if not isinstance(dataset, TensorItems):
            raise TypeError(f"expected TensorItems, got {type(dataset).__name__}")
        picked = subsample(dataset.labels, num_items, seed=seed, option="num_items")
        generator = torch.Generator().manual_seed(seed)
        pool = dataset.inputs[torch.randperm(len(dataset), generator=generator)]
        pool = pool[: self.cfg.train.batch_size]
        rows = dataset.inputs[picked]
        corruption = self.cfg.tabular.corruption
        first, second = (
            sample_scarf(len(rows), rows.shape[1], len(pool), corruption, generator, rows.device)
            for _ in range(2)
        )
        labels = []
        for i in picked.tolist():
            label = int(dataset.labels[i])
            labels.append(dataset.names[i] + (f" ({dataset.classes[label]})" if label >= 0 else ""))
        return draw_scarf_views(
            rows,
            pool,
            (first, second),
            columns=dataset.columns if isinstance(dataset, TableItems) else [],
            row_labels=labels,
            corruption=corruption,
            out=out,
        )


def _checked(fitted: Fitted) -> Fitted:
    """``fitted`` when it is a table's preprocessing (a checkpoint of another modality is not)."""
    if not isinstance(fitted.get("columns"), list) or "classes" not in fitted:
        raise UserError("the fitted preprocessing is not a table's (was the run tabular?)")
    return fitted
