"""Images, the first modality, behind the interface every modality shares.

Each method hands over to the image code that existed before modalities did: the readers of
:mod:`simclr.data.datasets` (and the shard streams of :mod:`simclr.data.shards`), the batched
:class:`~simclr.augment.views.SimCLRViews`, the ResNets of :mod:`simclr.models.backbones`, and the
paper's evaluation resize.

Images of any channel count C and bit depth (see :mod:`simclr.data.datasets`): the encoder's
first convolution takes C channels. C is ``model.in_channels`` when set, else what the training
data has (3 for RGB), recorded in the checkpoint's fitted preprocessing as ``{"channels": C}``
(nothing for RGB) so that evaluation, embedding and export rebuild the same encoder, and data
with another count is refused in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from simclr.augment.functional import to_float
from simclr.augment.views import SimCLRViews
from simclr.config import AugmentConfig, Config, DataConfig
from simclr.data.datasets import IMAGE_EXTENSIONS, ImageDataset, build_dataset
from simclr.data.items import Items
from simclr.data.loading import TrainData, eval_batches, open_train_data, train_batches
from simclr.data.shards import is_shard_index
from simclr.errors import UserError
from simclr.modalities.base import Batch, Fitted, Modality, ViewGenerator, file_suffixes
from simclr.models.external import check_image_size, is_external
from simclr.models.simclr import SimCLR


class ImageModality(Modality):
    """Images: ``augment`` is the view recipe, ``model`` the ResNet; the channels are fitted.

    Batches are ``(images,)``: ``[B, C, S, S]`` from memory or ``[B, 2, C, S, S]`` crops cut
    in the loader workers for files, uint8 (or float32 for high bit depths); the encoder's
    input is float, uint8 divided by 255. The fitted preprocessing is ``{"channels": C}`` for
    C != 3, and empty for RGB (as in the checkpoints older than it).
    """

    name = "image"
    backbones = ("resnet50", "resnet18", "resnet34")  # + register_backbone's, timm:*, tv:*

    @classmethod
    def detect(cls, spec: str) -> bool:
        """The built-in digits, shards, an image array file, or a folder with image files."""
        if spec == "digits" or is_shard_index(spec):
            return True
        path = Path(spec).expanduser()
        if path.is_file():
            return path.suffix.lower() in (".npy", ".npz") and _holds_images(path)
        return path.is_dir() and bool(file_suffixes(path) & set(IMAGE_EXTENSIONS))

    @property
    def channels(self) -> int:
        """Channels of the encoder's input: ``model.in_channels``, else the fitted count, or 3."""
        if self.cfg.model.in_channels is not None:
            return self.cfg.model.in_channels
        return int((self.fitted or {}).get("channels", 3))

    def open(self, spec: str, *, split: str) -> tuple[Items, Fitted]:
        """An image dataset (see :func:`simclr.data.datasets.build_dataset`).

        Unfitted, its channel count is the fitted preprocessing; fitted, the data must have
        the channels the encoder takes.

        Raises:
            UserError: see :func:`~simclr.data.datasets.build_dataset`, or another channel
                count than the encoder's.
        """
        data = self.cfg.data
        dataset = build_dataset(
            spec,
            split=split,
            size=self.cfg.augment.size,
            in_memory=data.in_memory,
            num_workers=data.num_workers,
        )
        return dataset, self._fit_channels(dataset.channels, spec)

    def open_train(self) -> tuple[TrainData, Fitted]:
        """The training images, or a stream of WebDataset shards.

        Shards are not decoded to count their channels: they are taken to have
        ``model.in_channels`` (default 3), and a first batch with others is an error.
        """
        train = open_train_data(self.cfg.data, size=self.cfg.augment.size)
        channels = train.channels if isinstance(train, ImageDataset) else self.channels
        return train, self._fit_channels(channels, self.cfg.data.path)

    def _fit_channels(self, channels: int, spec: str) -> Fitted:
        """The fitted preprocessing for data with ``channels``, checked against the encoder's."""
        expected = None if self.fitted is None else self.channels
        if self.fitted is None and self.cfg.model.in_channels is not None:
            expected = self.cfg.model.in_channels
        if expected is not None and channels != expected:
            raise UserError(_channel_mismatch(spec, channels, expected))
        if self.fitted is not None:
            return dict(self.fitted)
        return {} if channels == 3 else {"channels": channels}

    def classifier_data(self, spec: str, *, split: str) -> ImageDataset:
        """The labelled images that ``finetune`` and ``linear --protocol sgd`` crop and flip.

        Raises:
            UserError: the images have no labels.
        """
        dataset, _ = self.open(spec, split=split)
        assert isinstance(dataset, ImageDataset)
        if not dataset.has_labels:
            raise UserError(f"{spec} has no labels; this protocol needs class subfolders")
        return dataset

    def build_model(self) -> SimCLR:
        """A registered, timm or torchvision backbone (``model.*``) with the head.

        Its first convolution takes :attr:`channels`. A ``timm:``/``tv:`` backbone first runs
        one blank image of ``augment.size`` px, so a ViT built for another size is one line
        here (:func:`check_image_size`).
        """
        settings = dataclasses.replace(self.cfg.model, in_channels=self.channels)
        model = SimCLR.from_config(settings)
        if is_external(settings.backbone):
            check_image_size(
                model.backbone,
                settings.backbone,
                self.cfg.augment.size,
                model.feature_dim,
                channels=self.channels,
            )
        return model

    def views(self, seed: int) -> ViewGenerator:
        """:class:`SimCLRViews` with the ``augment`` recipe."""
        return SimCLRViews(self.cfg.augment, seed=seed)

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
        """See :func:`simclr.data.loading.train_batches`.

        Raises:
            UserError: the images have another channel count than the encoder takes (data
                given through the Python API, or shards).
        """
        checked = False
        for images, skipped in train_batches(
            dataset,
            self.cfg.augment,
            batch_size=batch_size,
            seed=seed,
            epoch=epoch,
            start=start,
            num_workers=self.cfg.data.num_workers,
            pin_memory=pin_memory,
            rank=rank,
            world_size=world_size,
        ):
            if not checked and images.numel():
                checked = True
                channels = int(images.shape[-3])
                if channels != self.channels:
                    raise UserError(_channel_mismatch("the training data", channels, self.channels))
            yield (images,), skipped

    def eval_batches(
        self, dataset: Items, *, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[Batch, Tensor, Tensor]]:
        """Images resized as the paper evaluates them (see :func:`eval_batches`)."""
        assert isinstance(dataset, ImageDataset)
        for images, labels, index in eval_batches(
            dataset,
            size=self.cfg.augment.size,
            batch_size=batch_size,
            num_workers=self.cfg.data.num_workers,
            shard=shard,
        ):
            yield (images,), labels, index

    def model_input(self, batch: Batch, device: torch.device | str) -> Tensor:
        """uint8 -> float in [0, 1] on the device (the copy stays uint8, 4x smaller).

        Float batches (high bit depths) are used as they are.
        """
        return to_float(batch[0].to(device, non_blocking=True), copy=False)

    def preprocessing(self) -> str:
        """The evaluation resize."""
        size = self.cfg.augment.size
        text = (
            f"resize to {size} px (shorter side to {size}/0.875 and centre crop when larger); "
            "no augmentation"
        )
        if self.channels != 3:  # RGB runs keep the protocol text (and feature caches) they had
            text += f"; {self.channels} channels"
        return text

    def draw_views(self, dataset: Items, out: Path, *, num_items: int, seed: int) -> Path:
        """Originals next to two views each (see :func:`simclr.viz.draw_views`)."""
        from simclr.viz import draw_views

        assert isinstance(dataset, ImageDataset)
        return draw_views(dataset, self.cfg.augment, out, num_images=num_items, seed=seed)


