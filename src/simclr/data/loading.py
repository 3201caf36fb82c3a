"""Batches for training and evaluation, from either kind of dataset.

Training order is a pure function of ``(seed, epoch)``: the permutation of an epoch is drawn from
a generator seeded with both, so a resumed run skips to its step inside the epoch and sees the
same batches it would have seen without the interruption.

Under DDP every process cuts each global batch into equal parts and takes its own (a
``DistributedSampler`` with per-epoch shuffling whose global batches are those of a one-process
run), so K processes with batch B/K see exactly what one process with batch B sees.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from simclr.augment.loader import TwoCrops
from simclr.config import AugmentConfig, DataConfig
from simclr.data.datasets import (
    EvalResize,
    FileImages,
    ImageDataset,
    TensorImages,
    build_dataset,
    decoded_batches,
    stack_valid,
)
from simclr.data.items import Items
from simclr.data.shards import ShardSet, is_shard_index, open_shards, shard_batches
from simclr.runtime import derive_seed, ignore_stop_signals

TrainData = Items | ShardSet
"""What the training loop reads: a dataset with random access, or a stream of shards."""


def open_train_data(data: DataConfig, *, size: int) -> TrainData:
    """The training data named by ``data.path``.

    A shard set (see :mod:`simclr.data.shards`), or any dataset that
    :func:`simclr.data.datasets.build_dataset` opens (its ``train`` split).
    """
    if is_shard_index(data.path):
        return open_shards(data.path)
    return build_dataset(
        data.path, split="train", size=size, in_memory=data.in_memory, num_workers=data.num_workers
    )


def epoch_batches(
    num_items: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[Tensor]:
    """Shuffled index batches of one epoch; the last incomplete batch is dropped.

    Args:
        num_items: Dataset length.
        batch_size: The global batch (over all processes).
        seed: With ``epoch``, fixes the order.
        epoch: Epoch number.
        rank: This process's part of every global batch.
        world_size: Processes sharing each batch; must divide ``batch_size``.

    Shape:
        each batch is ``[batch_size // world_size]`` int64.
    """
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    order = torch.randperm(num_items, generator=generator)
    full = num_items // batch_size
    local = batch_size // world_size
    batches = order[: full * batch_size].view(full, world_size, local)
    return list(batches[:, rank])


def train_batches(
    dataset: TrainData,
    augment: AugmentConfig,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    start: int = 0,
    num_workers: int = 2,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Tensor, int]]:
    """Yield ``(images, skipped)`` for the batches of ``epoch`` from batch ``start`` on.

    ``batch_size`` is global; this process gets its part of every batch (see
    :func:`epoch_batches`).

    ``images`` is ``[B, C, S, S]`` for in-memory data (the views' crop runs batched later), or
    ``[B, 2, C, S, S]`` for files, whose two random crops are cut in the loader workers; uint8,
    or float32 for high bit depths (see :mod:`simclr.data.datasets`).
    ``skipped`` counts unreadable files dropped from the batch. Shards (:class:`ShardSet`) give
    crops like files, from the stream described in :mod:`simclr.data.shards`.
    """
    if isinstance(dataset, ShardSet):
        yield from shard_batches(
            dataset,
            augment,
            batch_size=batch_size // world_size,
            steps=len(dataset) // batch_size,
            seed=seed,
            epoch=epoch,
            start=start,
            num_workers=num_workers,
            rank=rank,
            pin_memory=pin_memory,
        )
        return
    batches = epoch_batches(
        len(dataset), batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size
    )[start:]
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
        generator=torch.Generator().manual_seed(derive_seed(seed, epoch, rank)),
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals,
    )
    yield from loader


def eval_batches(
    dataset: ImageDataset,
    *,
    size: int,
    batch_size: int,
    num_workers: int = 2,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(images, labels, indices)`` in dataset order with the evaluation preprocessing.

    Unreadable files are dropped; ``indices`` (positions in ``dataset``) say which items remain,
    so features, labels and names stay aligned. ``shard = (r, K)`` keeps every K-th batch from
    batch r on, so K processes share the work.

    Shape:
        images ``[B, C, size, size]`` (uint8, or float32 for high bit depths), labels and
        indices int64 ``[B]``.
    """
    part, parts = shard
    if isinstance(dataset, TensorImages):
        resize = EvalResize(size)
        for start in range(part * batch_size, len(dataset), parts * batch_size):
            images = dataset.images[start : start + batch_size]
            if images.shape[-1] != size:
                images = torch.stack([resize(img) for img in images])
            index = torch.arange(start, start + len(images))
            yield images, dataset.labels[index], index
        return
    assert isinstance(dataset, FileImages)
    for images, index in decoded_batches(
        dataset, size=size, batch_size=batch_size, num_workers=num_workers, shard=shard
    ):
        yield images, dataset.labels[index], index
