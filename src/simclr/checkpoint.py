"""Checkpoints: one dict of plain data, written atomically, read without unpickling code.

A checkpoint holds ``model`` (state dict of the unwrapped :class:`SimCLR`), ``optimizer``,
``scaler``, ``step``, ``epoch``, ``elapsed_s``, ``seconds_per_step``, ``world_size``, ``config``
(a plain dict) and ``schema``. No random state is needed: the data order is a function of
(seed, epoch) and the views of (seed, step, rank). It is written to a temporary file in the
same folder, flushed to disk, then renamed over the target, so a crash leaves either the old file
or the new one, never half of one (:func:`write_atomic`, used for every file of a run). It is
read with ``torch.load(weights_only=True)``, which refuses pickled code, and its layout is
checked before anything uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from simclr.errors import UserError, first_line

SCHEMA = 1
LATEST = "latest.pt"
BEST = "best.pt"
"""The checkpoint of the best kNN during training (``eval.every``)."""
SNAPSHOT = "step-{step:08d}.pt"
"""Periodic snapshots kept besides ``latest.pt`` (``train.keep_checkpoints``)."""
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")
"""Names of the temporary files :func:`write_atomic` writes (``.latest.pt.tmp1234``, the number
is the writer's process id) and of the folders :func:`write_atomic_via_path` writes in."""
STALE_AFTER_S = 10 * 60
"""A temporary untouched this long whose writer's process id runs nowhere here is stale."""
ABANDONED_AFTER_S = 24 * 3600
"""A temporary untouched this long is stale whatever its process id (ids are reused)."""


class WriteFailed(UserError):
    """A file could not be written (full disk, read-only storage...); nothing was replaced.

    ``reason`` is the operating system's (``No space left on device``), ``error`` the
    :class:`OSError` itself.
    """

    def __init__(
        self, path: Path, error: OSError, *, kept: str = "the file there, if any, is unchanged"
    ) -> None:
        self.path = path
        self.error = error
        self.reason = error.strerror or first_line(error)
        super().__init__(f"cannot write {path}: {self.reason} ({kept})")


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        WriteFailed: the file cannot be written; the previous one is intact, no temporary left.
    """
    return write_atomic(path, lambda handle: torch.save({**state, "schema": SCHEMA}, handle))


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_atomic` does."""
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, sync it to disk, rename it over ``path``.

    A crash leaves the old file or the new one, never half of one; a failed write (or an
    interruption) removes the temporary file. A ``kill -9`` in the middle leaves a temporary
    file ``.NAME.tmpPID``, which :func:`remove_temporaries` (a locked run folder) or
    :func:`remove_stale_temporaries` (a shared folder) clears.

    Raises:
        WriteFailed: the operating system refused a write (disk full, read-only, permissions).
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    recorder: _Recording | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            recorder = _Recording(handle)
            write(recorder)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = _os_error(err, None if recorder is None else recorder.error)
        if cause is None:
            raise
        raise WriteFailed(path, cause) from None
    except BaseException:  # an interruption: no temporary file stays behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def write_atomic_via_path(path: Path, save: Callable[[Path], object]) -> Path:
    """:func:`write_atomic` for libraries that only write to a path (ONNX, parquet).

    ``save`` gets ``path``'s name inside a temporary folder beside ``path``
    (``.NAME.tmpPID/NAME``); every file it writes there (the ONNX model and its external
    ``NAME.data``, say) is synced to disk and renamed into ``path``'s folder, ``NAME`` last. Each
    file is replaced whole; a failure or an interruption removes the temporary folder and
    replaces nothing.

    Raises:
        WriteFailed: the operating system refused a write (disk full, read-only, permissions).
    """
    staging = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(staging)  # left by a killed process that had the same id
        staging.mkdir()
        save(staging / path.name)
        if not (staging / path.name).is_file():
            raise RuntimeError(f"{save!r} wrote no file {path.name}")
        written = sorted(staging.iterdir(), key=lambda entry: entry.name == path.name)
        for entry in written:
            with open(entry, "rb+") as handle:
                os.fsync(handle.fileno())
        for entry in written:
            os.replace(entry, path.with_name(entry.name))
    except (OSError, RuntimeError) as err:
        cause = _os_error(err, None)
        if cause is None:
            raise
        raise WriteFailed(path, cause) from None
    finally:
        _remove(staging)
    return path


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files (and folders) a killed write left in ``folder``; their paths.

    Every temporary goes, so only call it on a folder that no other process writes to (a run
    folder, under its lock); elsewhere use :func:`remove_stale_temporaries`.
    """
    return [entry for entry in _temporaries(folder) if _remove(entry)]


def remove_stale_temporaries(folder: Path, *, now: float | None = None) -> list[Path]:
    """Delete the temporaries in ``folder`` that no write still in progress can own; their paths.

    For folders that processes share without a lock (``features/``, the user cache, an export
    folder): another evaluation may be writing there right now. A temporary
    ``.NAME.tmpPID`` is stale when nothing in it was modified for :data:`STALE_AFTER_S`
    (10 minutes) and no process ``PID`` runs on this machine, or when nothing was modified for
    :data:`ABANDONED_AFTER_S` (a day; process ids are reused, and on shared storage the writer
    may run on another machine). A write in progress keeps modifying its file, so it is never
    this old, and a temporary of a live process is left alone until then.
    """
    now = time.time() if now is None else now
    removed = []
    for entry in _temporaries(folder):
        age = now - _last_modified(entry)
        found = _TEMPORARY.match(entry.name)
        pid = int(found.group(1)) if found else 0
        stale = age >= ABANDONED_AFTER_S or (age >= STALE_AFTER_S and not _process_alive(pid))
        if stale and _remove(entry):
            removed.append(entry)
    return removed


def _temporaries(folder: Path) -> list[Path]:
    """The entries of ``folder`` named like a temporary of :func:`write_atomic`."""
    try:
        return sorted(e for e in folder.iterdir() if _TEMPORARY.match(e.name))
    except OSError:  # no folder, or one that cannot be listed
        return []


def _remove(entry: Path) -> bool:
    """Delete a file or a folder tree; whether it went (a missing one did not)."""
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except OSError:
        return False
    return True


def _last_modified(entry: Path) -> float:
    """The newest modification time of a file, or of a folder and the files directly in it."""
    try:
        times = [entry.stat().st_mtime]
        if entry.is_dir():
            times += [child.stat().st_mtime for child in entry.iterdir()]
    except OSError:
        return time.time()  # vanishing as we look: someone is at work there
    return max(times)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (``True`` when that cannot be told)."""
    if os.name == "nt":  # os.kill would terminate it; rely on the age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):  # not a process id at all
        return False
    except OSError:
        return True
    return True


class _Recording:
    """A binary file that remembers the :class:`OSError` of a failed write.

    ``torch.save`` reports a failed write as a ``RuntimeError`` of its zip writer; the reason
    (``No space left on device``) is the ``OSError`` kept here.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._handle.flush()


def _os_error(err: BaseException, recorded: OSError | None) -> OSError | None:
    """The :class:`OSError` behind ``err`` (itself, its cause or context, or a recorded one)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return recorded


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint file or a run folder's latest checkpoint, safely (``weights_only``).

    Raises:
        UserError: missing, truncated, foreign or unsafe files, and dicts without the layout of
            a simclr checkpoint (``model`` a dict of tensors, ``config`` a dict, ``step`` a
            whole number).
    """
    path = resolve_checkpoint(Path(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not a usable checkpoint"
        raise UserError(_unreadable(path, err)) from None
    problem = _layout_problem(state)
    if problem:
        raise UserError(f"not a simclr checkpoint: {path}: {problem}")
    if state.get("schema") != SCHEMA:
        raise UserError(f"{path} has checkpoint schema {state.get('schema')}, expected {SCHEMA}")
    return state  # type: ignore[no-any-return]


def check_resumable(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint that lacks what continuing its training needs.

    Raises:
        UserError: ``optimizer`` or ``scaler`` is not a dict, or ``elapsed_s`` not a number.
    """
    for key in ("optimizer", "scaler"):
        if not isinstance(state.get(key), dict):
            raise UserError(f"not a simclr checkpoint: {path}: {key!r} is missing or not a dict")
    elapsed = state.get("elapsed_s")
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)):
        raise UserError(f"not a simclr checkpoint: {path}: 'elapsed_s' is not a number")
    per_step = state.get("seconds_per_step")
    if per_step is not None and (
        isinstance(per_step, bool) or not isinstance(per_step, (int, float))
    ):
        raise UserError(f"not a simclr checkpoint: {path}: 'seconds_per_step' is not a number")


