import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.data.datasets import (
    FileImages,
    TensorImages,
    array_dataset,
    build_dataset,
    digits_dataset,
)
from simclr.errors import UserError

from ..conftest import write_image_folder


def test_labelled_folder_is_decoded_once_into_memory(image_folder):
    data = build_dataset(str(image_folder), size=16)
    assert isinstance(data, TensorImages)
    assert data.images.shape == (24, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.classes == ["class_0", "class_1", "class_2"]
    assert data.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert data.has_labels
    # pixels survive decoding exactly (PNG is lossless)
    expected = np.array(Image.open(image_folder / "class_1" / "3.png"))
    assert torch.equal(data.images[8 + 3], torch.from_numpy(expected).permute(2, 0, 1))


def test_in_memory_resizes_to_the_training_size(image_folder):
    data = build_dataset(str(image_folder), size=8)
    assert data.images.shape[-2:] == (8, 8)


def test_large_images_stay_on_disk(tmp_path):
    root = write_image_folder(tmp_path / "big", classes=2, per_class=2, size=80)
    data = build_dataset(str(root), size=32)
    assert isinstance(data, FileImages) and len(data) == 4
    image, label = data[3]
    assert image.shape == (3, 80, 80) and label == 1
    assert isinstance(build_dataset(str(root), size=32, in_memory="always"), TensorImages)


def test_flat_folder_is_unlabelled(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(5):
        Image.new("RGB", (12, 10), (i * 40, 0, 0)).save(root / f"{i}.jpg")
    data = build_dataset(str(root), size=8)
    assert len(data) == 5 and not data.has_labels and data.labels.tolist() == [-1] * 5


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    root = tmp_path / "modes" / "a"
    root.mkdir(parents=True)
    image = Image.new("RGB", (10, 10), (200, 100, 50)).convert(mode)
    image.save(root / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png"))
    data = build_dataset(str(tmp_path / "modes"), size=10)
    assert data.images.shape == (1, 3, 10, 10)


def test_corrupt_files_are_skipped_with_a_warning(image_folder, caplog):
    (image_folder / "class_0" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (image_folder / "class_2" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        data = build_dataset(str(image_folder), size=16, num_workers=0)
    assert len(data) == 24
    text = caplog.text
    assert "broken.jpg" in text and "empty.png" in text and "skipped 2 unreadable" in text
    assert all("broken" not in name for name in data.names)


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no images found"):
        build_dataset(str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        build_dataset(str(tmp_path / "file.txt"))
    only_bad = tmp_path / "bad" / "c"
    only_bad.mkdir(parents=True)
    (only_bad / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="could be read"):
        build_dataset(str(tmp_path / "bad"), num_workers=0, in_memory="always")


def test_numpy_arrays(tmp_path):
    gray = np.random.default_rng(0).integers(0, 255, (6, 20, 20), dtype=np.uint8)
    data = array_dataset(gray, np.array([0, 1, 0, 1, 2, 2]), size=20)
    assert data.images.shape == (6, 3, 20, 20)
    assert torch.equal(data.images[2, 1], torch.from_numpy(gray[2]))
    assert data.classes == ["0", "1", "2"]
    rgba = np.zeros((2, 8, 8, 4), dtype=np.uint8)
    assert array_dataset(rgba, size=8).images.shape == (2, 3, 8, 8)
    with pytest.raises(UserError, match="uint8"):
        array_dataset(gray.astype(np.float32))
    np.savez(tmp_path / "set.npz", images=gray, labels=np.arange(6) % 2)
    assert build_dataset(str(tmp_path / "set.npz"), size=20).has_labels
    np.save(tmp_path / "set.npy", gray)
    assert not build_dataset(str(tmp_path / "set.npy"), size=20).has_labels


def test_digits_split_is_fixed_and_disjoint():
    train, test = digits_dataset(split="train"), digits_dataset(split="test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert not set(train.names) & set(test.names)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.max() > 200
    assert digits_dataset(split="train").names == train.names


def test_torchvision_cifar_layout(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle)
    import torchvision.datasets.cifar as cifar_module

    # the checksums of torchvision's real files cannot match this fake copy
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args, **kwargs: True)
    train = build_dataset(str(tmp_path), split="train", size=32)
    test = build_dataset(str(folder), split="test", size=32)
    assert len(train) == 20 and len(test) == 4
    assert train.classes[:2] == ["c0", "c1"] and train.has_labels
