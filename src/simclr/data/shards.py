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

Broken or hostile shard sets fail fast, with one line naming what is wrong, instead of spinning:

* the index must list its shards as a JSON list of names; local shards must exist, and only
  local paths, ``file://`` and ``http(s)://`` are read (never ``pipe:`` or another scheme);
  an http(s) index or shard that does not answer within :data:`URL_TIMEOUT_S` seconds fails;
* a stream that meets :data:`MAX_FAILURES_IN_A_ROW` unreadable shards (or images) in a row, or
  spends :data:`MAX_SECONDS_WITHOUT_SAMPLE` seconds reading without a sample, is an error;
* a member larger than :data:`MAX_MEMBER_BYTES` is skipped unread (its sample is unreadable).

Unreadable shards and samples are named in a warning the first time (a shared table of
:data:`RECORD_SLOTS` flags, by name hash, keeps the warnings from repeating), and each unreadable
sample is counted once per run in the ``skipped`` of the batch that first drops it.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import re
import tarfile
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from simclr.augment.loader import TwoCrops
from simclr.checkpoint import write_text_atomic
from simclr.config import AugmentConfig
from simclr.data.datasets import FileImages, ReadRecord, read_image, stack_images
from simclr.errors import UserError, first_line, require
from simclr.runtime import derive_seed, ignore_stop_signals

log = logging.getLogger("simclr")

INDEX = "shards.json"
SHUFFLE_BUFFER = 2000
"""Samples held by each loader worker to shuffle within and across shards."""
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
URL_TIMEOUT_S = 15.0
"""Seconds an http(s) index or shard may take to connect, and to send each next block."""
MAX_INDEX_BYTES = 64 * 2**20
"""A ``shards.json`` larger than this is refused (it lists shard names, not samples)."""
MAX_MEMBER_BYTES = 256 * 2**20
"""Tar members declaring more bytes than this are skipped unread, as unreadable."""
MAX_FAILURES_IN_A_ROW = 200
"""Unreadable shards, or unreadable samples, in a row after which a stream is an error."""
MAX_SECONDS_WITHOUT_SAMPLE = 60.0
"""Seconds of reading shards without one sample after which a stream is an error."""
RECORD_SLOTS = 1 << 20
"""Flags of the shared table that remembers unreadable samples and shards (by name hash)."""
SCHEMES = ("http", "https", "file")
"""URL schemes read besides local paths."""


@dataclass(frozen=True)
class ShardSet:
    """A set of WebDataset shards: where they are, how many samples, which classes.

    Attributes:
        urls: One local path or ``file://`` / ``http(s)://`` URL per shard.
        num_samples: Samples in all shards together.
        classes: Class names, indexed by the ``.cls`` entries (empty when unlabelled).
        source: Where the set was read from (its index), for messages.
        record: The unreadable samples and shards warned about in this run (shared by the
            loader workers, by name hash: it only keeps warnings from repeating).
    """

    urls: list[str]
    num_samples: int
    classes: list[str]
    source: str = field(default="", compare=False)
    record: ReadRecord = field(
        default_factory=lambda: ReadRecord(RECORD_SLOTS), compare=False, repr=False
    )
    counted: set[str] = field(default_factory=set, compare=False, repr=False)
    """Unreadable samples already counted in a batch's ``skipped`` (in this process)."""

    def __len__(self) -> int:
        return self.num_samples


def is_shard_index(spec: str) -> bool:
    """Whether ``spec`` names a shard set: a ``shards.json``, by path or URL, or its folder."""
    return spec.endswith(".json") or (Path(spec).expanduser() / INDEX).is_file()


def open_shards(spec: str) -> ShardSet:
    """Read a shard set's ``shards.json`` (a local path, its folder, or an http(s) URL).

    Shard names in the index are relative to the index's own location (or absolute paths and
    URLs). Everything is checked here, with a one-line error, rather than in the stream.

    Raises:
        UserError: a missing, unreachable or malformed index (``shards`` not a list of names,
            ``num_samples`` not a positive integer), a URL scheme other than
            :data:`SCHEMES`, or a local shard that is not a file.
    """
    local = Path(spec).expanduser()
    location = str(local / INDEX) if local.is_dir() else spec
    if not local.exists():
        _check_scheme(location, "shard index")
    try:
        with _open_location(location) as handle:
            text = handle.read(MAX_INDEX_BYTES + 1)
        if len(text) > MAX_INDEX_BYTES:
            raise ValueError(f"larger than {MAX_INDEX_BYTES // 2**20} MiB")
        index = json.loads(text.decode("utf-8"))
    except Exception as err:  # noqa: BLE001 - any failure to fetch or parse is one line
        raise UserError(f"cannot read the shard index {location}: {_reason(err)}") from None
    names, num_samples, classes = _index_fields(index, location)
    base = location.rsplit("/", 1)[0] if "/" in location else "."
    urls = [name if _scheme(name) or name.startswith("/") else f"{base}/{name}" for name in names]
    for url in urls:
        _check_scheme(url, "shard")
    missing = [url for url in urls if _local_path(url) is not None and not _is_file(url)]
    if missing:
        raise UserError(
            f"the shard index {location} names {len(missing)} shard(s) that are not files, "
            f"such as {missing[0]}"
        )
    return ShardSet(urls, num_samples, classes, source=location)


