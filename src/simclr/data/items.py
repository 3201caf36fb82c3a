"""What every dataset is, whatever it holds: items with labels, class names and item names.

Images (:mod:`simclr.data.datasets`) and the other modalities (:mod:`simclr.modalities`) share
this base, so the evaluation code (kNN, probes, clustering, embeddings) reads any of them.
:class:`TensorItems` is the in-memory form of the non-image modalities: one padded tensor of
samples with their valid lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from simclr.errors import UserError


class Items(Dataset[Any]):
    """Common metadata: integer labels (``-1`` = unlabelled), class names and item names."""

    def __init__(self, labels: Tensor, classes: Sequence[str], names: Sequence[str]) -> None:
        self.labels = labels
        self.classes = list(classes)
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_labels(self) -> bool:
        """True when every item has a class label."""
        return len(self.classes) > 0 and bool((self.labels >= 0).all())

    def subset(self, index: Tensor) -> Items:
        """The items at ``index`` (int64 positions), in that order (each kind implements it)."""
        raise NotImplementedError(f"{type(self).__name__} has no subset")

    def _subset_names(self, index: Tensor) -> list[str]:
        return [self.names[i] for i in index.tolist()]


class TensorItems(Items):
    """Samples held in memory as one padded tensor, with the valid length of each.

    Audio keeps waveforms ``[N, T]``, time series ``[N, C, T]``, text token ids ``[N, L]`` and
    tables ``[N, D]``; ``lengths[i]`` is the number of valid steps of item i along the last axis
    (the full width for tables and fixed-length data).

    Shape:
        ``inputs``: ``[N, ..., T]``; ``lengths``, ``labels``: ``[N]`` int64.
    """

    def __init__(
        self,
        inputs: Tensor,
        lengths: Tensor,
        labels: Tensor,
        classes: Sequence[str],
        names: Sequence[str],
    ) -> None:
        super().__init__(labels, classes, names)
        if not (len(inputs) == len(lengths) == len(labels) == len(self.names)):
            raise ValueError("inputs, lengths, labels and names must have one entry per item")
        self.inputs = inputs
        self.lengths = lengths

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        return self.inputs[index], self.lengths[index], int(self.labels[index])

    def subset(self, index: Tensor) -> TensorItems:
        """The items at ``index`` (int64 positions), in that order."""
        return TensorItems(
            self.inputs[index],
            self.lengths[index],
            self.labels[index],
            self.classes,
            self._subset_names(index),
        )


def require_labels(train_set: Items, test_set: Items, purpose: str) -> None:
    """Fail with one line unless both sets are labelled with the same classes, in the same order.

    Image folders number their classes by sorted subfolder name, so a test folder missing a class
    would silently shift every label after it.

    Raises:
        UserError: a set without labels, or different class lists.
    """
    for role, data in (("training", train_set), ("test", test_set)):
        if not data.has_labels:
            raise UserError(f"the {role} data has no labels; {purpose} needs class subfolders")
    if train_set.classes != test_set.classes:
        raise UserError(
            f"the training and test data have different classes ({len(train_set.classes)} vs "
            f"{len(test_set.classes)}, or in another order); {purpose} needs the same classes"
        )


SPLITS = ("train", "test")
"""The two splits every reader knows."""


def check_split(split: str) -> None:
    """A one-line error unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose train or test")


def split_positions(num_items: int, split: str, *, test_fraction: float, seed: int) -> Tensor:
    """Positions of ``split`` (``train`` or ``test``) in a fixed random split of one collection.

    Used for data that comes as one file (a CSV of texts, a table, an array of series): the same
    ``seed`` and ``test_fraction`` always give the same two disjoint parts.

    Shape:
        int64 ``[n]``.
    """
    check_split(split)
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    cut = num_items - max(1, round(test_fraction * num_items))
    return order[:cut] if split == "train" else order[cut:]


def label_names(values: Sequence[Any]) -> tuple[Tensor, list[str]]:
    """Class indices and sorted class names of raw label values (strings or numbers).

    Numbers sort numerically (so classes ``2`` and ``10`` keep their order), strings by text.
    """
    distinct = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    position = {value: i for i, value in enumerate(distinct)}
    return torch.tensor([position[v] for v in values], dtype=torch.long), [str(v) for v in distinct]
