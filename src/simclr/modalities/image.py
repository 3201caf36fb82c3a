"""Images, the first modality, behind the interface every modality shares.

Each method hands over to the image code that existed before modalities did: the readers of
:mod:`simclr.data.datasets` (and the shard streams of :mod:`simclr.data.shards`), the batched
:class:`~simclr.augment.views.SimCLRViews`, the ResNets of :mod:`simclr.models.backbones`, and the
paper's evaluation resize.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

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
    """RGB images: ``augment`` is the view recipe, ``model`` the ResNet; nothing is fitted.

    Batches are ``(uint8 images,)``: ``[B, 3, S, S]`` from memory or ``[B, 2, 3, S, S]`` crops
    cut in the loader workers for files; the encoder's input is float in [0, 1].
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
            return path.suffix.lower() in (".npy", ".npz") and _holds_uint8(path)
        return path.is_dir() and bool(file_suffixes(path) & set(IMAGE_EXTENSIONS))

    def open(self, spec: str, *, split: str) -> tuple[Items, Fitted]:
        """An image dataset (see :func:`simclr.data.datasets.build_dataset`)."""
        data = self.cfg.data
        dataset = build_dataset(
            spec,
            split=split,
            size=self.cfg.augment.size,
            in_memory=data.in_memory,
            num_workers=data.num_workers,
        )
        return dataset, {}

    def open_train(self) -> tuple[TrainData, Fitted]:
        """The training images, or a stream of WebDataset shards."""
        return open_train_data(self.cfg.data, size=self.cfg.augment.size), {}

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

        A ``timm:``/``tv:`` backbone first runs one blank image of ``augment.size`` px, so a
        ViT built for another size is one line here (:func:`check_image_size`).
        """
        model = SimCLR.from_config(self.cfg.model)
        if is_external(self.cfg.model.backbone):
            check_image_size(
                model.backbone, self.cfg.model.backbone, self.cfg.augment.size, model.feature_dim
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
        """See :func:`simclr.data.loading.train_batches`."""
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
        """uint8 -> float in [0, 1] on the device (the copy stays uint8, 4x smaller)."""
        return batch[0].to(device, non_blocking=True).float().div_(255)

    def preprocessing(self) -> str:
        """The evaluation resize."""
        size = self.cfg.augment.size
        return (
            f"resize to {size} px (shorter side to {size}/0.875 and centre crop when larger); "
            "no augmentation"
        )

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


def _holds_uint8(path: Path) -> bool:
    """Whether a ``.npy``/``.npz`` holds uint8 images (other arrays are series or tables)."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError):
        return False
    if isinstance(loaded, np.ndarray):
        return bool(loaded.dtype == np.uint8)
    with loaded:
        return "images" in loaded.files
