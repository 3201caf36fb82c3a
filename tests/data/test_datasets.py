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
    four = np.zeros((2, 8, 8, 4), dtype=np.uint8)  # four channels, not RGBA
    assert array_dataset(four, size=8).images.shape == (2, 4, 8, 8)
    with pytest.raises(UserError, match="numbers"):
        array_dataset(gray.astype(str))
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


# --- images that are not 8-bit RGB (issue 16) ----------------------------------------------------


def test_16_bit_pngs_keep_differences_below_one_255th(tmp_path):
    from simclr.augment import SimCLRViews
    from simclr.config import AugmentConfig

    from ..deep_images import write_png16

    steps = (np.arange(16 * 16).reshape(16, 16) * 3 + 30000).astype(np.uint16)  # 3/65535 apart
    write_png16(tmp_path / "deep" / "a" / "grey.png", steps)
    colour = np.stack([steps, steps + 1, steps + 2], axis=-1)  # channels 1/65535 apart
    write_png16(tmp_path / "deep" / "a" / "rgb.png", colour)
    data = build_dataset(str(tmp_path / "deep"), size=16)
    assert isinstance(data, TensorImages) and data.channels == 3
    assert data.images.dtype == torch.float32 and data.images.shape == (2, 3, 16, 16)
    grey, rgb = data.images[0], data.images[1]
    want = torch.from_numpy(steps / 65535).float()
    assert torch.equal(grey[0], want) and torch.equal(grey[2], want)  # grey repeated to RGB
    assert torch.allclose(rgb, torch.from_numpy(colour / 65535).permute(2, 0, 1).float())
    assert 0 < (rgb[1] - rgb[0]).min() < 1 / 255  # would be lost in 8 bits
    # views without colour operations (whole-image crop at the same size): nothing is rounded
    still = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    cfg = AugmentConfig(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **still)
    view, _ = SimCLRViews(cfg)(data.images)
    assert (view - data.images).abs().max() < 1e-6
    assert len(torch.unique(view[0, 0])) == 256  # every 3/65535 step survives
    # the same files decoded on demand (photographs) are float too
    files = build_dataset(str(tmp_path / "deep"), size=16, in_memory="never")
    assert isinstance(files, FileImages) and torch.equal(files[1][0], rgb)


def test_8_bit_files_and_arrays_keep_the_uint8_path(image_folder):
    data = build_dataset(str(image_folder), size=16)
    assert data.images.dtype == torch.uint8 and data.channels == 3
    cifar_like = np.zeros((4, 12, 12, 3), dtype=np.uint8)
    assert array_dataset(cifar_like, size=12).images.dtype == torch.uint8


def test_multichannel_tiff_stacks_keep_every_channel_and_bit(tmp_path):
    from ..deep_images import write_tiff_folder

    root = write_tiff_folder(tmp_path / "stacks", channels=5, size=16)
    data = build_dataset(str(root), size=16)
    assert isinstance(data, TensorImages) and data.channels == 5
    assert data.images.shape == (12, 5, 16, 16) and data.images.dtype == torch.float32
    tifffile = pytest.importorskip("tifffile")
    stack = tifffile.imread(root / "class_1" / "2.tif")
    assert torch.equal(data.images[6 + 2], torch.from_numpy(stack / 65535).float())
    files = build_dataset(str(root), size=8, in_memory="never")
    assert isinstance(files, FileImages) and files.channels == 5
    assert files[0][0].shape == (5, 16, 16)


def test_arrays_keep_channels_and_precision():
    rng = np.random.default_rng(0)
    first = rng.random((3, 4, 10, 10)).astype(np.float32)  # (N, C, S, S) floats, kept as they are
    data = array_dataset(first, size=10)
    assert data.channels == 4 and torch.equal(data.images, torch.from_numpy(first))
    last = (rng.random((3, 10, 10, 6)) * 65535).astype(np.uint16)  # (N, H, W, C), 16-bit
    data = array_dataset(last, size=10)
    assert data.images.shape == (3, 6, 10, 10)
    assert torch.allclose(data.images, torch.from_numpy(last / 65535).permute(0, 3, 1, 2).float())
    with pytest.raises(UserError, match="NaN"):
        array_dataset(np.full((2, 8, 8), np.nan, dtype=np.float32))


def test_a_folder_mixing_channel_counts_names_an_example_of_each(tmp_path):
    from ..deep_images import channel_stack

    tifffile = pytest.importorskip("tifffile")
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "a" / "photo.png")
    stack = channel_stack(np.random.default_rng(0), 5, 16, 0)
    tifffile.imwrite(root / "a" / "stack.tif", stack, photometric="minisblack")
    with pytest.raises(UserError) as raised:
        build_dataset(str(root))
    message = str(raised.value)
    assert "\n" not in message and "photo.png" in message and "stack.tif" in message
    assert "3 channels" in message and "5 channels" in message


def test_the_channel_check_reads_no_jpeg_or_png(image_folder, monkeypatch):
    from simclr.data import datasets

    def no_reading(path):
        raise AssertionError(f"{path} was opened to count its channels")

    monkeypatch.setattr(datasets, "probe_image", no_reading)
    assert datasets.scan_folder(image_folder).channels == 3


def test_display_channels_gives_three_of_any_count():
    from simclr.data.datasets import display_channels

    rgb = torch.rand(2, 3, 4, 4)
    assert display_channels(rgb) is rgb
    grey = display_channels(torch.rand(2, 1, 4, 4))
    assert grey.shape == (2, 3, 4, 4) and torch.equal(grey[:, 0], grey[:, 2])
    two = torch.tensor([[[[0]], [[200]]]], dtype=torch.uint8)  # [1, 2, 1, 1]
    assert display_channels(two).flatten().tolist() == [100, 100, 100]  # their mean, in grey
    five = torch.rand(5, 8, 8)
    assert torch.equal(display_channels(five), five[:3])  # the first three as R, G, B
