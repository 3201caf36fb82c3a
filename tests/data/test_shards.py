"""WebDataset shards: writing them from a folder, reading the index, streaming crops."""

import functools
import http.server
import json
import logging
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from simclr.cli import main
from simclr.config import AugmentConfig, DataConfig
from simclr.data.datasets import scan_folder
from simclr.data.loading import open_train_data, train_batches
from simclr.data.shards import ShardSet, is_shard_index, open_shards, shard_batches, write_shards
from simclr.errors import UserError
from tests.conftest import write_image_folder

AUGMENT = AugmentConfig(size=8)


@pytest.fixture
def shards(image_folder: Path, tmp_path: Path) -> ShardSet:
    return write_shards(scan_folder(image_folder), tmp_path / "shards", max_count=10)


def _members(shard_set: ShardSet) -> dict[str, bytes]:
    members = {}
    for url in shard_set.urls:
        with tarfile.open(url) as tar:
            for info in tar.getmembers():
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    return members


def test_write_shards_keeps_every_file_byte_for_byte_with_its_label(image_folder, shards):
    files = scan_folder(image_folder)
    assert len(shards.urls) == 3 and shards.num_samples == len(files) == 24  # 10 + 10 + 4
    assert shards.classes == files.classes
    members = _members(shards)
    images = {k: v for k, v in members.items() if k.endswith(".png")}
    assert len(images) == 24
    originals = {
        Path(name).read_bytes(): int(label)
        for name, label in zip(files.names, files.labels, strict=True)
    }
    for name, data in images.items():
        label = int(members[name.replace(".png", ".cls")])
        assert originals[data] == label
    # the order is shuffled, so the first shard mixes classes
    first = {int(members[k]) for k in members if k.endswith(".cls") and k < "000000010"}
    assert len(first) > 1


def test_write_shards_refuses_a_folder_with_shards(image_folder, shards, tmp_path):
    with pytest.raises(UserError, match="already holds shards"):
        write_shards(scan_folder(image_folder), tmp_path / "shards")


def test_open_shards_from_the_folder_or_the_index(shards, tmp_path):
    folder = tmp_path / "shards"
    assert is_shard_index(str(folder)) and is_shard_index(str(folder / "shards.json"))
    for spec in (str(folder), str(folder / "shards.json")):
        opened = open_shards(spec)
        assert opened.num_samples == 24 and [Path(u).name for u in opened.urls] == [
            Path(u).name for u in shards.urls
        ]
        assert all(Path(u).exists() for u in opened.urls)


@pytest.mark.parametrize(
    "content", ["not json", json.dumps({"shards": []}), json.dumps({"num_samples": 3})]
)
def test_a_malformed_index_is_a_one_line_error(tmp_path, content):
    index = tmp_path / "shards.json"
    index.write_text(content)
    with pytest.raises(UserError, match="shard index"):
        open_shards(str(index))


def _stream(shard_set: ShardSet, **kwargs) -> list[tuple[torch.Tensor, int]]:
    options = {"batch_size": 4, "steps": 3, "seed": 0, "epoch": 0, "num_workers": 0, **kwargs}
    return list(shard_batches(shard_set, AUGMENT, **options))


def test_stream_gives_the_asked_steps_of_two_crops(shards):
    batches = _stream(shards, steps=8)  # more than one pass over 24 samples: shards are redrawn
    assert len(batches) == 8
    for crops, skipped in batches:
        assert crops.shape == (4, 2, 3, 8, 8) and crops.dtype == torch.uint8 and skipped == 0
    assert len(_stream(shards, steps=8, start=5)) == 3  # a resumed epoch has the rest


def test_stream_is_reproducible_and_differs_by_rank_and_epoch(shards):
    torch.manual_seed(1)
    first = torch.cat([c for c, _ in _stream(shards)])
    torch.manual_seed(1)
    again = torch.cat([c for c, _ in _stream(shards)])
    assert torch.equal(first, again)
    for other in ({"rank": 1}, {"epoch": 1}):
        torch.manual_seed(1)
        assert not torch.equal(first, torch.cat([c for c, _ in _stream(shards, **other)]))


def test_stream_with_loader_workers(shards):
    batches = _stream(shards, steps=4, num_workers=2)
    assert len(batches) == 4 and all(c.shape == (4, 2, 3, 8, 8) for c, _ in batches)


def test_unreadable_sample_is_skipped_with_a_warning(tmp_path, caplog):
    folder = write_image_folder(tmp_path / "images", classes=1, per_class=5)
    (folder / "class_0" / "broken.png").write_bytes(b"not an image")
    shard_set = write_shards(scan_folder(folder), tmp_path / "shards")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        batches = _stream(shard_set, batch_size=6, steps=5)  # shards are redrawn: 30 samples
    assert all(len(crops) + skipped <= 6 for crops, skipped in batches)
    assert sum(6 - len(crops) for crops, _ in batches) >= 2  # drawn again and dropped again
    assert sum(skipped for _, skipped in batches) == 1  # one bad file, counted once per run
    assert caplog.text.count("skipping unreadable image") == 1


def test_train_batches_split_the_global_batch_between_processes(shards, tmp_path):
    data = open_train_data(DataConfig(path=str(tmp_path / "shards")), size=AUGMENT.size)
    assert isinstance(data, ShardSet)
    batches = list(
        train_batches(data, AUGMENT, batch_size=8, seed=0, epoch=0, num_workers=0, world_size=2)
    )
    assert len(batches) == 24 // 8 and all(len(c) == 4 for c, _ in batches)
    # the other process streams other shards and crops
    other = list(
        train_batches(
            data, AUGMENT, batch_size=8, seed=0, epoch=0, num_workers=0, rank=1, world_size=2
        )
    )
    assert not torch.equal(torch.cat([c for c, _ in batches]), torch.cat([c for c, _ in other]))


def test_shards_over_http(shards, tmp_path):
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "shards")
    )
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shards.json"
        remote = open_shards(url)
        assert remote.num_samples == 24 and remote.urls[0].startswith("http://")
        batches = _stream(remote, steps=2)
        assert len(batches) == 2 and batches[0][0].shape == (4, 2, 3, 8, 8)
    finally:
        server.shutdown()


def test_shards_command(image_folder, tmp_path, capsys):
    assert main(["shards", str(image_folder), str(tmp_path / "out"), "--max-count", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards"] == 5 and summary["samples"] == 24 and summary["classes"] == 3
    assert main(["shards", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "is not a folder" in capsys.readouterr().err