def _layout_problem(state: object) -> str | None:
    """What makes ``state`` not a simclr checkpoint, or ``None``."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    missing = [key for key in ("model", "config", "step") if key not in state]
    if missing:
        return f"no {', '.join(repr(key) for key in missing)} in it"
    model = state["model"]
    if not isinstance(model, dict) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in model.items()
    ):
        return f"'model' is a {type(model).__name__}, not a dict of named tensors"
    if not isinstance(state["config"], dict):
        return f"'config' is a {type(state['config']).__name__}, not a dict"
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' is {step!r}, not a whole number of steps"
    return None


def _unreadable(path: Path, err: Exception) -> str:
    """One line for a file ``torch.load`` refused: unsafe content said plainly, else the cause."""
    text = str(err)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:  # a reference to a function or class: pickled code
            return (
                f"refused to load {path}: it holds pickled code-bearing objects (such as "
                f"{found.group(1)}), which could run code when loaded; nothing in it was run "
                "(only tensors and plain data are read)"
            )
        after = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = f"unreadable pickle: {after[0].strip()}" if after else "unreadable pickle"
    else:
        detail = f"{type(err).__name__}: {first_line(err)}"
    if len(detail) > 120:
        detail = detail[:117] + "..."
    return f"cannot read checkpoint {path}: not a complete torch checkpoint ({detail})"


def load_weights(model: nn.Module, weights: Mapping[str, Tensor], source: str | Path) -> None:
    """Load a state dict into ``model``, or refuse it with one summary of what does not fit.

    Raises:
        UserError: "weights do not fit the model: N missing keys (...), M unexpected (...),
            K of different shape (...)".
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    reshaped = [
        f"{key}: saved {list(weights[key].shape)}, model {list(value.shape)}"
        for key, value in expected.items()
        if key in weights and weights[key].shape != value.shape
    ]
    parts = [
        _count(missing, "missing key"),
        _count(unexpected, "unexpected"),
        _count(reshaped, "of different shape", plural_s=False),
    ]
    problems = [part for part in parts if part]
    if problems:
        raise UserError(
            f"{source}: weights do not fit the model: {', '.join(problems)}; "
            "was it trained with another architecture (model.* settings)?"
        )
    model.load_state_dict(weights)


