"""What a modality is: a reader, a batched view generator, an encoder, evaluation preprocessing.

Nothing else changes between images, audio, series, text and tables.

The training loop (:mod:`simclr.train`), the evaluation commands and the checkpoints see only
this interface:

* :meth:`Modality.open` reads a dataset (:class:`~simclr.data.items.Items`) and returns it with
  the *fitted preprocessing* (a tokenizer, column statistics, a resampling length: a JSON-able
  dict fitted on the training data once, saved in every checkpoint, reused for evaluation data);
  a modality is built with it (``modality_for(cfg, fitted)``, :meth:`Modality.with_fitted`);
* :meth:`Modality.build_model` makes the encoder f and the head g;
* :meth:`Modality.views` makes the two-view generator, an ``nn.Module`` run on the batch's
  device, reseeded by the loop at every step;
* :meth:`Modality.train_batches` / :meth:`Modality.eval_batches` cut batches (tuples of tensors)
  and :meth:`Modality.model_input` turns an evaluation batch into the encoder's input.

:class:`TensorModality` implements the batching for modalities held in memory as
:class:`~simclr.data.items.TensorItems` (audio, time series, text, tables), and
:class:`SeededViews` the seeding contract of their view generators.
"""

from __future__ import annotations

import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from simclr.config import Config
from simclr.data.datasets import ImageDataset
from simclr.data.folders import walk_files
from simclr.data.items import Items, TensorItems
from simclr.data.loading import TrainData, epoch_batches
from simclr.errors import UserError, require
from simclr.models.heads import head_for_version
from simclr.models.simclr import SimCLR

Batch = tuple[Tensor, ...]
"""A batch as the loop moves it: images ``([B, C, S, S],)``, or ``(inputs, lengths)``."""
Fitted = dict[str, Any]
"""Preprocessing fitted on the training data; primitives only (saved in checkpoints)."""


class ViewGenerator(Protocol):
    """What :meth:`Modality.views` returns: an ``nn.Module`` drawing two views of a batch."""

    def manual_seed(self, seed: int) -> None:
        """Restart the random stream."""

    # Optional: ``set_progress(fraction)``, called before every training step with how far
    # training is (0 to 1), for views that change over training (the image views' progressive
    # resolution); the loop skips generators without it.

    def __call__(self, *batch: Tensor) -> tuple[Tensor, Tensor]:
        """Two views of every item of ``batch`` (on the batch's device)."""
        ...

    def to(self, device: torch.device) -> Any:
        """Move buffers (filter banks, kernels) to ``device``."""


