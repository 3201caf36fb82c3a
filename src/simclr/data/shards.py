"""Streaming training data: tar shards in the WebDataset format, and the command that writes them.

For datasets larger than a disk, or kept on object storage, images are read in sequence from
tar files ("shards") instead of one file at a time. A shard set is described by ``shards.json``,
written by :func:`write_shards` (``simclr shards``): the shard file names, the number of samples
and the class names. A sample is the original image file, byte for byte (``<key>.jpg``,
``<key>.png``, ...), with its class index in ``<key>.cls`` when the source had class folders.

Training reads shards the way WebDataset recommends for multi-process jobs: every loader worker
of every process draws shards at random with replacement (seeded by the run's seed, the epoch,
the rank and the worker), decodes and crops the images, shuffles them in a buffer and batches
them. An epoch is ``num_samples // global_batch`` steps, so over many epochs each sample is seen
about as often as with a sampler, and no process ever waits for another to finish its shards.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import DataLoader

from simclr.augment.loader import TwoCrops
from simclr.config import AugmentConfig
from simclr.data.datasets import FileImages, read_image, stack_valid
from simclr.errors import UserError, first_line
from simclr.runtime import derive_seed

log = logging.getLogger("simclr")

INDEX = "shards.json"
SHUFFLE_BUFFER = 2000
"""Samples held by each loader worker to shuffle within and across shards."""
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")


@dataclass(frozen=True)
class ShardSet:
    """A set of WebDataset shards: where they are, how many samples, which classes.

    Attributes:
        urls: One local path or URL per shard (anything ``webdataset`` can open).
        num_samples: Samples in all shards together.
        classes: Class names, indexed by the ``.cls`` entries (empty when unlabelled).
    """

    urls: list[str]
    num_samples: int
    classes: list[str]

    def __len__(self) -> int:
        return self.num_samples


def is_shard_index(spec: str) -> bool:
    """Whether ``spec`` names a shard set: a ``shards.json``, by path or URL, or its folder."""
    return spec.endswith(".json") or (Path(spec).expanduser() / INDEX).is_file()


def open_shards(spec: str) -> ShardSet:
    """Read a shard set's ``shards.json`` (a local path, its folder, or an http(s) URL).

    Shard names in the index are relative to the index's own location.

    Raises:
        UserError: a missing or malformed index.
    """
    local = Path(spec).expanduser()
    index_location = str(local / INDEX) if local.is_dir() else spec
    try:
        with wds.gopen(index_location) as handle:
            index = json.loads(handle.read().decode("utf-8"))
        names, num_samples = list(index["shards"]), int(index["num_samples"])
        classes = [str(name) for name in index.get("classes", [])]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"cannot read the shard index {index_location}: {first_line(err)}"
        ) from None
    if not names or num_samples < 1:
        raise UserError(f"the shard index {index_location} lists no samples")
    base = index_location.rsplit("/", 1)[0] if "/" in index_location else "."
    return ShardSet([f"{base}/{name}" for name in names], num_samples, classes)


def write_shards(
    files: FileImages, out_dir: Path, *, max_count: int = 10_000, seed: int = 0
) -> ShardSet:
    """Pack an image folder into shards of at most ``max_count`` images, in a shuffled order.

    Shuffling once here matters: training reads a shard from start to end, and a shard that
    held a single class would fill the shuffle buffer with it.

    Args:
        files: The images (see :func:`simclr.data.datasets.scan_folder`).
        out_dir: Created if needed; receives ``shard-000000.tar``... and ``shards.json``.
        max_count: Images per shard.
        seed: Fixes the order.

    Returns:
        The written shard set.
    """
    if any(out_dir.glob("shard-*.tar")) or (out_dir / INDEX).exists():
        raise UserError(f"{out_dir} already holds shards; choose an empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    with wds.ShardWriter(str(out_dir / "shard-%06d.tar"), maxcount=max_count, verbose=0) as sink:
        for key, item in enumerate(order):
            path = Path(files.names[item])
            extension = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
            sample: dict[str, Any] = {"__key__": f"{key:09d}", extension: path.read_bytes()}
            label = int(files.labels[item])
            if label >= 0:
                sample["cls"] = str(label).encode()
            sink.write(sample)
    names = sorted(p.name for p in out_dir.glob("shard-*.tar"))
    index = {"num_samples": len(order), "classes": files.classes, "shards": names}
    (out_dir / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return ShardSet([str(out_dir / name) for name in names], len(order), list(files.classes))


class _DecodeTwoCrops:
    """Sample dict -> ``(two crops [2, 3, S, S] uint8 or None, label)``, in a loader worker."""

    def __init__(self, augment: AugmentConfig) -> None:
        self.crops = TwoCrops(augment)

    def __call__(self, sample: dict[str, Any]) -> tuple[Tensor | None, int]:
        label = int(sample["cls"]) if "cls" in sample else -1
        data = next((sample[key] for key in IMAGE_KEYS if key in sample), None)
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        image = read_image(io.BytesIO(data), name=name) if data is not None else None
        if data is None:
            log.warning("skipping sample %s: no image in it", name)
        return (self.crops(image) if image is not None else None), label


def shard_batches(
    shards: ShardSet,
    augment: AugmentConfig,
    *,
    batch_size: int,
    steps: int,
    seed: int,
    epoch: int,
    start: int = 0,
    num_workers: int = 2,
    rank: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, int]]:
    """Yield ``steps - start`` batches ``(crops, skipped)`` of this process's stream.

    ``crops`` is uint8 ``[b, 2, 3, S, S]`` (two random resized crops per image, as for image
    files), with ``b = batch_size`` less the unreadable samples counted in ``skipped``. A
    resumed epoch (``start > 0``) continues with the right number of steps, from a stream
    seeded with ``start`` too (streams cannot seek: the remaining samples differ from those an
    uninterrupted run would have read).
    """
    stream_seed = derive_seed(seed, epoch, start)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(
            shards.urls,
            seed=stream_seed,
            worker_seed=functools.partial(_worker_seed, rank),
            deterministic=True,
        ),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        # the same buffer seed everywhere is harmless: each worker shuffles different shards
        wds.shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER // 4, seed=stream_seed),
        wds.map(_DecodeTwoCrops(augment)),
        wds.batched(batch_size, collation_fn=stack_valid, partial=False),
    )
    loader = DataLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(derive_seed(stream_seed, rank)),
    )
    yield from itertools.islice(loader, max(0, steps - start))


def _worker_seed(rank: int) -> int:
    """Distinct shard-sampling seed of each loader worker of each process."""
    info = torch.utils.data.get_worker_info()
    return rank * 1000 + (info.id if info is not None else 0)
