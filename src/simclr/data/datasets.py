"""Datasets of images: image folders, CIFAR, numpy arrays and the built-in digits.

Every dataset yields ``(image, label)`` with ``image`` a ``[C, H, W]`` tensor and ``label`` an
int (``-1`` when unlabelled). Pixels keep the precision of the data, on one of two scales:

* uint8, 0-255, for 8-bit files and arrays (JPEGs, ordinary PNGs and TIFFs, CIFAR): the fast
  path, unchanged by everything below;
* float32 on the [0, 1] scale for higher bit depths, never quantised to 8 bits: integers are
  divided by the largest value of their type (16-bit PNG and TIFF values by 65535), floats are
  kept as they are. Floats (or signed integers) outside [0, 1] are kept too, but the views'
  colour operations clip to [0, 1], so scale such data first: one warning per dataset names
  the first such file. A 32-bit integer image as PIL reads it (mode ``I``, PIL's container
  for some 16-bit files) holds 8-bit values when within 0-255, 16-bit ones when within
  0-65535, and is otherwise stretched from its own minimum and maximum to [0, 1] (with the
  warning). An image with NaN or infinite values is unreadable.

Channels are the same for every image of a dataset (:attr:`ImageDataset.channels`):

* files that PIL decodes exactly become RGB (grey and palette images, CMYK; an alpha channel
  is dropped), so C = 3; 16-bit colour PNGs (which PIL would cut to 8 bits) are decoded by
  torchvision, also as RGB;
* TIFF files PIL cannot decode exactly (several pages, 2 or 4+ samples per pixel, colour above
  8 bits) are read with ``tifffile`` (the ``tiff`` extra): every axis but height and width
  (pages, channels, samples, z-slices) becomes a channel, in the file's order, alpha included;
* numpy arrays ``(N, H, W, C)`` or ``(N, C, S, S)`` keep their C channels;
* a single channel (grey files, ``(N, H, W)`` arrays) is repeated to RGB, so grey and colour
  data share the RGB encoder.

A folder whose images have different channel counts is a one-line error naming an example file
of each count. The counts come from the headers of its TIFF files, the only files that can have
C != 3, so a folder without TIFFs costs nothing more to open.

Two kinds exist, chosen by :func:`build_dataset`:

* :class:`TensorImages` holds every image decoded once in one ``[N, C, S, S]`` tensor (uint8,
  or float32 when any image has a high bit depth). Small images (up to 64 px: CIFAR, digits,
  thumbnails, microscopy tiles) are kept this way, so an epoch never decodes a file again and
  batches are cut by indexing.
* :class:`FileImages` decodes files on demand in loader workers, for photographs of any size.

Hostile or broken files cost a warning, never a crash or silent damage (:func:`read_image`):

* a file that does not decode (any error of the decoder) is skipped, named in a warning the
  first time it fails in a run, and counted once (:class:`ReadRecord`);
* an image declaring more than :data:`MAX_IMAGE_PIXELS` pixels is skipped the same way before
  any pixel is decoded (a decompression bomb: a small PNG can declare 30,000 x 30,000 pixels).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader

from simclr.augment.functional import to_float
from simclr.augment.loader import eval_resize
from simclr.data.folders import scan_class_folders
from simclr.data.items import Items, check_split
from simclr.data.items import require_labels as require_labels
from simclr.errors import UserError, first_line, require
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
TIFF_SUFFIXES = (".tif", ".tiff")
"""The only files whose images can have another channel count than 3 (read with tifffile)."""
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
    whether the warning about values outside [0, 1] (see the module docstring) was given.

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

    def first_note(self) -> bool:
        """Record an unusual value range; True the first time (the warning is given once)."""
        first = not bool(self.flags[-1])
        self.flags[-1] = True
        return first


class ImageDataset(Items):
    """Images with labels, class names and names (file paths, or synthetic names for arrays)."""

    channels: int = 3
    """Channels of every image (3 for RGB; see the module docstring)."""


class TensorImages(ImageDataset):
    """Images held in memory as one tensor: uint8, or float32 on the [0, 1] scale.

    Shape:
        ``images``: ``[N, C, S, S]``; ``labels``: ``[N]`` int64.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, classes: Sequence[str], names: Sequence[str]
    ) -> None:
        super().__init__(labels, classes, names)
        self.images = images
        self.channels = int(images.shape[1]) if images.ndim == 4 else 3

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
    shared with every copy made by :meth:`with_transform`). ``channels`` is what the files'
    headers say (:func:`scan_folder`).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Tensor,
        classes: Sequence[str],
        transform: Callable[[Tensor], Tensor] | None = None,
        record: ReadRecord | None = None,
        *,
        channels: int = 3,
    ) -> None:
        super().__init__(labels, classes, paths)
        self.transform = transform
        self.record = ReadRecord(len(paths)) if record is None else record
        self.channels = channels

    def with_transform(self, transform: Callable[[Tensor], Tensor] | None) -> FileImages:
        """The same files with another per-image transform (run in the loader workers)."""
        return FileImages(
            self.names, self.labels, self.classes, transform, self.record, channels=self.channels
        )

    def subset(self, index: Tensor) -> FileImages:
        """The files at ``index`` (int64 positions), in that order, with this transform."""
        return FileImages(
            self._subset_names(index),
            self.labels[index],
            self.classes,
            self.transform,
            channels=self.channels,
        )

    def __getitem__(self, index: int) -> tuple[Tensor | None, int]:
        if self.record.failed(index):
            return None, REPORTED
        image = read_image(self.names[index], record=self.record, slot=index)
        if image is not None and self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def display_channels(images: Tensor) -> Tensor:
    """Three channels to show of ``[..., C, H, W]`` images, whatever C they have.

    RGB stays as it is and grey is repeated; of more channels (multispectral, RGB + depth) the
    first three are shown as red, green and blue; of two, their mean in grey.
    """
    channels = images.shape[-3]
    if channels == 3:
        return images
    if channels == 2:
        images = images.float().mean(dim=-3, keepdim=True).to(images.dtype)
    if images.shape[-3] == 1:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    return images[..., :3, :, :]


