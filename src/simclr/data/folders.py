"""Files of a folder tree, labelled by class subfolder (the ImageFolder convention).

Shared by the readers of image and audio folders: only which file names count differs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def files_below(folder: Path, accept: Callable[[str], bool]) -> list[str]:
    """Accepted files anywhere below ``folder``, in sorted walk order.

    Hidden folders are skipped and symbolic links followed.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if accept(f)]
    return found


def scan_class_folders(
    root: Path, accept: Callable[[str], bool]
) -> tuple[list[str], list[int], list[str]]:
    """The accepted files below ``root``, their class indices and the class names.

    Accepted files directly in ``root`` make the whole folder unlabelled (every index ``-1``,
    no class names; the subfolders' files are listed too). Otherwise each subfolder holding
    accepted files at any depth is a class, numbered in sorted order of the names. Nothing
    accepted gives three empty lists: the caller says what it looked for.
    """
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    direct = [e.path for e in entries if e.is_file() and accept(e.name)]
    subfolders = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if direct:
        everything = direct + [p for sub in subfolders for p in files_below(root / sub, accept)]
        return everything, [-1] * len(everything), []
    paths: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    for sub in subfolders:
        found = files_below(root / sub, accept)
        if found:
            labels += [len(classes)] * len(found)
            classes.append(sub)
            paths += found
    return paths, labels, classes
