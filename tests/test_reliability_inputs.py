"""Hostile and broken inputs (issue 17, part B): what a bad file, folder or path costs at most.

Each test names the defect it pins down. Nothing here may hang: slow paths run under
:func:`time_limit`, and the only network address used is a closed port on localhost.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import struct
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from simclr.cli import main
from simclr.config import AugmentConfig, TextConfig
from simclr.data import shards as shard_module
from simclr.data.datasets import (
    MAX_IMAGE_PIXELS,
    build_dataset,
    decoded_batches,
    read_image,
    scan_folder,
)
from simclr.data.loading import train_batches
from simclr.data.shards import ShardSet, open_shards, shard_batches, write_shards
from simclr.errors import UserError
from simclr.modalities.audio.reading import read_audio_folder
from simclr.modalities.base import file_suffixes
from simclr.modalities.tabular.reading import read_table_file
from simclr.modalities.text.reading import read_corpus
from simclr.modalities.timeseries.reading import read_series

from .conftest import pretrained_tiny_run, write_image_folder

AUGMENT = AugmentConfig(size=8)


class TookTooLong(BaseException):
    """Raised by :func:`time_limit`; a BaseException, so ``except Exception`` (or ``OSError``,
    as in :func:`os.walk`) on the way cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail the test (instead of hanging it) when the block runs longer than ``seconds``."""

    def expired(signum: int, frame: object) -> None:
        raise TookTooLong(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("simclr: error:"), err
    assert all(word in err[0] for word in words), err
    return err[0]


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` grey pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return pretrained_tiny_run(tmp_path_factory.mktemp("hostile"), classes=2, per_class=6)


# --- defect 3: --out never replaces a checkpoint; a folder works --------------------------------


def test_out_never_replaces_a_checkpoint_or_a_run_record(run, tmp_path, capsys):
    run_dir, folder = run
    latest = run_dir / "checkpoints" / "latest.pt"
    before = latest.read_bytes()
    data = ["--train-data", str(folder), "--test-data", str(folder)]
    _one_line_error(capsys, ["views", "--data", str(folder), "--out", str(latest)], "checkpoints")
    _one_line_error(capsys, ["knn", str(run_dir), *data, "--out", str(latest)], "checkpoints")
    _one_line_error(capsys, ["map", str(run_dir), "--data", str(folder), "--out", str(latest)])
    _one_line_error(capsys, ["embed", str(run_dir), "--data", str(folder), "--out", str(latest)])
    _one_line_error(capsys, ["export", str(run_dir), "--out", str(latest.parent)], "checkpoints")
    # a checkpoint copied anywhere, under any name, is recognised by its content
    disguised = tmp_path / "model.json"
    shutil.copy(latest, disguised)
    _one_line_error(capsys, ["knn", str(run_dir), *data, "--out", str(disguised)], "checkpoint")
    assert disguised.read_bytes() == before
    # the run's own records, and suffixes that are not what the command writes
    env = run_dir / "environment.json"
    _one_line_error(capsys, ["knn", str(run_dir), *data, "--out", str(env)], "record")
    _one_line_error(capsys, ["knn", str(run_dir), *data, "--out", str(tmp_path / "r.png")], ".json")
    views_json = str(tmp_path / "v.json")
    _one_line_error(capsys, ["views", "--data", str(folder), "--out", views_json], ".png")
    assert latest.read_bytes() == before
    assert not list(latest.parent.glob("*.png")) and not list(latest.parent.glob("*.json"))


def test_out_may_be_a_folder(run, tmp_path, capsys):
    run_dir, folder = run
    out = tmp_path / "results"
    out.mkdir()
    data = ["--train-data", str(folder), "--test-data", str(folder)]
    assert main(["knn", str(run_dir), *data, "--out", str(out)]) == 0
    assert json.loads((out / "knn-latest.json").read_text())["top1"] >= 0
    assert main(["views", "--data", str(folder), "--out", str(out), "--num-images", "2"]) == 0
    assert (out / "views.png").is_file()
    assert main(["embed", str(run_dir), "--data", str(folder), "--out", str(out)]) == 0
    assert np.load(out / "embed-latest.npy").shape[0] == 12
    assert (out / "embed-latest.index.csv").is_file() and (out / "embed-latest.json").is_file()
    assert main(["map", str(run_dir), "--data", str(folder), "--out", str(out)]) == 0
    assert (out / "map-tsne.png").is_file()
    capsys.readouterr()


# --- defect 6: high bit depths are scaled, not clipped (issue 16: nor quantised to 8 bits) -------


def test_high_bit_depth_images_keep_their_values(tmp_path, caplog):
    ramp = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64 - 1)  # 0 .. 1
    root = tmp_path / "deep" / "a"
    root.mkdir(parents=True)
    sixteen = (ramp * 65535).astype(np.uint16)
    Image.fromarray(sixteen).save(root / "a16.png")
    Image.fromarray(sixteen.astype(np.int32) * 1000).save(root / "b32.tiff")
    Image.fromarray(ramp.astype(np.float32)).save(root / "cfloat.tiff")
    Image.fromarray((ramp * 5000 - 1000).astype(np.float32)).save(root / "dfloat.tiff")
    files = scan_folder(tmp_path / "deep")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        images = [files[i][0] for i in range(len(files))]
    expected = {
        "a16.png": sixteen / 65535,  # by the type's range
        "b32.tiff": sixteen / 65535,  # a 32-bit range: stretched from its minimum and maximum
        "cfloat.tiff": ramp,  # floats as they are
        "dfloat.tiff": ramp * 5000 - 1000,  # even outside [0, 1]
    }
    for name, image in zip(files.names, images, strict=True):
        assert image is not None and image.shape == (3, 64, 64), name
        assert image.dtype == torch.float32, name  # never quantised to 8 bits
        grey = image[0].numpy().astype(np.float64)
        want = expected[Path(name).name]
        assert np.abs(grey - want).max() <= 1e-6 * max(1.0, np.abs(want).max()), name
    noted = [r.getMessage() for r in caplog.records if "said once per dataset" in r.getMessage()]
    assert len(noted) == 1 and "b32.tiff" in noted[0] and "stretched" in noted[0]


def test_an_image_of_nan_values_is_unreadable_not_black(tmp_path, caplog):
    path = tmp_path / "nan.tiff"
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32)).save(path)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        assert read_image(str(path)) is None
    assert "nan.tiff" in caplog.text and "NaN" in caplog.text


# --- defect 8: unreadable shard sets fail fast, with one line ------------------------------------


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=5)
    write_shards(scan_folder(folder), tmp_path / "shards", max_count=4)
    return tmp_path / "shards"


def _index(folder: Path, **fields: object) -> str:
    index = {"num_samples": 10, "classes": [], "shards": ["shard-000000.tar"], **fields}
    (folder / "shards.json").write_text(json.dumps(index))
    return str(folder / "shards.json")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"shards": "shard-000000.tar"}, "must be a list"),
        ({"shards": ["missing.tar"]}, "not files"),
        ({"shards": ["pipe:cat shard-000000.tar"]}, "pipe:"),
        ({"shards": ["ftp://host/a.tar"]}, "ftp:"),
        ({"num_samples": "10"}, "num_samples"),
        ({"shards": [3]}, "must be a list"),
    ],
)
def test_a_bad_shard_index_is_a_one_line_error_at_open(shard_dir, fields, words):
    with pytest.raises(UserError, match=words) as caught:
        open_shards(_index(shard_dir, **fields))
    assert "\n" not in str(caught.value)


def test_a_pipe_index_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(UserError, match="pipe:"):
        open_shards(f"pipe:touch {marker}; echo {{}} # shards.json")
    assert not marker.exists()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_index_url_fails_fast_naming_it():
    url = f"http://127.0.0.1:{_closed_port()}/shards.json"
    started = time.monotonic()
    with time_limit(30), pytest.raises(UserError) as caught:
        open_shards(url)
    assert time.monotonic() - started < shard_module.URL_TIMEOUT_S + 5
    message = str(caught.value)
    assert url in message and "\n" not in message and "curl" not in message


def _stream(shard_set: ShardSet, **kwargs: object) -> list[tuple[torch.Tensor, int]]:
    options: dict = {"batch_size": 4, "steps": 3, "seed": 0, "epoch": 0, "num_workers": 0}
    return list(shard_batches(shard_set, AUGMENT, **{**options, **kwargs}))


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_that_are_not_tars_end_the_stream_with_one_line(tmp_path, workers):
    for i in range(3):
        (tmp_path / f"bad-{i}.tar").write_bytes(os.urandom(3000))
    index = _index(tmp_path, shards=[f"bad-{i}.tar" for i in range(3)])
    with time_limit(60), pytest.raises(UserError, match="no readable sample") as caught:
        _stream(open_shards(index), num_workers=workers)
    assert "\n" not in str(caught.value) and str(tmp_path) in str(caught.value)


def test_empty_tars_end_the_stream(tmp_path):
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with time_limit(60), pytest.raises(UserError, match="no samples in it"):
        _stream(open_shards(_index(tmp_path, shards=["empty.tar"])))


def test_tars_of_broken_images_end_the_stream(tmp_path):
    with tarfile.open(tmp_path / "junk.tar", "w") as tar:
        for i in range(5):
            data = os.urandom(100)
            info = tarfile.TarInfo(f"{i:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard_set = open_shards(_index(tmp_path, shards=["junk.tar"]))
    with time_limit(60):
        short = _stream(shard_set, steps=10)  # an epoch of empty batches: the loop's error
        assert all(len(crops) == 0 for crops, _ in short)
        assert sum(skipped for _, skipped in short) == 5  # five bad samples, each counted once
        with pytest.raises(UserError, match="no readable image"):
            _stream(shard_set, steps=100)  # a long epoch stops after MAX_FAILURES_IN_A_ROW


def _tar_with_declared_size(path: Path, size: int) -> None:
    """A tar whose one member's header declares ``size`` bytes, followed by only 1 KiB."""
    info = tarfile.TarInfo("0000.png")
    info.size = size
    path.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT) + b"\x00" * 1024)


