"""Small image files that are not 8-bit RGB, written on the fly: 16-bit PNGs, multi-channel TIFFs.

PIL cannot write 16-bit colour PNGs, so :func:`write_png16` encodes them itself (the PNG format
is a zlib stream of filtered rows; filter 0 leaves the rows as they are).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
"""Channels -> PNG colour type: grey, grey + alpha, RGB, RGBA."""


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """Write uint16 ``(H, W)`` or ``(H, W, C)`` pixels (C = 1..4) as a 16-bit PNG."""
    pixels = np.asarray(pixels, dtype=np.uint16)
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, PNG_COLOUR_TYPES[channels], 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def channel_stack(rng: np.random.Generator, channels: int, size: int, label: int) -> np.ndarray:
    """uint16 ``(C, S, S)``: each class has its own brightness, each channel its own pattern."""
    base = np.linspace(0, 1, size)[None, :, None] * np.arange(1, channels + 1)[:, None, None]
    noise = rng.random((channels, size, size))
    values = (0.2 * label + 0.3 * base / channels + 0.3 * noise) * 65535
    return np.clip(values, 0, 65535).astype(np.uint16)


def write_tiff_folder(
    root: Path, *, channels: int = 5, classes: int = 2, per_class: int = 6, size: int = 16
) -> Path:
    """Class subfolders of 16-bit ``channels``-page TIFF stacks (needs tifffile)."""
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            stack = channel_stack(rng, channels, size, label)
            tifffile.imwrite(folder / f"{i}.tif", stack, photometric="minisblack")
    return root
