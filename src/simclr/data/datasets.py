"""Datasets of images as uint8 tensors: image folders, CIFAR, numpy arrays and the built-in digits.

Every dataset yields ``(image, label)`` with ``image`` a uint8 ``[3, H, W]`` tensor (grey, RGBA,
CMYK and palette images are converted to RGB) and ``label`` an int (``-1`` when unlabelled).

Two kinds exist, chosen by :func:`build_dataset`:

* :class:`TensorImages` holds every image decoded once in one uint8 ``[N, 3, S, S]`` tensor. Small
  images (up to 64 px: CIFAR, digits, thumbnails) are kept this way, so an epoch never decodes a
  JPEG again and batches are cut by indexing.
* :class:`FileImages` decodes files on demand in loader workers, for photographs of any size.

Hostile or broken files cost a warning, never a crash or silent damage (:func:`read_image`):

* a file that does not decode (any error of the decoder) is skipped, named in a warning the
  first time it fails in a run, and counted once (:class:`ReadRecord`);
* an image declaring more than :data:`MAX_IMAGE_PIXELS` pixels is skipped the same way before
  any pixel is decoded (a decompression bomb: a small PNG can declare 30,000 x 30,000 pixels);
* high bit depths are scaled to 8 bits, not clipped: 16-bit values are divided by 257;
  32-bit integers within 0-255 are kept and within 0-65535 read as 16-bit; floats within [0, 1]
  are multiplied by 255; any other range is stretched from the image's own minimum and maximum
  to 0-255; an image with NaN or infinite values is unreadable. One warning per dataset names
  the first such file (precision is reduced: the views see 8 bits).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader

from simclr.augment.loader import eval_resize
from simclr.data.folders import scan_class_folders
from simclr.data.items import Items, check_split
from simclr.data.items import require_labels as require_labels
from simclr.errors import UserError, first_line
from simclr.runtime import ignore_stop_signals

log = logging.getLogger("simclr")

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
SMALL_IMAGE_SIDE = 64
"""Datasets whose images are at most this many pixels on a side are decoded once into memory."""
MAX_IMAGE_PIXELS = 89_478_485
"""Images declaring more pixels (width x height) than this are unreadable, never decoded.

PIL's default ``Image.MAX_IMAGE_PIXELS`` (``1024 * 1024 * 1024 // 4 // 3``, about 9,459 x 9,459,
a quarter of a GiB of RGB): PIL only warns up to twice that and raises beyond; here the limit
is the same for every file and costs a warning naming it.
"""
REPORTED = -2
"""Label of an unreadable item whose failure this run has already reported and counted.

Loaders drop it like any unreadable item; :func:`stack_valid` counts only first failures, so a
training summary counts distinct bad files, not their occurrences over the epochs.
"""


class ReadRecord:
    """Which items of a dataset failed to read in this run, seen by every loader worker.

    One flag per slot (an item's position, or a hash of a stream sample's name) in shared
    memory, so that every worker process of every epoch sees what the others found: a bad file
    is named in a warning and counted once per run, not once per epoch. One more flag records
    whether the reduced-precision warning (see the module docstring) was given.

    Args:
        slots: Number of flags (at least one).
    """

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.flags = torch.zeros(self.slots + 1, dtype=torch.bool).share_memory_()

    def failed(self, slot: int) -> bool:
        """Whether ``slot`` failed before in this run."""
        return bool(self.flags[slot % self.slots])

    def mark_failed(self, slot: int) -> bool:
        """Record a failure of ``slot``; True when it is the first."""
        first = not self.failed(slot)
        self.flags[slot % self.slots] = True
        return first

    def first_reduction(self) -> bool:
        """Record that precision was reduced; True the first time (the warning is given once)."""
        first = not bool(self.flags[-1])
        self.flags[-1] = True
        return first


class ImageDataset(Items):
    """Images with labels, class names and names (file paths, or synthetic names for arrays)."""


class TensorImages(ImageDataset):
    """Images held in memory as one uint8 tensor.

    Shape:
        ``images``: ``[N, 3, S, S]`` uint8; ``labels``: ``[N]`` int64.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, classes: Sequence[str], names: Sequence[str]
    ) -> None:
        super().__init__(labels, classes, names)
        self.images = images

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, index: Tensor) -> TensorImages:
        """The images at ``index`` (int64 positions), in that order."""
        return TensorImages(
            self.images[index], self.labels[index], self.classes, self._subset_names(index)
        )