def test_a_member_declaring_8_gb_is_skipped_unread(shard_dir, caplog):
    _tar_with_declared_size(shard_dir / "huge.tar", 8 * 2**30)
    index = json.loads((shard_dir / "shards.json").read_text())
    index["shards"].append("huge.tar")
    (shard_dir / "shards.json").write_text(json.dumps(index))
    with time_limit(60), caplog.at_level(logging.WARNING, logger="simclr"):
        batches = _stream(open_shards(str(shard_dir)), steps=6)
    assert len(batches) == 6 and all(len(crops) > 0 for crops, _ in batches)
    assert "8589934592 bytes" in caplog.text or "huge.tar" in caplog.text


def test_members_above_the_limit_are_skipped_and_the_rest_is_read(shard_dir, monkeypatch, caplog):
    sizes = [len(data) for data in _member_bytes(shard_dir / "shard-000000.tar")]
    monkeypatch.setattr(shard_module, "MAX_MEMBER_BYTES", sorted(sizes)[len(sizes) // 2])
    with caplog.at_level(logging.WARNING, logger="simclr"):
        batches = _stream(open_shards(str(shard_dir)), steps=4)
    assert len(batches) == 4 and "MAX_MEMBER_BYTES" in caplog.text


def _member_bytes(path: Path) -> list[bytes]:
    with tarfile.open(path) as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]  # type: ignore[union-attr]


# --- defect 9: symbolic link loops ---------------------------------------------------------------


def test_link_loops_are_visited_once(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=2, per_class=20)
    (root / "class_0" / "self").symlink_to(".")
    (root / "class_0" / "again").symlink_to("..")
    (root / "class_1" / "loop").symlink_to(root / "class_1")
    (root / "class_1" / "to-0").symlink_to(root / "class_0")  # another class: not followed
    (root / "class_0" / "copy.png").symlink_to(root / "class_0" / "0.png")
    with time_limit(30):
        files = scan_folder(root)
        suffixes = file_suffixes(root / "class_0")
    assert len(files) == 40 and files.classes == ["class_0", "class_1"]
    assert (files.labels == 0).sum() == 20 and (files.labels == 1).sum() == 20
    assert suffixes == {".png"}


def test_link_loops_in_a_flat_folder(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / f"{i}.png")
    (root / "a").mkdir()
    (root / "a" / "up").symlink_to("..")
    (root / "a" / "up2").symlink_to("..")
    (root / "pipe.png").unlink(missing_ok=True)
    os.mkfifo(root / "pipe.png")  # reading it would block forever: never listed
    with time_limit(30):
        files = scan_folder(root)
    assert len(files) == 3 and not files.has_labels


# --- defect 10: decompression bombs --------------------------------------------------------------


@pytest.mark.parametrize("side", [30_000, 10_000])  # beyond PIL's error limit; between its limits
def test_decompression_bombs_are_skipped_like_unreadable_files(tmp_path, caplog, side):
    assert side * side > MAX_IMAGE_PIXELS
    root = write_image_folder(tmp_path / "images", classes=2, per_class=3)
    (root / "class_0" / "bomb.png").write_bytes(_png_declaring(side, side))
    with caplog.at_level(logging.WARNING, logger="simclr"), time_limit(60):
        small = build_dataset(str(root), size=16, num_workers=0)  # probes the sizes first
        small = build_dataset(str(root), size=16, in_memory="always", num_workers=0)
        large = build_dataset(str(root), size=16, in_memory="never", num_workers=0)
        decoded = list(decoded_batches(large, size=16, num_workers=0))
        crops = list(
            train_batches(scan_folder(root), AUGMENT, batch_size=7, seed=0, epoch=0, num_workers=0)
        )
    assert len(small) == 6 and sum(len(index) for _, index in decoded) == 6
    assert len(crops) == 1 and len(crops[0][0]) == 6 and crops[0][1] == 1
    assert "bomb.png" in caplog.text


def test_neighbors_refuses_a_bomb_query_with_one_line(run, tmp_path, capsys):
    run_dir, folder = run
    out = tmp_path / "emb.npy"
    assert main(["embed", str(run_dir), "--data", str(folder), "--out", str(out)]) == 0
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(30_000, 30_000))
    argv = ["neighbors", str(run_dir), "--embeddings", str(out), "--query", str(bomb)]
    capsys.readouterr()
    _one_line_error(capsys, argv, "bomb.png")