def _index_fields(index: Any, location: str) -> tuple[list[str], int, list[str]]:
    """``shards``, ``num_samples`` and ``classes`` of a parsed index, checked."""
    if not isinstance(index, dict):
        raise UserError(f"the shard index {location} is not a JSON object")
    names = index.get("shards")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise UserError(
            f"the shard index {location}: 'shards' must be a list of shard file names, "
            f"not {type(names).__name__}"
        )
    num_samples = index.get("num_samples")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise UserError(f"the shard index {location}: 'num_samples' must be an integer")
    if not names or num_samples < 1:
        raise UserError(f"the shard index {location} lists no samples")
    classes = index.get("classes", [])
    if not isinstance(classes, list):
        raise UserError(f"the shard index {location}: 'classes' must be a list of names")
    return names, num_samples, [str(name) for name in classes]


def _scheme(location: str) -> str | None:
    """The URL scheme of ``location`` (lower case), or None for a plain path."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", location)
    return match.group(1).lower() if match else None


def _check_scheme(location: str, what: str) -> None:
    scheme = _scheme(location)
    if scheme is not None and scheme not in SCHEMES:
        raise UserError(
            f"{what} {location}: {scheme}: is not read; use a local path, file:// or http(s)://"
        )


def _local_path(location: str) -> str | None:
    """The file of a local path or ``file://`` URL, None for an http(s) URL."""
    scheme = _scheme(location)
    if scheme is None:
        return location
    if scheme == "file":
        return urllib.request.url2pathname(urllib.parse.urlparse(location).path)
    return None


def _is_file(location: str) -> bool:
    path = _local_path(location)
    return path is not None and Path(path).expanduser().is_file()


def _open_location(location: str) -> BinaryIO:
    """A binary stream of a local file or URL; http(s) with :data:`URL_TIMEOUT_S`."""
    path = _local_path(location)
    if path is not None:
        return open(Path(path).expanduser(), "rb")
    response: BinaryIO = urllib.request.urlopen(location, timeout=URL_TIMEOUT_S)  # noqa: S310
    return response


def _reason(err: BaseException) -> str:
    """A short one-line reason for a failed read (URL errors: the underlying reason)."""
    reason = getattr(err, "reason", None)
    text = first_line(reason if isinstance(reason, BaseException) else err)
    if isinstance(reason, str) and reason:
        text = reason
    return text[:200]


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
    wds = require("webdataset", "shards", "to write shards")
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
    write_text_atomic(out_dir / INDEX, json.dumps(index, indent=1) + "\n")
    return ShardSet([str(out_dir / name) for name in names], len(order), list(files.classes))


class _Progress:
    """Fails a stream that reads nothing: too many failures in a row, or too long without one.

    Only time spent reading counts, not time the consumer keeps the stream waiting.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self.spent = 0.0
        self.mark = time.monotonic()

    def succeeded(self) -> None:
        self.failures, self.spent = 0, 0.0

    def resume(self) -> None:
        self.mark = time.monotonic()

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        self.spent, self.mark = self.spent + now - self.mark, now
        self.failures += 1
        if self.failures >= MAX_FAILURES_IN_A_ROW or self.spent >= MAX_SECONDS_WITHOUT_SAMPLE:
            raise UserError(
                f"no readable sample in {self.what}: {self.failures} unreadable shard(s) in a "
                f"row over {self.spent:.0f} s (last: {reason})"
            )


class _ReadShards:
    """Pipeline stage: shard URLs -> sample dicts (member bytes by extension), bounded."""

    def __init__(self, shards: ShardSet) -> None:
        self.what = _name(shards)
        self.record = shards.record

    def __call__(self, sources: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
        progress = _Progress(self.what)
        for source in sources:
            url = source["url"]
            read = 0
            try:
                for sample in _tar_samples(url, self.record):
                    read += 1
                    progress.succeeded()
                    yield sample
                    progress.resume()
            except Exception as err:  # noqa: BLE001 - any failure while reading: a bad shard
                reason = _reason(err)
            else:
                if read:
                    continue
                reason = "no samples in it"
            if self.record.mark_failed(_slot(url)):
                log.warning("skipping unreadable shard %s: %s", url, reason)
            progress.failed(f"{url}: {reason}")


def _tar_samples(url: str, record: ReadRecord) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard: members grouped by key (the name up to its first dot).

    Members larger than :data:`MAX_MEMBER_BYTES` are left out unread, with a warning. A local
    file is opened for random access, so that skipping a member is a seek, not a read of every
    byte it declares; a stream (a URL) cannot jump, so there the rest of the shard is left out
    too (a header declaring gigabytes is far likelier corrupt than an image).
    """
    with _open_location(url) as stream:
        seekable = stream.seekable()
        with tarfile.open(fileobj=stream, mode="r:*" if seekable else "r|*") as tar:
            yield from _tar_members(tar, url, record, seekable=seekable)