def image_modality(size: int, *, num_workers: int = 2) -> ImageModality:
    """The image modality with the default recipe at ``size`` px (for image-only evaluations)."""
    cfg = Config(
        data=DataConfig(modality="image", num_workers=num_workers),
        augment=AugmentConfig(size=size),
    )
    return ImageModality(cfg)


def _holds_images(path: Path) -> bool:
    """Whether a ``.npy``/``.npz`` holds images (other arrays are series or tables).

    uint8 arrays, integer arrays ``(N, H, W[, C])`` and 4-D float arrays are images (3-D float
    arrays are time series ``[N, C, T]``: give ``--modality image`` for grey float images); an
    ``.npz`` holds images when it has an ``images`` array.
    """
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError):
        return False
    if isinstance(loaded, np.ndarray):
        if loaded.dtype == np.uint8:
            return True
        integer = np.issubdtype(loaded.dtype, np.integer) and loaded.ndim in (3, 4)
        return bool(integer or (np.issubdtype(loaded.dtype, np.floating) and loaded.ndim == 4))
    with loaded:
        return "images" in loaded.files


def _channel_mismatch(spec: str, channels: int, expected: int) -> str:
    return (
        f"{spec} holds images with {channels} channels but the encoder takes {expected} "
        f"(model.in_channels, or the channels of the training data)"
    )