def read_image(
    source: str | BinaryIO,
    *,
    name: str | None = None,
    record: ReadRecord | None = None,
    slot: int = 0,
) -> Tensor | None:
    """Decode a file (path or open binary stream) to a ``[C, H, W]`` tensor.

    uint8 RGB for 8-bit files; float32 on the [0, 1] scale for higher bit depths; C channels
    for the TIFFs read with ``tifffile`` (see the module docstring). Returns ``None`` if it is
    unreadable, with a warning naming ``name`` (default: the path), unless ``record`` says that
    ``slot`` failed before. Values outside [0, 1] are kept, with one warning per ``record``
    (each time without one).

    Raises:
        UserError: the file needs ``tifffile`` and it is not installed.
    """
    shown = name or str(source)
    try:
        array, note = decode_image(source)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a decoder raises, the file is unreadable
        if record is None or record.mark_failed(slot):
            reason = "not an image PIL reads" if isinstance(err, UnidentifiedImageError) else None
            log.warning("skipping unreadable image %s: %s", shown, reason or first_line(err)[:200])
        return None
    if note is not None and (record is None or record.first_note()):
        log.warning(
            "image %s holds %s (said once per dataset: later files like it are not named)",
            shown,
            note,
        )
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def decode_image(source: str | BinaryIO) -> tuple[np.ndarray, str | None]:
    """Pixels as ``[H, W, C]`` (uint8, or float32 on the [0, 1] scale) and a note or None.

    The note says how unusual values were treated (floats outside [0, 1], a stretched 32-bit
    range); see the module docstring for the rules.

    Raises:
        ValueError: too many pixels (:data:`MAX_IMAGE_PIXELS`) or non-finite values; and
            whatever the decoder raises for a broken file.
        UserError: a TIFF that needs ``tifffile``, which is not installed.
    """
    with warnings.catch_warnings():
        # PIL warns about corrupt metadata and large images: the pixel limit is checked below,
        # and a file that decodes despite odd metadata is read
        warnings.simplefilter("ignore")
        try:
            img = Image.open(source)
        except UnidentifiedImageError:
            if _starts_like_tiff(source):  # a TIFF layout PIL does not know (planar samples...)
                return _tiff_pixels(source)
            raise
        with img:
            if img.format == "TIFF" and not _pil_reads_tiff(img):
                return _tiff_pixels(source)
            if img.format == "PNG" and _is_deep_colour_png(img):
                _check_pixels(*img.size)
                return _png16_pixels(source), None
            return _decoded(img)


