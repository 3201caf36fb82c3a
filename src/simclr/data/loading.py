"""Batches for training and evaluation, from either kind of dataset.

Training order is a pure function of ``(seed, epoch)``: the permutation of an epoch is drawn from
a generator seeded with both, so a resumed run skips to its step inside the epoch and sees the
same batches it would have seen without the interruption.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from simclr.augment.loader import TwoCrops
from simclr.config import AugmentConfig
from simclr.data.datasets import (
    EvalResize,
    FileImages,
    ImageDataset,
    TensorImages,
    decoded_batches,
)


def epoch_batches(num_items: int, batch_size: int, *, seed: int, epoch: int) -> list[Tensor]:
    """Shuffled index batches of one epoch; the last incomplete batch is dropped.

    Shape:
        each batch is ``[batch_size]`` int64.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_items, generator=generator)
    full = num_items // batch_size
    return list(order[: full * batch_size].view(full, batch_size))


def train_batches(
    dataset: ImageDataset,
    augment: AugmentConfig,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    start: int = 0,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, int]]:
    """Yield ``(images, skipped)`` for the batches of ``epoch`` from batch ``start`` on.

    ``images`` is uint8 ``[B, 3, S, S]`` for in-memory data (the views' crop runs batched later),
    or uint8 ``[B, 2, 3, S, S]`` for files, whose two random crops are cut in the loader workers.
    ``skipped`` counts unreadable files dropped from the batch.
    """
    batches = epoch_batches(len(dataset), batch_size, seed=seed, epoch=epoch)[start:]
    if isinstance(dataset, TensorImages):
        for index in batches:
            images = dataset.images[index]
            yield (images.pin_memory() if pin_memory else images), 0
        return
    assert isinstance(dataset, FileImages)
    loader = DataLoader(
        dataset.with_transform(TwoCrops(augment)),
        batch_sampler=[b.tolist() for b in batches],
        num_workers=num_workers,
        collate_fn=stack_valid,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
        persistent_workers=False,
    )
    yield from loader


def eval_batches(
    dataset: ImageDataset, *, size: int, batch_size: int, num_workers: int = 2
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(images, labels, indices)`` in dataset order with the evaluation preprocessing.

    Unreadable files are dropped; ``indices`` (positions in ``dataset``) say which items remain,
    so features, labels and names stay aligned.

    Shape:
        images uint8 ``[B, 3, size, size]``, labels and indices int64 ``[B]``.
    """
    if isinstance(dataset, TensorImages):
        resize = EvalResize(size)
        for start in range(0, len(dataset), batch_size):
            images = dataset.images[start : start + batch_size]
            if images.shape[-1] != size:
                images = torch.stack([resize(img) for img in images])
            index = torch.arange(start, start + len(images))
            yield images, dataset.labels[index], index
        return
    assert isinstance(dataset, FileImages)
    for images, index in decoded_batches(
        dataset, size=size, batch_size=batch_size, num_workers=num_workers
    ):
        yield images, dataset.labels[index], index


def stack_valid(batch: list[tuple[Tensor | None, int]]) -> tuple[Tensor, int]:
    """Collate: stack the readable images and count the unreadable ones."""
    images = [image for image, _ in batch if image is not None]
    if not images:
        return torch.zeros(0, dtype=torch.uint8), len(batch)
    return torch.stack(images), len(batch) - len(images)