# --- defect 12: non-finite and overflowing numbers -----------------------------------------------


def test_audio_with_nan_or_huge_samples_is_skipped_naming_the_file(tmp_path, caplog):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            tone = np.sin(np.linspace(0, 200, 4000)).astype(np.float32) * 0.5
            sf.write(tmp_path / label / f"{i}.wav", tone, 8000, subtype="FLOAT")
    broken = np.zeros(4000, dtype=np.float32)
    broken[100] = np.nan
    sf.write(tmp_path / "a" / "nan.wav", broken, 8000, subtype="FLOAT")
    sf.write(tmp_path / "b" / "huge.wav", np.full(4000, 1e30, np.float32), 8000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        items = read_audio_folder(str(tmp_path), split="train", sample_rate=8000, max_seconds=1)
    assert len(items) == 4 and bool(torch.isfinite(items.inputs).all())
    assert "nan.wav" in caplog.text and "huge.wav" in caplog.text
    assert "skipped 2 unreadable audio file(s) of 6" in caplog.text


def test_series_that_overflow_float32_are_skipped_naming_them(tmp_path, caplog):
    rng = np.random.default_rng(0)
    series = rng.normal(size=(40, 1, 50))
    series[3] *= 1e38  # finite in float32, but its square and variance overflow
    series[7, 0, 10] = 1e39  # beyond float32
    series[9] += 3e38  # finite, constant offset: the mean of its float32 steps overflows
    np.save(tmp_path / "s.npy", series)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        train = read_series(str(tmp_path / "s.npy"), "train", test_fraction=0.5, split_seed=0)
        test = read_series(str(tmp_path / "s.npy"), "test", test_fraction=0.5, split_seed=0)
    names = train.names + test.names
    assert len(names) == 37 and not {"s.npy#3", "s.npy#7", "s.npy#9"} & set(names)
    assert all(np.isfinite(np.square(s.astype(np.float32))).all() for s in train.series)
    for bad in ("s.npy#3", "s.npy#7", "s.npy#9"):
        assert bad in caplog.text


def test_non_finite_table_cells_are_missing_values_naming_the_file(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_text('a,b,label\n1,2,x\ninf,3,y\n1e300,4,x\n2,-1e39,y\n3,"1e400",x\n')
    with caplog.at_level(logging.WARNING, logger="simclr"):
        frame = read_table_file(path)
    assert frame["a"].isna().tolist() == [False, True, True, False, False]
    assert frame["b"].isna().tolist() == [False, False, False, True, True]
    assert "t.csv" in caplog.text and "'a': 2 cell(s)" in caplog.text


# --- defect 15: distinct files are counted, once ------------------------------------------------


def test_a_bad_file_is_counted_once_over_epochs(tmp_path, caplog):
    root = write_image_folder(tmp_path / "images", classes=2, per_class=4)
    (root / "class_0" / "broken.png").write_bytes(b"not a png")
    for workers in (2, 0):  # the record is shared by the worker processes of every epoch
        files = scan_folder(root)
        with caplog.at_level(logging.WARNING, logger="simclr"):
            skipped = [
                skip
                for epoch in range(3)
                for _, skip in train_batches(
                    files, AUGMENT, batch_size=9, seed=0, epoch=epoch, num_workers=workers
                )
            ]
        assert sum(skipped) == 1, workers
    assert caplog.text.count("skipping unreadable image") == 1  # (workers log elsewhere)


def test_evaluation_counts_what_it_skipped(tmp_path, caplog):
    root = write_image_folder(tmp_path / "images", classes=2, per_class=3)
    (root / "class_1" / "broken.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        files = build_dataset(str(root), size=16, in_memory="never", num_workers=0)
        assert sum(len(index) for _, index in decoded_batches(files, size=16, num_workers=0)) == 6
    assert "skipped 1 unreadable image file(s) of 7" in caplog.text


# --- fuzz: random and mutated bytes never raise anything but a one-line UserError ----------------


def _mutations(valid: bytes, rng: np.random.Generator, count: int) -> Iterator[bytes]:
    """``count`` inputs: random bytes, truncations and byte flips of ``valid``."""
    for case in range(count):
        kind = case % 3
        if kind == 0:
            yield rng.bytes(int(rng.integers(0, 3000)))
        elif kind == 1:
            yield valid[: int(rng.integers(0, len(valid)))]
        else:
            data = bytearray(valid)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 20))):
                data[position] = int(rng.integers(0, 256))
            yield bytes(data)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_fuzz_image_reader():
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    with time_limit(120):
        for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
            for data in _mutations(_encoded(picture, fmt), rng, 24):
                image = read_image(io.BytesIO(data), name=f"fuzz.{fmt}")
                assert image is None or (image.dtype == torch.uint8 and image.shape[0] == 3)


