"""The image modality on images that are not 8-bit RGB: C channels, 16 bits, end to end."""

import json

import numpy as np
import pytest
import torch

from simclr.checkpoint import load_checkpoint
from simclr.cli import main
from simclr.config import build_config, recipe_overrides
from simclr.evaluate.features import dataset_features, load_encoder
from simclr.export import load_exported_encoder
from simclr.modalities import modality_for
from simclr.models import input_channels
from simclr.train import pretrain
from tests.conftest import write_image_folder
from tests.deep_images import write_tiff_folder
from tests.test_cli import TINY_FLAGS
from tests.test_cli_tools import _error_line, _last_json
from tests.test_train import TINY


def test_the_multichannel_recipe_has_no_rgb_operations():
    cfg = build_config(recipe_overrides("multichannel-small"))
    brightness, contrast, saturation, hue = cfg.augment.jitter_amounts()
    assert brightness > 0 and contrast > 0 and saturation == hue == cfg.augment.grayscale_p == 0
    assert cfg.model.in_channels is None  # from the data


def test_a_five_channel_tiff_folder_pretrains_and_evaluates_from_the_command_line(tmp_path, capsys):
    folder = write_tiff_folder(tmp_path / "stacks", channels=5, per_class=6, size=16)
    run = tmp_path / "run"
    argv = ["pretrain", "--data", str(folder), "--recipe", "multichannel-small"]
    assert main([*argv, "--out", str(run), "--max-steps", "2", *TINY_FLAGS]) == 0
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["fitted"] == {"channels": 5} and state["step"] == 2
    assert state["model"]["backbone.conv1.weight"].shape[1] == 5
    capsys.readouterr()
    data = ["--train-data", str(folder), "--test-data", str(folder)]
    assert main(["knn", str(run), *data]) == 0
    assert 0 <= _last_json(capsys)["top1"] <= 100
    assert main(["linear", str(run), *data]) == 0
    assert 0 <= _last_json(capsys)["top1"] <= 100
    embedded = tmp_path / "emb.npy"
    assert main(["embed", str(run), "--data", str(folder), "--out", str(embedded)]) == 0
    assert np.load(embedded).shape[0] == 12
    exported = tmp_path / "export"
    formats = ["--format", "safetensors", "--format", "pt2"]
    assert main(["export", str(run), "--out", str(exported), *formats]) == 0
    config = json.loads((exported / "config.json").read_text())
    assert config["input"]["shape"][1] == 5 and config["backbone"]["in_channels"] == 5
    assert input_channels(load_exported_encoder(exported)) == 5
    # fine-tuning (from the encoder and from scratch) and distillation rebuild 5-channel nets
    small = ["--label-fraction", "0.5", "--epochs", "1", "--batch-size", "4", "--workers", "0"]
    assert main(["finetune", str(run), *data, *small, "--from-scratch"]) == 0
    assert main(["finetune", str(run), *data, *small]) == 0
    teacher = _last_json(capsys)["classifier_checkpoint"]
    student = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress"]
    argv = ["distill", teacher, "--data", str(folder), "--test-data", str(folder)]
    argv += ["--out", str(tmp_path / "student")]
    assert main([*argv, *student]) == 0
    assert 0 <= _last_json(capsys)["student"]["top1"] <= 100
    # RGB data for a 5-channel encoder: one line, not a shape error in a convolution
    rgb = write_image_folder(tmp_path / "rgb", classes=2, per_class=4)
    capsys.readouterr()
    _error_line(capsys, ["knn", str(run), "--train-data", str(rgb), "--test-data", str(rgb)], "5")


def test_a_four_channel_float_array_pretrains_through_the_python_api(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((16, 4, 16, 16)).astype(np.float32)  # (N, C, S, S), kept as they are
    labels = np.arange(16) % 2
    images[labels == 1] *= 0.5
    np.savez(tmp_path / "tiles.npz", images=images, labels=labels)
    spec = str(tmp_path / "tiles.npz")
    cfg = build_config(
        recipe_overrides("multichannel-small"),
        TINY,
        {"data": {"path": spec}, "train": {"max_steps": 2}},
    )
    pretrain(cfg, tmp_path / "run")
    encoder = load_encoder(tmp_path / "run")
    assert encoder.fitted == {"channels": 4} and input_channels(encoder.model.backbone) == 4
    features, dataset, protocol = dataset_features(encoder, spec, split="train", cache=False)
    assert (
        features.features.shape[0] == len(dataset) == 16
        and "4 channels" in protocol["preprocessing"]
    )
    assert torch.isfinite(features.features).all()


def test_the_configured_channel_count_must_match_the_data(tmp_path):
    folder = write_image_folder(tmp_path / "rgb", classes=2, per_class=4)
    cfg = build_config(TINY, {"data": {"path": str(folder)}, "model": {"in_channels": 4}})
    with pytest.raises(Exception, match="3 channels but the encoder takes 4"):
        modality_for(cfg).open_train()