def probe_image(path: str) -> tuple[int, int] | None:
    """Channels and longest side of an image file, from its header; ``None`` if unreadable.

    Only the header is read (the TIFF pages' descriptions, not their pixels). The channels are
    those :func:`read_image` gives.

    Raises:
        UserError: a TIFF that needs ``tifffile``, which is not installed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img = Image.open(path)
            except UnidentifiedImageError:
                if not _starts_like_tiff(path):
                    return None
                channels, height, width = _tiff_layout(path)
                return channels, max(height, width)
            with img:
                if img.format == "TIFF" and not _pil_reads_tiff(img):
                    channels, height, width = _tiff_layout(path)
                    return channels, max(height, width)
                return 3, max(img.size)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - unreadable files are reported when decoded
        return None


TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
"""First bytes of classic and big TIFF files, little and big endian."""


def _starts_like_tiff(source: str | BinaryIO) -> bool:
    try:
        if isinstance(source, str):
            with open(source, "rb") as handle:
                head = handle.read(4)
        else:
            source.seek(0)
            head = source.read(4)
            source.seek(0)
    except OSError:
        return False
    return head in TIFF_SIGNATURES


def _pil_reads_tiff(img: Image.Image) -> bool:
    """Whether PIL decodes this TIFF exactly: one page of grey, or 8-bit RGB or CMYK."""
    if getattr(img, "n_frames", 1) != 1:
        return False
    tags = getattr(img, "tag_v2", {})
    samples = int(tags.get(277, 1))  # SamplesPerPixel
    bits = tags.get(258, (8,))  # BitsPerSample
    bits = tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)
    if samples == 1:
        return all(b in (1, 8, 16, 32) for b in bits)
    colour = (samples == 3 and img.mode in ("RGB", "YCbCr")) or (
        samples == 4 and img.mode == "CMYK"
    )
    return colour and all(b == 8 for b in bits)


def _tiff_module() -> ModuleType:
    return require("tifffile", "tiff", "to read multi-channel, multi-page or 16-bit colour TIFFs")


def _tiff_axes(axes: str, shape: tuple[int, ...]) -> tuple[list[int], int, int, int]:
    """The order putting height and width last, and (channels, height, width) of a series."""
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"its first image series has no height and width (axes {axes})")
    y, x = axes.index("Y"), axes.index("X")
    rest = [i for i in range(len(axes)) if i not in (y, x)]
    channels = int(np.prod([shape[i] for i in rest], dtype=np.int64)) if rest else 1
    return [*rest, y, x], channels, int(shape[y]), int(shape[x])


@contextmanager
def _tiff_series(source: str | BinaryIO) -> Iterator[tuple[Any, tuple[list[int], int, int, int]]]:
    """The first series of a TIFF opened with tifffile, and its :func:`_tiff_axes` layout."""
    tifffile = _tiff_module()
    if not isinstance(source, str):
        source.seek(0)
    with tifffile.TiffFile(source) as tif:
        series = tif.series[0]
        yield series, _tiff_axes(series.axes, tuple(series.shape))


def _tiff_layout(source: str | BinaryIO) -> tuple[int, int, int]:
    """(channels, height, width) of a TIFF read with tifffile, from the header only."""
    with _tiff_series(source) as (_, (_, channels, height, width)):
        return (3 if channels == 1 else channels), height, width


def _tiff_pixels(source: str | BinaryIO) -> tuple[np.ndarray, str | None]:
    """:func:`decode_image` of a TIFF with tifffile: every axis but Y and X is a channel."""
    with _tiff_series(source) as (series, (order, channels, height, width)):
        _check_pixels(width, height)
        pixels = np.asarray(series.asarray())
    planes = pixels.transpose(order).reshape(channels, height, width)
    scaled, note = unit_scale(planes)
    if channels == 1:
        scaled = np.repeat(scaled, 3, axis=0)
    return np.ascontiguousarray(scaled.transpose(1, 2, 0)), note


def _is_deep_colour_png(img: Image.Image) -> bool:
    """A 16-bit colour (or grey with alpha) PNG, which PIL would reduce to 8 bits."""
    tiles = getattr(img, "tile", None)  # an ImageFile's attribute, before the pixels are read
    if img.mode not in ("RGB", "RGBA", "LA") or not tiles:
        return False
    return "16" in str(tiles[0][3])  # the raw mode, such as "RGB;16B"


def _png16_pixels(source: str | BinaryIO) -> np.ndarray:
    """A 16-bit colour PNG as float32 ``[H, W, 3]`` RGB on the [0, 1] scale (alpha dropped)."""
    from torchvision.io import ImageReadMode, decode_png

    if isinstance(source, str):
        with open(source, "rb") as handle:
            data = handle.read()
    else:
        source.seek(0)
        data = source.read()
    decoded = decode_png(
        torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED
    )
    planes = decoded.to(torch.float32).div_(65535)
    if planes.shape[0] < 3:  # grey with alpha
        planes = planes[:1].expand(3, -1, -1)
    return np.ascontiguousarray(planes[:3].permute(1, 2, 0).numpy())


def _check_pixels(width: int, height: int) -> None:
    """Refuse an image declaring more than :data:`MAX_IMAGE_PIXELS` pixels."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"it declares {width} x {height} pixels, more than MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS:,} (a decompression bomb?)"
        )