def test_fuzz_audio_reader(tmp_path):
    rng = np.random.default_rng(2)
    clip = io.BytesIO()
    sf.write(clip, rng.normal(size=800).astype(np.float32) * 0.1, 8000, format="WAV")
    (tmp_path / "good.wav").write_bytes(clip.getvalue())
    with time_limit(120):
        for case, data in enumerate(_mutations(clip.getvalue(), rng, 36)):
            (tmp_path / "fuzz.wav").write_bytes(data)
            items = read_audio_folder(str(tmp_path), split="train", sample_rate=8000, max_seconds=1)
            assert len(items) in (1, 2) and bool(torch.isfinite(items.inputs).all()), case


def test_fuzz_table_and_text_readers(tmp_path):
    rng = np.random.default_rng(3)
    valid = b"a,b,label,text\n1.5,2,x,a long sentence here\n-3,inf,y,another one\n4,5,x,and more\n"
    with time_limit(120):
        for case, data in enumerate(_mutations(valid, rng, 36)):
            path = tmp_path / f"fuzz{case}.csv"
            path.write_bytes(data)
            with contextlib.suppress(UserError):
                frame = read_table_file(path)
                assert len(frame) > 0
            with contextlib.suppress(UserError):
                read_corpus(path, TextConfig())


def test_fuzz_shard_reader(shard_dir):
    rng = np.random.default_rng(4)
    valid = (shard_dir / "shard-000000.tar").read_bytes()
    with time_limit(240):
        for case, data in enumerate(_mutations(valid, rng, 24)):
            (shard_dir / "shard-000000.tar").write_bytes(data)
            try:
                batches = _stream(open_shards(str(shard_dir)), steps=2)
            except UserError as err:
                assert "\n" not in str(err), case
            else:
                assert len(batches) == 2, case