class Modality(ABC):
    """One kind of data, bound to a configuration and to its fitted preprocessing.

    Subclasses set :attr:`name`, :attr:`backbones` (encoder names, the first is the default) and
    implement the abstract methods, keeping the ``(cfg, fitted)`` constructor. The fitted
    preprocessing is given at construction, never set as a side effect: :meth:`open` on the
    training data of an unfitted modality returns it, and :meth:`with_fitted` (or
    ``modality_for(cfg, fitted)``) binds it for the encoder, the views and evaluation.
    Register the class with :func:`simclr.modalities.register_modality`.

    Args:
        cfg: The resolved configuration (its ``data.modality`` names this modality).
        fitted: The preprocessing fitted on the training data (from a checkpoint, or from
            :meth:`open`); ``None`` until it is fitted.
    """

    name: ClassVar[str]
    backbones: ClassVar[tuple[str, ...]] = ()
    """Encoder names accepted in ``model.backbone`` (see :meth:`check_backbone`)."""
    fits_preprocessing: ClassVar[bool] = False
    """True when :meth:`open` fits something on the training data (then rank 0 fits it once)."""
    recipe: ClassVar[str | Path | None] = None
    """Default recipe (a name, or a YAML file) when registration names none (entry points)."""

    def __init__(self, cfg: Config, fitted: Fitted | None = None) -> None:
        self.cfg = cfg
        self.fitted = fitted

    def with_fitted(self, fitted: Fitted) -> Modality:
        """The same modality (class and configuration) bound to ``fitted``."""
        return type(self)(self.cfg, fitted)

    @property
    def options(self) -> dict[str, Any]:
        """``options.<name>``: the settings of a modality added from outside the package."""
        return dict(self.cfg.options.get(self.name, {}))

    @classmethod
    @abstractmethod
    def detect(cls, spec: str) -> bool:
        """True when ``spec`` (a path or a named dataset) is unambiguously this modality."""

    @abstractmethod
    def open(self, spec: str, *, split: str) -> tuple[Items, Fitted]:
        """Read the dataset named by ``spec`` (its ``split`` part where it has two).

        Without :attr:`fitted` the preprocessing is fitted on this data (the training set);
        otherwise :attr:`fitted` is applied (evaluation data, a resumed run). Returns the items
        and the preprocessing used; the modality itself is left unchanged.

        Raises:
            UserError: a missing, empty or malformed input (unreadable items are skipped with a
                warning instead).
        """

    def open_train(self) -> tuple[TrainData, Fitted]:
        """The training data (``data.path``, split ``train``); images may also be a shard stream."""
        return self.open(self.cfg.data.path, split="train")

    @abstractmethod
    def build_model(self) -> SimCLR:
        """The encoder f with the configured projection head g, freshly initialised."""

    def require_fitted(self) -> Fitted:
        """:attr:`fitted`; ``{}`` for a modality that fits nothing.

        Raises:
            RuntimeError: the modality fits its preprocessing and was built without it.
        """
        if self.fitted is not None:
            return self.fitted
        if not self.fits_preprocessing:
            return {}
        raise RuntimeError(
            f"the {self.name} modality has no fitted preprocessing: open the training data, then "
            "build the modality with the fitted preprocessing (modality_for(cfg, fitted))"
        )

    def classifier_data(self, spec: str, *, split: str) -> ImageDataset:
        """Labelled data for the protocols that train a classifier on augmented crops.

        ``finetune`` and ``linear --protocol sgd`` use it; only images have it.

        Raises:
            UserError: this modality has no such protocol (images only), or ``spec`` is
                unlabelled.
        """
        raise UserError(
            f"this protocol trains with image crops; for a {self.name} checkpoint use knn, "
            "linear (logistic) or cluster"
        )

    @abstractmethod
    def views(self, seed: int) -> ViewGenerator:
        """The two-view generator: ``views(*batch) -> (view1, view2)``, with ``manual_seed``."""

    @abstractmethod
    def train_batches(
        self,
        dataset: TrainData,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[Batch, int]]:
        """``(batch, skipped)`` for the global batches of ``epoch`` from ``start`` on.

        ``batch_size`` is global; this process gets its part (see
        :func:`simclr.data.loading.epoch_batches`). ``skipped`` counts unreadable items dropped.
        """

    @abstractmethod
    def eval_batches(
        self, dataset: Items, *, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[Batch, Tensor, Tensor]]:
        """``(batch, labels, indices)`` in dataset order; ``shard = (r, K)``: every K-th batch."""

    @abstractmethod
    def model_input(self, batch: Batch, device: torch.device | str) -> Tensor:
        """The encoder's input for an evaluation batch, on ``device`` (no augmentation)."""

    @abstractmethod
    def preprocessing(self) -> str:
        """One sentence saying what :meth:`model_input` does, for the evaluation protocols."""

    @abstractmethod
    def draw_views(self, dataset: Items, out: Path, *, num_items: int, seed: int) -> Path:
        """Picture (or listing) of view pairs of the first items of ``dataset``; its path."""

    def check_backbone(self) -> None:
        """Fail with one line when ``model.backbone`` is not one of :attr:`backbones` (if any)."""
        if not self.backbones or self.cfg.model.backbone in self.backbones:
            return
        from simclr.modalities import default_recipe, modality_names  # imports this module

        recipe = default_recipe(self.name) if self.name in modality_names() else None
        raise UserError(
            f"model.backbone {self.cfg.model.backbone!r} is not a {self.name} encoder; "
            f"choose {' or '.join(self.backbones)}"
            + (f" (or use --recipe {recipe})" if recipe else "")
        )

    def with_head(self, backbone: nn.Module, feature_dim: int) -> SimCLR:
        """Wrap an encoder with the projection head the config asks for."""
        m = self.cfg.model
        head = head_for_version(m.head, feature_dim, m.head_hidden_dim, m.head_out_dim)
        return SimCLR(backbone, feature_dim, head)


