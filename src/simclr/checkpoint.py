"""Checkpoints: one dict of plain data, written atomically, read without unpickling code.

A checkpoint holds ``model`` (state dict of the unwrapped :class:`SimCLR`), ``optimizer``,
``scaler``, ``step``, ``epoch``, ``elapsed_s``, ``seconds_per_step``, ``world_size``, ``config``
(a plain dict) and ``schema``. No random state is needed: the data order is a function of
(seed, epoch) and the views of (seed, step, rank). It is written to a temporary file in the
same folder, flushed to disk, then renamed over the target, so a crash leaves either the old file
or the new one, never half of one. It is read with ``torch.load(weights_only=True)``, which
refuses pickled code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from simclr.errors import UserError, first_line

SCHEMA = 1
LATEST = "latest.pt"


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save({**state, "schema": SCHEMA}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint file or a run folder's latest checkpoint, safely (``weights_only``).

    Raises:
        UserError: missing, truncated, foreign or unsafe files.
    """
    path = resolve_checkpoint(Path(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not a usable checkpoint"
        detail = f"{type(err).__name__}: {first_line(err)}"
        raise UserError(
            f"cannot read checkpoint {path}: not a complete torch checkpoint ({detail[:120]})"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path} is not a simclr checkpoint")
    if state.get("schema") != SCHEMA:
        raise UserError(f"{path} has checkpoint schema {state.get('schema')}, expected {SCHEMA}")
    return state


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or the latest checkpoint inside a run folder."""
    if path.is_dir():
        path = path / "checkpoints" / LATEST
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint (``RUN/checkpoints/x.pt`` -> ``RUN``), else its folder."""
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def file_sha256(path: Path) -> str:
    """SHA-256 of a file: the identity of a checkpoint in every reported number."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
