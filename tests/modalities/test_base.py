"""The modality interface: detection, the image instance, batching of in-memory items, seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simclr.config import build_config
from simclr.data.items import TensorItems, label_names, split_positions
from simclr.data.loading import epoch_batches
from simclr.errors import UserError
from simclr.modalities import detect_modality, modality_for, resolve_modality
from simclr.modalities.base import SeededViews, TensorModality, csv_holds_text
from simclr.modalities.image import ImageModality
from tests.conftest import write_image_folder


def test_images_are_detected_and_keep_their_pipeline(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=3)
    assert detect_modality(str(folder)) == "image"
    assert detect_modality("digits") == "image"
    np.save(tmp_path / "images.npy", np.zeros((4, 8, 8, 3), dtype=np.uint8))
    assert detect_modality(str(tmp_path / "images.npy")) == "image"
    cfg = resolve_modality(build_config({"data": {"path": str(folder)}}))
    assert cfg.data.modality == "image"
    modality = modality_for(build_config({"data": {"path": str(folder)}, "augment": {"size": 16}}))
    assert isinstance(modality, ImageModality)
    dataset, fitted = modality.open(str(folder), split="train")
    assert fitted == {} and len(dataset) == 6 and dataset.classes == ["class_0", "class_1"]
    (batch,), labels, index = next(modality.eval_batches(dataset, batch_size=4))
    x = modality.model_input((batch,), "cpu")
    assert x.dtype == torch.float32 and x.shape == (4, 3, 16, 16) and 0 <= x.min() <= x.max() <= 1
    assert torch.equal(x, batch.float() / 255) and labels.tolist() == [0, 0, 0, 1]


def test_missing_and_empty_data_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        detect_modality(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        detect_modality(str(tmp_path / "empty"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.xyz").write_text("?")
    with pytest.raises(UserError, match="--modality"):
        detect_modality(str(tmp_path / "odd"))


def test_csv_holds_text_tells_corpora_from_tables(tmp_path: Path) -> None:
    (tmp_path / "news.csv").write_text(
        "label,title\n1,A fairly long headline about the markets today\n"
        "2,Another long headline about football results\n"
    )
    (tmp_path / "table.csv").write_text("a,b,colour\n1.0,2,red\n3.5,4,blue\n")
    assert csv_holds_text(tmp_path / "news.csv")
    assert not csv_holds_text(tmp_path / "table.csv")
    assert not csv_holds_text(tmp_path / "missing.csv")


class _Rows(TensorModality):
    """The smallest in-memory modality, to test the shared batching."""

    name = "rows"
    backbones = ("mlp",)

    @classmethod
    def detect(cls, spec: str) -> bool:
        return False

    def open(self, spec, *, split):
        raise NotImplementedError

    def build_model(self):
        raise NotImplementedError

    def views(self, seed):
        raise NotImplementedError

    def model_input(self, batch, device):
        return batch[0].to(device)

    def preprocessing(self) -> str:
        return "rows as they are"

    def draw_views(self, dataset, out, *, num_items, seed):
        raise NotImplementedError


def _items(n: int = 10) -> TensorItems:
    inputs = torch.arange(n * 3, dtype=torch.float32).view(n, 3)
    return TensorItems(
        inputs, torch.full((n,), 3), torch.arange(n) % 2, ["a", "b"], [f"r{i}" for i in range(n)]
    )


def test_tensor_batches_follow_the_epoch_permutation_and_shards() -> None:
    items = _items()
    rows = _Rows(build_config({}))
    expected = epoch_batches(10, 4, seed=3, epoch=1, rank=1, world_size=2)
    got = list(rows.train_batches(items, batch_size=4, seed=3, epoch=1, rank=1, world_size=2))
    assert len(got) == len(expected) == 2
    for ((inputs, lengths), skipped), index in zip(got, expected, strict=True):
        assert skipped == 0 and torch.equal(inputs, items.inputs[index])
        assert torch.equal(lengths, items.lengths[index])
    resumed = list(rows.train_batches(items, batch_size=4, seed=3, epoch=1, start=1))
    assert torch.equal(resumed[0][0][0], items.inputs[epoch_batches(10, 4, seed=3, epoch=1)[1]])
    seen = torch.cat(
        [
            index
            for part in range(3)
            for _, _, index in rows.eval_batches(items, batch_size=3, shard=(part, 3))
        ]
    )
    assert sorted(seen.tolist()) == list(range(10))


def test_tensor_items_check_lengths_and_subset() -> None:
    items = _items()
    sub = items.subset(torch.tensor([4, 1]))
    assert sub.names == ["r4", "r1"] and torch.equal(sub.inputs, items.inputs[[4, 1]])
    with pytest.raises(ValueError):
        TensorItems(torch.zeros(3, 2), torch.zeros(2), torch.zeros(3), [], ["a", "b", "c"])


def test_split_positions_are_disjoint_fixed_and_cover_everything() -> None:
    train = split_positions(50, "train", test_fraction=0.2, seed=0)
    test = split_positions(50, "test", test_fraction=0.2, seed=0)
    assert len(test) == 10 and not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(50))
    assert torch.equal(test, split_positions(50, "test", test_fraction=0.2, seed=0))
    assert not torch.equal(test, split_positions(50, "test", test_fraction=0.2, seed=1))
    with pytest.raises(UserError, match="split"):
        split_positions(50, "val", test_fraction=0.2, seed=0)


def test_label_names_sort_numbers_numerically() -> None:
    labels, classes = label_names([10, 2, 2, 1])
    assert classes == ["1", "2", "10"] and labels.tolist() == [2, 1, 1, 0]
    labels, classes = label_names(["dog", "cat"])
    assert classes == ["cat", "dog"] and labels.tolist() == [1, 0]


def test_seeded_views_restart_their_stream() -> None:
    views = SeededViews(seed=5)
    like = torch.zeros(1)
    first = views.uniform((4,), -1.0, 2.0, like)
    assert first.min() >= -1 and first.max() < 2
    assert not torch.equal(first, views.uniform((4,), -1.0, 2.0, like))
    views.manual_seed(5)
    assert torch.equal(first, views.uniform((4,), -1.0, 2.0, like))