class TensorModality(Modality):
    """Batching for data held in memory as :class:`TensorItems`: ``(inputs, lengths)`` batches.

    Training batches follow :func:`~simclr.data.loading.epoch_batches` (the order is a function
    of seed and epoch; each process takes its part of every global batch), so resume and DDP
    behave exactly as for images.
    """

    def train_batches(
        self,
        dataset: TrainData,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[Batch, int]]:
        """Index the in-memory tensors with each batch of the epoch's permutation."""
        assert isinstance(dataset, Items)  # never a shard stream
        items = _tensor_items(dataset)
        batches = epoch_batches(
            len(items), batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size
        )
        for index in batches[start:]:
            batch = (items.inputs[index], items.lengths[index])
            yield (tuple(t.pin_memory() for t in batch) if pin_memory else batch), 0

    def eval_batches(
        self, dataset: Items, *, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[Batch, Tensor, Tensor]]:
        """Consecutive slices of the in-memory tensors."""
        items = _tensor_items(dataset)
        part, parts = shard
        for begin in range(part * batch_size, len(items), parts * batch_size):
            index = torch.arange(begin, min(begin + batch_size, len(items)))
            yield (items.inputs[index], items.lengths[index]), items.labels[index], index


class SeededViews(nn.Module):
    """Base of the batched view generators: one :class:`torch.Generator` on the batch's device.

    The same seed gives the same views; :meth:`manual_seed` restarts the stream (the training
    loop reseeds at every step from (seed, step, rank), so checkpoints need no random state).
    Subclasses draw every random number from :meth:`generator`.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def manual_seed(self, seed: int) -> None:
        """Restart the random stream from ``seed``."""
        self.seed = int(seed)
        self._generators.clear()

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator of ``device``, seeded from :attr:`seed` at its first use."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def uniform(self, shape: tuple[int, ...], low: float, high: float, like: Tensor) -> Tensor:
        """Uniform draws in ``[low, high)`` on ``like``'s device, in float32."""
        u = torch.rand(shape, generator=self.generator(like.device), device=like.device)
        return u.mul_(high - low).add_(low)


def file_suffixes(folder: Path, limit: int = 64) -> set[str]:
    """Lower-case suffixes of the first ``limit`` visible files below ``folder`` (sorted walk).

    Links are followed, each folder once (:func:`~simclr.data.folders.walk_files`).
    """
    found: set[str] = set()
    visible = (p for p in walk_files(folder) if not os.path.basename(p).startswith("."))
    for path in itertools.islice(visible, limit):
        found.add(Path(path).suffix.lower())
    return found


TEXT_MIN_MEAN_CHARS = 20
"""A CSV column of strings this long on average (or longer) makes the file a text corpus."""


def csv_holds_text(path: Path, probe_rows: int = 200) -> bool:
    """Whether a CSV (possibly ``.gz``) is a text corpus rather than a table.

    It is text when one of its columns holds strings of at least :data:`TEXT_MIN_MEAN_CHARS`
    characters on average over the first ``probe_rows`` rows; tables hold numbers and short
    category names. Unreadable files are neither (``False``); the reader reports them.
    """
    require("pandas", "tables", "to read CSV files")
    import pandas as pd

    try:
        head = pd.read_csv(path, nrows=probe_rows)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    for column in head.columns:
        values = head[column].dropna()
        strings = len(values) > 0 and all(isinstance(v, str) for v in values)
        if strings and values.str.len().mean() >= TEXT_MIN_MEAN_CHARS:
            return True
    return False


def _tensor_items(dataset: Items) -> TensorItems:
    if not isinstance(dataset, TensorItems):
        raise TypeError(f"expected TensorItems, got {type(dataset).__name__}")
    return dataset