def _count(names: list[str], what: str, *, plural_s: bool = True) -> str:
    if not names:
        return ""
    label = f"{what}s" if plural_s and len(names) > 1 else what
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} {label} ({shown})"


def nonfinite_tensors(tensors: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity (one host sync per device).

    ``tensors`` is ``(name, value)`` pairs; values that are not floating-point tensors are
    skipped.
    """
    named = [
        (name, value)
        for name, value in tensors
        if isinstance(value, Tensor) and value.is_floating_point() and value.numel()
    ]
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, value) in enumerate(named):
        by_device.setdefault(value.device, []).append(i)
    bad = []
    for positions in by_device.values():
        finite = torch.stack([torch.isfinite(named[i][1]).all() for i in positions]).tolist()
        bad += [i for i, ok in zip(positions, finite, strict=True) if not ok]
    return [named[i][0] for i in sorted(bad)]


def state_tensors(state: object, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf of a nested dict/list (a state dict, an optimizer state), with a dotted name."""
    if isinstance(state, Mapping):
        return [
            pair for key, value in state.items() for pair in state_tensors(value, f"{prefix}{key}.")
        ]
    if isinstance(state, (list, tuple)):
        return [
            pair for i, value in enumerate(state) for pair in state_tensors(value, f"{prefix}{i}.")
        ]
    return [(prefix.rstrip("."), state)]


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, the latest checkpoint inside a run folder, or ``RUN:NAME``.

    ``RUN:best`` is the run's ``best.pt`` (the best kNN during training), ``RUN:latest`` its
    ``latest.pt`` and ``RUN:STEP`` (a number) its snapshot of that step.

    Raises:
        UserError: no such file (for ``RUN:best``, saying how ``best.pt`` is made).
    """
    if not path.exists() and ":" in path.name:
        name, _, which = str(path).rpartition(":")
        path = Path(name) / "checkpoints" / _checkpoint_name(which)
        if which == "best" and not path.is_file():
            raise UserError(
                f"{path} does not exist: best.pt is written by pretraining with --eval-every"
            )
    if path.is_dir():
        path = path / "checkpoints" / LATEST
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def _checkpoint_name(which: str) -> str:
    """The file name of ``best``, ``latest`` or a step number in ``RUN:which``."""
    if which in ("best", "latest"):
        return f"{which}.pt"
    if which.isdigit():
        return SNAPSHOT.format(step=int(which))
    raise UserError(f"unknown checkpoint {which!r} in RUN:{which}; use best, latest or a step")


def keep_snapshot(latest: Path, step: int, keep: int) -> Path:
    """Keep ``latest`` as ``step-<step>.pt``; remove all but the newest ``keep`` snapshots.

    The snapshot is a hard link where the file system allows (no copy).

    Raises:
        WriteFailed: the snapshot cannot be written (``latest`` is intact).
    """
    snapshot = latest.with_name(SNAPSHOT.format(step=step))
    try:
        snapshot.unlink(missing_ok=True)
        os.link(latest, snapshot)
    except OSError:
        write_atomic(snapshot, lambda handle: handle.write(latest.read_bytes()))
    for old in sorted(latest.parent.glob(SNAPSHOT.replace("{step:08d}", "*")))[:-keep]:
        old.unlink(missing_ok=True)
    return snapshot


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
