"""Shared fixtures: tiny image folders made on the fly, and the --runslow switch."""

from __future__ import annotations

import contextlib
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def files_capped_at(size: int) -> Iterator[None]:
    """Every write past ``size`` bytes of a file fails in the kernel (EFBIG, "File too large").

    A real write failure for every writer (Rust, C++ or Python), as a full disk would give,
    without root or a small file system.
    """
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)


def pretrained_tiny_run(root: Path, *, classes: int = 3, per_class: int = 10) -> tuple[Path, Path]:
    """A 3-step pretraining of ``TINY`` on a new image folder under ``root``: (run, folder)."""
    from simclr.config import build_config
    from simclr.train import pretrain
    from tests.test_train import TINY  # here, not at the top: test_train imports this module

    folder = write_image_folder(root / "images", classes=classes, per_class=per_class)
    cfg = build_config(TINY, {"data": {"path": str(folder)}, "train": {"max_steps": 3}})
    pretrain(cfg, root / "run")
    return root / "run", folder


def write_image_folder(
    root: Path, *, classes: int = 3, per_class: int = 8, size: int = 16, mode: str = "RGB"
) -> Path:
    """Class subfolders of random images; each class has its own mean colour."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3)) + 60 * c
            pixels = np.clip(base + rng.integers(0, 80, (size, size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels).convert(mode)
            image.save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


CIFAR10_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def cifar10_test_jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 10,000 CIFAR-10 test JPEGs (``<class>/NNNN.jpg``), extracted from the shared data."""
    if not CIFAR10_ARCHIVE.exists():
        pytest.skip(f"{CIFAR10_ARCHIVE} is not here")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR10_ARCHIVE) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("test/")]
        archive.extractall(root, members=members, filter="data")
    return root / "test"
