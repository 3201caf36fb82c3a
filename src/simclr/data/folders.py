"""Files of a folder tree, labelled by class subfolder (the ImageFolder convention).

Shared by the readers of image and audio folders: only which file names count differs.

Symbolic links are followed, but no folder is visited twice (folders are recognised by device
and inode, so a link back to a parent, or two links to one folder, cost one visit) and no file
is listed twice (a link or hard link to a file already listed is dropped): a tree with link loops
is read in a bounded time, and every file counts once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path


class _Visited:
    """The folders and files a scan has already listed, by ``(st_dev, st_ino)``."""

    def __init__(self) -> None:
        self.folders: set[tuple[int, int]] = set()
        self.files: set[tuple[int, int]] = set()

    def enter(self, folder: str) -> int | None:
        """Mark ``folder`` visited; its device, or ``None`` when seen before or unreadable."""
        key = _folder_key(folder)
        if key is None or key in self.folders:
            return None
        self.folders.add(key)
        return key[0]

    def first_time(self, entry: os.DirEntry[str], device: int) -> bool:
        """Whether ``entry`` (in a folder on ``device``) is a regular file not listed before.

        Pipes, sockets and devices are never listed (reading them could block). A broken link
        counts as new: the reader then reports it as unreadable.
        """
        if entry.is_symlink():
            try:
                info = os.stat(entry.path)
            except OSError:
                return True
            if not stat.S_ISREG(info.st_mode):
                return False
            key = (info.st_dev, info.st_ino)
        elif entry.is_file(follow_symlinks=False):
            key = (device, entry.inode())
        else:
            return False
        if key in self.files:
            return False
        self.files.add(key)
        return True


def walk_files(folder: Path, visited: _Visited | None = None) -> Iterator[str]:
    """Every visible file below ``folder``, lazily, in sorted walk order (top-down, depth first).

    Hidden folders (``.name``) are skipped, links followed, each folder and file visited once
    (see the module docstring); unreadable folders are passed over, as :func:`os.walk` does.
    """
    visited = _Visited() if visited is None else visited
    stack = [str(folder)]
    while stack:
        directory = stack.pop()
        device = visited.enter(directory)
        if device is None:
            continue
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            if entry.is_dir():
                if not entry.name.startswith("."):
                    subfolders.append(entry.path)
            elif visited.first_time(entry, device):
                yield entry.path
        stack.extend(reversed(subfolders))


def files_below(
    folder: Path, accept: Callable[[str], bool], visited: _Visited | None = None
) -> list[str]:
    """Accepted files (by name) anywhere below ``folder``, in sorted walk order.

    See :func:`walk_files`: hidden folders skipped, links followed, each folder and file once.
    """
    return [path for path in walk_files(folder, visited) if accept(os.path.basename(path))]


def scan_class_folders(
    root: Path, accept: Callable[[str], bool]
) -> tuple[list[str], list[int], list[str]]:
    """The accepted files below ``root``, their class indices and the class names.

    Accepted files directly in ``root`` make the whole folder unlabelled (every index ``-1``,
    no class names; the subfolders' files are listed too). Otherwise each subfolder holding
    accepted files at any depth is a class, numbered in sorted order of the names. Nothing
    accepted gives three empty lists: the caller says what it looked for.

    Every file is listed once, and a link from one class folder into another (or back into
    ``root``) is not followed: each class keeps its own files.
    """
    with os.scandir(root) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    visited = _Visited()
    device = visited.enter(str(root))
    direct = [e for e in entries if not e.is_dir() and accept(e.name)]
    subfolders = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if direct:
        everything = [e.path for e in direct if device is None or visited.first_time(e, device)]
        everything += [p for sub in subfolders for p in files_below(root / sub, accept, visited)]
        return everything, [-1] * len(everything), []
    keys = {sub: _folder_key(root / sub) for sub in subfolders}
    visited.folders |= {key for key in keys.values() if key is not None}
    paths: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    for sub in subfolders:
        own = keys[sub]
        if own is not None:
            visited.folders.discard(own)  # claimed by every class until its own turn
        found = files_below(root / sub, accept, visited)
        if found:
            labels += [len(classes)] * len(found)
            classes.append(sub)
            paths += found
    return paths, labels, classes


def _folder_key(folder: Path | str) -> tuple[int, int] | None:
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return info.st_dev, info.st_ino