class FileImages(ImageDataset):
    """Image files decoded on access; an unreadable file yields ``None``.

    The first failure of a file in a run gives one warning and ``(None, label)``; later reads
    of it return ``(None, REPORTED)`` without touching the file again (see :class:`ReadRecord`,
    shared with every copy made by :meth:`with_transform`).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Tensor,
        classes: Sequence[str],
        transform: Callable[[Tensor], Tensor] | None = None,
        record: ReadRecord | None = None,
    ) -> None:
        super().__init__(labels, classes, paths)
        self.transform = transform
        self.record = ReadRecord(len(paths)) if record is None else record

    def with_transform(self, transform: Callable[[Tensor], Tensor] | None) -> FileImages:
        """The same files with another per-image transform (run in the loader workers)."""
        return FileImages(self.names, self.labels, self.classes, transform, self.record)

    def subset(self, index: Tensor) -> FileImages:
        """The files at ``index`` (int64 positions), in that order, with this transform."""
        return FileImages(
            self._subset_names(index), self.labels[index], self.classes, self.transform
        )

    def __getitem__(self, index: int) -> tuple[Tensor | None, int]:
        if self.record.failed(index):
            return None, REPORTED
        image = read_image(self.names[index], record=self.record, slot=index)
        if image is not None and self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def read_image(
    source: str | BinaryIO,
    *,
    name: str | None = None,
    record: ReadRecord | None = None,
    slot: int = 0,
) -> Tensor | None:
    """Decode a file (path or open binary stream) to uint8 ``[3, H, W]`` RGB.

    Returns ``None`` if it is unreadable, with a warning naming ``name`` (default: the path),
    unless ``record`` says that ``slot`` failed before. High bit depths are scaled to 8 bits
    (see the module docstring), with one warning per ``record`` (each time without one).
    """
    shown = name or str(source)
    try:
        array, note = decode_image(source)
    except Exception as err:  # noqa: BLE001 - whatever a decoder raises, the file is unreadable
        if record is None or record.mark_failed(slot):
            reason = "not an image PIL reads" if isinstance(err, UnidentifiedImageError) else None
            log.warning("skipping unreadable image %s: %s", shown, reason or first_line(err)[:200])
        return None
    if note is not None and (record is None or record.first_reduction()):
        log.warning(
            "image %s holds %s; precision is reduced to 8 bits (said once per dataset: later "
            "files like it are not named)",
            shown,
            note,
        )
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def decode_image(source: str | BinaryIO) -> tuple[np.ndarray, str | None]:
    """Pixels as uint8 ``[H, W, 3]`` RGB, and how high-bit-depth values were scaled (or None).

    Raises:
        ValueError: too many pixels (:data:`MAX_IMAGE_PIXELS`) or non-finite values; and
            whatever the decoder raises for a broken file.
    """
    with warnings.catch_warnings():
        # PIL warns about corrupt metadata and large images: the pixel limit is checked below,
        # and a file that decodes despite odd metadata is read
        warnings.simplefilter("ignore")
        with Image.open(source) as img:
            array, note = _decoded(img)
    return array, note


def _decoded(img: Image.Image) -> tuple[np.ndarray, str | None]:
    """:func:`decode_image` of an open image."""
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"it declares {width} x {height} pixels, more than MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS:,} (a decompression bomb?)"
        )
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        grey, note = _to_eight_bits(np.asarray(img), img.mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)), note
    return np.array(img.convert("RGB"), dtype=np.uint8), None


def _to_eight_bits(values: np.ndarray, mode: str) -> tuple[np.ndarray, str | None]:
    """One channel of 16-bit, 32-bit integer or float pixels as uint8 (the module's rules)."""
    if not np.isfinite(values).all():
        raise ValueError("it holds NaN or infinite pixel values")
    wide = values.astype(np.float64)
    low, high = float(wide.min()), float(wide.max())
    if mode.startswith("I;16"):
        scaled, note = wide / 257, "16-bit values (divided by 257)"
    elif mode == "I" and low >= 0 and high <= 255:
        return wide.astype(np.uint8), None  # 8-bit values in a wider type: nothing is lost
    elif mode == "I" and low >= 0 and high <= 65535:
        scaled, note = wide / 257, "32-bit integer values within 0-65535 (read as 16-bit)"
    elif mode == "F" and low >= 0 and high <= 1:
        scaled, note = wide * 255, "floating-point values within [0, 1] (multiplied by 255)"
    else:
        kind = "32-bit integer" if mode == "I" else "floating-point"
        span = high - low
        scaled = (wide - low) * (255 / span) if span > 0 else np.zeros_like(wide)
        note = f"{kind} values from {low:g} to {high:g} (stretched from that range to 0-255)"
    return np.rint(scaled).clip(0, 255).astype(np.uint8), note


def build_dataset(
    spec: str,
    *,
    split: str = "train",
    size: int = 32,
    in_memory: str = "auto",
    num_workers: int = 2,
) -> ImageDataset:
    """Open the dataset named by ``spec``.

    Args:
        spec: ``digits`` (scikit-learn's 8x8 digits at ``size`` px), a ``.npy``/``.npz`` file of
            uint8 images ``(N, H, W[, C])`` (an ``.npz`` may hold ``images`` and ``labels``), a
            torchvision CIFAR-10/100 root (holding ``cifar-10-batches-py`` or
            ``cifar-100-python``), or an image folder: class subfolders give labels, images
            directly in the folder make it an unlabelled set.
        split: ``train`` or ``test`` for datasets that carry both (digits, CIFAR).
        size: Side of the square images kept in memory.
        in_memory: ``auto`` (small images only), ``always`` or ``never``.
        num_workers: Processes used to decode files.

    Raises:
        UserError: the path is missing, has no images, or is not a format we read.
    """
    if spec == "digits":
        return digits_dataset(split=split, size=size)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data path {spec} does not exist")
    if path.is_file():
        if path.suffix in (".npy", ".npz"):
            return array_file_dataset(path, size=size)
        raise UserError(f"data path {spec} is a file; expected a folder, .npy or .npz")
    cifar = _cifar_dataset(path, split=split, size=size)
    if cifar is not None:
        return cifar
    files = scan_folder(path)
    if in_memory == "never":
        return files
    if in_memory == "auto" and not _looks_small(files.names):
        return files
    return decode_to_memory(files, size=size, num_workers=num_workers)


def scan_folder(root: Path) -> FileImages:
    """List the images of a folder: class subfolders (labelled) or a flat folder (unlabelled)."""
    paths, labels, classes = scan_class_folders(root, _is_image)
    if not paths:
        raise UserError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return FileImages(paths, torch.tensor(labels, dtype=torch.long), classes)


def decode_to_memory(files: FileImages, *, size: int, num_workers: int = 2) -> TensorImages:
    """Decode every file once into a uint8 ``[N, 3, size, size]`` tensor, skipping bad files."""
    images, kept = [], []
    for batch, index in decoded_batches(files, size=size, num_workers=num_workers):
        images.append(batch)
        kept.append(index)
    if not kept:
        raise UserError(f"none of the {len(files)} image files could be read")
    index = torch.cat(kept)
    names = [files.names[i] for i in index.tolist()]
    return TensorImages(torch.cat(images), files.labels[index], files.classes, names)


def decoded_batches(
    files: FileImages,
    *,
    size: int,
    batch_size: int = 256,
    num_workers: int = 2,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[Tensor, Tensor]]:
    """Decode files in order with :class:`EvalResize`, in loader workers.

    Unreadable files are dropped; the yielded indices say which items each batch holds, and a
    warning at the end counts them. ``shard = (r, K)`` decodes only every K-th batch, from
    batch r on.

    Shape:
        images uint8 ``[b, 3, size, size]``, indices int64 ``[b]`` (positions in ``files``).
    """
    part, parts = shard
    starts = range(part * batch_size, len(files), parts * batch_size)
    batches = [torch.arange(start, min(start + batch_size, len(files))) for start in starts]
    loader = DataLoader(
        files.with_transform(EvalResize(size)),
        batch_sampler=[batch.tolist() for batch in batches],
        num_workers=num_workers,
        collate_fn=_stack_readable,
        worker_init_fn=ignore_stop_signals,
    )
    dropped = 0
    for batch, (images, positions) in zip(batches, loader, strict=True):
        dropped += len(batch) - len(positions)
        if len(positions):
            yield images, batch[positions]
    if dropped:
        total = sum(len(batch) for batch in batches)
        log.warning("skipped %d unreadable image file(s) of %d", dropped, total)


def digits_dataset(*, split: str = "train", size: int = 32) -> TensorImages:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), upscaled to ``size`` px, RGB.

    A fixed 80/20 split (seed 0, stratified by nothing but chance) gives ``train`` and ``test``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float() * (255.0 / 16.0)  # (N, 8, 8) in [0, 255]
    images = torch.nn.functional.interpolate(
        pixels[:, None], size=(size, size), mode="bilinear", align_corners=False
    )
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(order))
    chosen = _split_indices(order, cut, split)
    names = [f"digits/{i}" for i in chosen.tolist()]
    return TensorImages(images[chosen], labels[chosen], [str(c) for c in range(10)], names)