def _decoded(img: Image.Image) -> tuple[np.ndarray, str | None]:
    """:func:`decode_image` of an image PIL decodes exactly: RGB, uint8 or float32."""
    _check_pixels(*img.size)
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        grey, note = _grey_unit(np.asarray(img), img.mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)), note
    return np.array(img.convert("RGB"), dtype=np.uint8), None


def _grey_unit(values: np.ndarray, mode: str) -> tuple[np.ndarray, str | None]:
    """One channel of 16-bit, 32-bit integer or float pixels (the module's rules)."""
    if mode != "I":
        return unit_scale(values)
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 255:
        return values.astype(np.uint8), None  # 8-bit values in a wider type: nothing is lost
    if low >= 0 and high <= 65535:
        return (values / 65535).astype(np.float32), None  # 16-bit values
    span = high - low
    wide = values.astype(np.float64)
    scaled = (wide - low) / span if span > 0 else np.zeros_like(wide)
    note = f"32-bit integer values from {low} to {high} (stretched from that range to [0, 1])"
    return scaled.astype(np.float32), note


def unit_scale(values: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Pixels on the scale of the views: uint8 as it is, float32 on the [0, 1] scale otherwise.

    Unsigned and signed integers are divided by their type's largest value (uint16 by 65535),
    booleans become 0 and 255, floats are kept as they are. Returns a note when values fall
    outside [0, 1] (floats, negative integers): they are kept, and the views' colour operations
    will clip them.

    Raises:
        ValueError: NaN or infinite values, or a type that is not a number.
    """
    if values.dtype == np.uint8:
        return values, None
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * np.uint8(255), None
    if np.issubdtype(values.dtype, np.integer):
        scaled = (values / float(np.iinfo(values.dtype).max)).astype(np.float32)
    elif np.issubdtype(values.dtype, np.floating):
        scaled = values.astype(np.float32)
        if not np.isfinite(scaled).all():
            raise ValueError("it holds NaN or infinite pixel values")
    else:
        raise ValueError(f"pixels of type {values.dtype} are not numbers")
    low, high = (float(scaled.min()), float(scaled.max())) if scaled.size else (0.0, 1.0)
    if low >= 0 and high <= 1:
        return scaled, None
    kind = "floating-point" if np.issubdtype(values.dtype, np.floating) else "negative integer"
    note = (
        f"{kind} values from {low:g} to {high:g} on the [0, 1] scale: kept as they are, but the "
        "views' colour operations clip to [0, 1] (scale the data to [0, 1] first)"
    )
    return scaled, note


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
            images (see :func:`array_dataset`; an ``.npz`` may hold ``images`` and ``labels``), a
            torchvision CIFAR-10/100 root (holding ``cifar-10-batches-py`` or
            ``cifar-100-python``), or an image folder: class subfolders give labels, images
            directly in the folder make it an unlabelled set.
        split: ``train`` or ``test`` for datasets that carry both (digits, CIFAR).
        size: Side of the square images kept in memory.
        in_memory: ``auto`` (small images only), ``always`` or ``never``.
        num_workers: Processes used to decode files.

    Raises:
        UserError: the path is missing, has no images, is not a format we read, or mixes
            channel counts.
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
    """List the images of a folder: class subfolders (labelled) or a flat folder (unlabelled).

    Raises:
        UserError: no images, or images with different channel counts
            (:func:`folder_channels`).
    """
    paths, labels, classes = scan_class_folders(root, _is_image)
    if not paths:
        raise UserError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    channels = folder_channels(paths, str(root))
    return FileImages(paths, torch.tensor(labels, dtype=torch.long), classes, channels=channels)


def folder_channels(paths: Sequence[str], where: str) -> int:
    """The number of channels every image in ``paths`` has, from the headers of the TIFFs.

    Only TIFF files can have another count than 3 (see the module docstring), so only their
    headers are read, and a folder of JPEGs or PNGs costs nothing here. Unreadable files are
    left to the decoder to report.

    Raises:
        UserError: the images have different counts (one line naming an example file of each
            count and ``where`` they are), or a TIFF needs ``tifffile``, which is missing.
    """
    examples: dict[int, str] = {}
    for path in paths:
        if path.lower().endswith(TIFF_SUFFIXES):
            probed = probe_image(path)
            if probed is None:
                continue
            examples.setdefault(probed[0], path)
        elif 3 not in examples:
            examples[3] = path
    if len(examples) > 1:
        counts = sorted(examples)
        named = [f"{count} channels (e.g. {examples[count]})" for count in counts]
        raise UserError(
            f"{where} mixes images with {', '.join(named[:-1])} and {named[-1]}; every image of "
            "a dataset needs the same number of channels"
        )
    return next(iter(examples), 3)


def stack_images(images: Sequence[Tensor]) -> Tensor:
    """Stack images (or pairs of crops) into one batch: uint8, or float32 when any is float.

    8-bit images are divided by 255 when they join float ones (a folder of JPEGs and 16-bit
    PNGs); the channels (dimension -3) must agree.

    Raises:
        UserError: different channel counts.
    """
    counts = sorted({int(image.shape[-3]) for image in images})
    if len(counts) > 1:
        raise UserError(
            f"a batch mixes images with {' and '.join(map(str, counts))} channels; every image "
            "of a dataset needs the same number of channels"
        )
    if any(image.is_floating_point() for image in images):
        images = [to_float(image, copy=False) for image in images]
    return torch.stack(list(images))


def decode_to_memory(files: FileImages, *, size: int, num_workers: int = 2) -> TensorImages:
    """Decode every file once into a ``[N, C, size, size]`` tensor, skipping bad files.

    The tensor is uint8 when every image is, float32 on the [0, 1] scale otherwise.
    """
    images, kept = [], []
    for batch, index in decoded_batches(files, size=size, num_workers=num_workers):
        images.append(batch)
        kept.append(index)
    if not kept:
        raise UserError(f"none of the {len(files)} image files could be read")
    if any(batch.is_floating_point() for batch in images):
        images = [to_float(batch, copy=False) for batch in images]
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
        images ``[b, C, size, size]`` (uint8, or float32 when any image of the batch is),
        indices int64 ``[b]`` (positions in ``files``).
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
    """Wrap numpy images ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, S, S)`` for training.

    uint8 images stay uint8; other numbers follow :func:`unit_scale` (uint16 divided by
    65535, floats kept as they are). One channel is repeated to RGB; any other count is kept
    (four channels are four channels, not RGBA). A 4-D array is channels-first ``(N, C, S, S)``
    when its last two axes are equal and its second differs from them (square images, as
    microscopy and satellite tiles usually are), else channels-last ``(N, H, W, C)``.

    Images whose side differs from ``size`` are resized as for evaluation (shorter side, centre
    crop). ``labels`` are class indices; ``classes`` optionally names them.

    Raises:
        UserError: not a non-empty 3-D or 4-D array of numbers, or NaN or infinite values.
    """
    numeric = np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_
    if not numeric or images.ndim not in (3, 4) or len(images) == 0:
        raise UserError(
            "image arrays must be non-empty numbers (N, H, W), (N, H, W, C) or (N, C, S, S); "
            f"got {images.dtype} {images.shape}"
        )
    try:
        scaled, note = unit_scale(images)
    except ValueError as err:
        raise UserError(f"cannot use the image array: {err}") from None
    if note is not None:
        log.warning("the image array holds %s", note)
    if scaled.ndim == 3:
        planes = scaled[:, None]
    elif scaled.shape[2] == scaled.shape[3] != scaled.shape[1]:
        planes = scaled  # channels first
    else:
        planes = scaled.transpose(0, 3, 1, 2)
    tensor = torch.from_numpy(np.ascontiguousarray(planes))
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
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
        """Resize one ``[C, H, W]`` image to ``[C, size, size]`` (same dtype)."""
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
    return stack_images(images), skipped


def _stack_readable(batch: list[tuple[Tensor | None, int]]) -> tuple[Tensor, Tensor]:
    """Collate in the worker: one tensor of the readable images and their positions."""
    positions = [i for i, (image, _) in enumerate(batch) if image is not None]
    if not positions:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    stacked = stack_images([batch[i][0] for i in positions])  # type: ignore[misc]
    return stacked, torch.tensor(positions, dtype=torch.long)


def _split_indices(order: Tensor, cut: int, split: str) -> Tensor:
    check_split(split)
    return order[:cut] if split == "train" else order[cut:]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _looks_small(paths: Sequence[str], probe: int = 16) -> bool:
    """Whether the first few readable images are all at most ``SMALL_IMAGE_SIDE`` px."""
    sides = [probed[1] for probed in map(probe_image, paths[:probe]) if probed is not None]
    return bool(sides) and max(sides) <= SMALL_IMAGE_SIDE