def _tar_members(
    tar: tarfile.TarFile, url: str, record: ReadRecord, *, seekable: bool
) -> Iterator[dict[str, Any]]:
    """The samples of an open tar shard (see :func:`_tar_samples`)."""
    sample: dict[str, Any] | None = None
    for member in tar:
        folder, _, base = member.name.rpartition("/")
        stem, dot, extension = base.partition(".")
        if not member.isfile() or not dot or not stem:
            continue
        key = f"{folder}/{stem}" if folder else stem
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        if member.size > MAX_MEMBER_BYTES:
            if record.mark_failed(_slot(f"{url}:{member.name}")):
                log.warning(
                    "skipping member %s of %s: it declares %d bytes, more than "
                    "MAX_MEMBER_BYTES = %d",
                    member.name,
                    url,
                    member.size,
                    MAX_MEMBER_BYTES,
                )
            if not seekable:
                break
            continue
        handle = tar.extractfile(member)
        if handle is not None:
            sample[extension.lower()] = handle.read()
    if sample is not None:
        yield sample


def _slot(name: str) -> int:
    """The flag of ``name`` in a :class:`ReadRecord` of :data:`RECORD_SLOTS` flags."""
    return zlib.crc32(name.encode("utf-8", "replace"))


def _name(shards: ShardSet) -> str:
    """How messages name a shard set: its index, else its first shard."""
    return shards.source or f"the shard set of {shards.urls[0]}"


class _DecodeTwoCrops:
    """Sample dict -> ``(two crops [2, C, S, S] or None, sample name)``, in a worker.

    An unreadable sample is named in a warning the first time any worker meets it.
    """

    def __init__(self, augment: AugmentConfig, record: ReadRecord) -> None:
        self.crops = TwoCrops(augment)
        self.record = record

    def __call__(self, sample: dict[str, Any]) -> tuple[Tensor | None, str]:
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        data = next((sample[key] for key in IMAGE_KEYS if key in sample), None)
        if data is None:
            if self.record.mark_failed(_slot(name)):
                log.warning("skipping sample %s: no image in it", name)
            return None, name
        image = read_image(io.BytesIO(data), name=name, record=self.record, slot=_slot(name))
        return (self.crops(image) if image is not None else None), name


def _stack_crops(batch: list[tuple[Tensor | None, str]]) -> tuple[Tensor, list[str]]:
    """Collate in the worker: the readable crops, and the names of the unreadable samples."""
    crops = [crop for crop, _ in batch if crop is not None]
    failed = [name for crop, name in batch if crop is None]
    return (stack_images(crops) if crops else torch.zeros(0, dtype=torch.uint8)), failed


def _require_images(what: str, samples: Iterable[Any]) -> Iterator[Any]:
    """Pipeline stage: pass decoded samples on; fail after too many unreadable ones in a row."""
    failures = 0
    for sample in samples:
        failures = failures + 1 if sample[0] is None else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise UserError(f"no readable image in {what}: {failures} unreadable samples in a row")
        yield sample


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

    ``crops`` is ``[b, 2, C, S, S]`` (two random resized crops per image, as for image
    files), with ``b = batch_size`` less the unreadable samples; ``skipped`` counts those
    failing for the first time in this run (a sample drawn again is not counted again). A
    resumed epoch (``start > 0``) continues with the right number of steps, from a stream
    seeded with ``start`` too (streams cannot seek: the remaining samples differ from those an
    uninterrupted run would have read).
    """
    wds = require("webdataset", "shards", "to stream shards")
    stream_seed = derive_seed(seed, epoch, start)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(
            shards.urls,
            seed=stream_seed,
            worker_seed=functools.partial(_worker_seed, rank),
            deterministic=True,
        ),
        _ReadShards(shards),
        # the same buffer seed everywhere is harmless: each worker shuffles different shards
        wds.shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER // 4, seed=stream_seed),
        wds.map(_DecodeTwoCrops(augment, shards.record)),
        functools.partial(_require_images, _name(shards)),
        wds.batched(batch_size, collation_fn=_stack_crops, partial=False),
    )
    loader = DataLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(derive_seed(stream_seed, rank)),
        worker_init_fn=ignore_stop_signals,
    )
    try:
        for crops, failed in itertools.islice(loader, max(0, steps - start)):
            new = set(failed) - shards.counted
            shards.counted.update(new)
            yield crops, len(new)
    except UserError as err:
        raise _from_worker(err) from None


def _from_worker(err: UserError) -> UserError:
    """The original one-line message of a UserError re-raised by a DataLoader worker."""
    lines = str(err).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught UserError"):
        marker = "UserError: "
        for line in reversed(lines):
            if marker in line:
                return UserError(line.split(marker, 1)[1])
    return err


def _worker_seed(rank: int) -> int:
    """Distinct shard-sampling seed of each loader worker of each process."""
    info = torch.utils.data.get_worker_info()
    return rank * 1000 + (info.id if info is not None else 0)