def array_dataset(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    size: int = 32,
    classes: Sequence[str] | None = None,
) -> TensorImages:
    """Wrap numpy images ``(N, H, W)`` or ``(N, H, W, C)`` uint8 (C = 1, 3 or 4) for training.

    Images whose side differs from ``size`` are resized as for evaluation (shorter side, centre
    crop). ``labels`` are class indices; ``classes`` optionally names them.
    """
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
        raise UserError(
            "image arrays must be non-empty uint8 (N, H, W[, C]); "
            f"got {images.dtype} {images.shape}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor[..., None] if tensor.ndim == 3 else tensor
    channels = tensor.shape[-1]
    if channels not in (1, 3, 4):
        raise UserError(f"image arrays need 1, 3 or 4 channels, got {channels}")
    tensor = tensor.permute(0, 3, 1, 2)[:, :3].expand(-1, 3, -1, -1)
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        tensor = torch.stack([eval_resize(img, size) for img in tensor])
    if labels is None:
        label_tensor = torch.full((len(tensor),), -1, dtype=torch.long)
        class_names: list[str] = []
    else:
        if len(labels) != len(images):
            raise UserError(f"{len(labels)} labels for {len(images)} images")
        label_tensor = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        num_classes = int(label_tensor.max()) + 1
        class_names = list(classes) if classes else [str(c) for c in range(num_classes)]
    names = [f"array/{i}" for i in range(len(tensor))]
    return TensorImages(tensor.contiguous(), label_tensor, class_names, names)


def array_file_dataset(path: Path, *, size: int) -> TensorImages:
    """Images from a ``.npy`` file, or an ``.npz`` with ``images`` and optional ``labels``."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if isinstance(loaded, np.ndarray):
        return array_dataset(loaded, size=size)
    with loaded:
        if "images" not in loaded:
            raise UserError(f"{path} must hold an array 'images' (and optionally 'labels')")
        labels = loaded.get("labels")
        return array_dataset(loaded["images"], labels, size=size)


def _cifar_dataset(root: Path, *, split: str, size: int) -> TensorImages | None:
    """Torchvision's CIFAR-10/100 on-disk format, or ``None`` when ``root`` is not one."""
    from torchvision.datasets import CIFAR10, CIFAR100

    for folder, cls in (("cifar-10-batches-py", CIFAR10), ("cifar-100-python", CIFAR100)):
        base = root.parent if root.name == folder else root
        if (base / folder).is_dir():
            try:
                data = cls(str(base), train=split == "train", download=False)
            except RuntimeError as err:
                raise UserError(f"{base / folder} is not a complete CIFAR copy: {err}") from None
            return array_dataset(
                data.data, np.asarray(data.targets), size=size, classes=data.classes
            )
    return None


class EvalResize:
    """Picklable evaluation preprocessing for loader workers: :func:`eval_resize` to ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Tensor) -> Tensor:
        """Resize one uint8 ``[3, H, W]`` image to ``[3, size, size]``."""
        if image.shape[-2:] == (self.size, self.size):
            return image
        return eval_resize(image, self.size)


def stack_valid(batch: list[tuple[Tensor | None, int]]) -> tuple[Tensor, int]:
    """Collate training crops: stack the readable images and count the unreadable ones.

    An item already counted in this run (label :data:`REPORTED`) is dropped but not counted.
    """
    images = [image for image, _ in batch if image is not None]
    skipped = sum(1 for image, label in batch if image is None and label != REPORTED)
    if not images:
        return torch.zeros(0, dtype=torch.uint8), skipped
    return torch.stack(images), skipped


def _stack_readable(batch: list[tuple[Tensor | None, int]]) -> tuple[Tensor, Tensor]:
    """Collate in the worker: one tensor of the readable images and their positions."""
    positions = [i for i, (image, _) in enumerate(batch) if image is not None]
    if not positions:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    stacked = torch.stack([batch[i][0] for i in positions])  # type: ignore[misc]
    return stacked, torch.tensor(positions, dtype=torch.long)


def _split_indices(order: Tensor, cut: int, split: str) -> Tensor:
    check_split(split)
    return order[:cut] if split == "train" else order[cut:]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _looks_small(paths: Sequence[str], probe: int = 16) -> bool:
    """Whether the first few readable images are all at most ``SMALL_IMAGE_SIDE`` px."""
    sides = []
    for path in paths[:probe]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    sides.append(max(img.size))
        except Exception:  # noqa: BLE001 - unreadable files are reported when decoded
            continue
    return bool(sides) and max(sides) <= SMALL_IMAGE_SIDE
