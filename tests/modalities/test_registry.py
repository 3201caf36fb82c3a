"""The modality registry: names, recipes, detection, entry points, and a modality added from
outside the package (``toy.py``) trained and scored by the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import simclr.modalities
from simclr.config import build_config, parse_assignment, recipe_names, recipe_overrides
from simclr.errors import UserError
from simclr.modalities import (
    default_recipe,
    detect_modality,
    modality_for,
    modality_names,
    modality_type,
    register_modality,
    resolve_modality,
)
from simclr.modalities.image import ImageModality
from tests.modalities.conftest import restored_registry
from tests.modalities.toy import ToyModality, write_toy

BUILT_IN = ("image", "audio", "timeseries", "text", "tabular")


def test_built_in_modalities_and_their_recipes() -> None:
    assert modality_names()[:5] == BUILT_IN
    assert default_recipe("image") is None  # images start from the dataclass defaults
    for name in BUILT_IN[1:]:
        assert default_recipe(name) == f"{name}-small" and f"{name}-small" in recipe_names()
    shipped = {"cpu-small", "cifar10-resnet18", "imagenet-resnet50", "digits-demo"}
    assert shipped <= set(recipe_names())
    assert modality_type("image") is ImageModality
    with pytest.raises(UserError, match="unknown modality 'video'.*image, audio"):
        modality_type("video")
    with pytest.raises(UserError, match="unknown recipe 'nope'"):
        recipe_overrides("nope")


def test_resolve_modality_validates_the_name() -> None:
    with pytest.raises(UserError, match="data.modality must be one of auto, image"):
        resolve_modality(build_config({"data": {"modality": "video"}}))
    assert resolve_modality(build_config()).data.modality == "image"  # digits, detected


def test_register_a_modality_with_a_recipe_file(toy: None, tmp_path: Path) -> None:
    assert modality_names() == (*BUILT_IN, "toy")
    assert default_recipe("toy") == "toy-small" and "toy-small" in recipe_names()
    assert recipe_overrides("toy-small")["data"] == {"modality": "toy"}
    data = str(write_toy(tmp_path / "v.toy.npz"))
    assert detect_modality(data) == "toy"
    cfg = resolve_modality(build_config(recipe_overrides("toy-small"), {"data": {"path": data}}))
    assert cfg.data.modality == "toy"
    assert cfg.options == {"toy": {"hidden": 32, "noise": 0.1, "mask": 0.2}}
    _, fitted = modality_for(cfg).open(data, split="train")
    modality = modality_for(cfg, fitted)
    assert isinstance(modality, ToyModality) and modality.fitted is fitted
    # its settings come from options.toy, like any --set
    small = build_config(_dict(cfg), parse_assignment("options.toy.hidden=8"))
    assert modality_for(small, fitted).build_model().feature_dim == 8
    with pytest.raises(UserError, match="options.toy.depth"):
        modality_for(build_config(_dict(cfg), parse_assignment("options.toy.depth=3")))


def test_the_registry_is_restored_after_the_toy_fixture() -> None:
    assert "toy" not in modality_names() and "toy-small" not in recipe_names()


def test_registration_errors(tmp_path: Path) -> None:
    (tmp_path / "cpu-small.yaml").write_text("train: {epochs: 1}\n")
    with restored_registry():
        with pytest.raises(ValueError, match="cannot name"):
            register_modality("auto", ToyModality)
        with pytest.raises(ValueError, match="registered already"):
            register_modality("image", ToyModality)
        with pytest.raises(ValueError, match="unknown recipe"):
            register_modality("toy", ToyModality, recipe="toy-large")
        with pytest.raises(TypeError, match="called 'toy'"):
            register_modality("vectors", ToyModality)
        with pytest.raises(ValueError, match="exists already"):
            register_modality("toy", ToyModality, recipe=tmp_path / "cpu-small.yaml")
        register_modality("toy", "tests.modalities.toy:ToyModality")  # imported on first use
        assert modality_type("toy") is ToyModality and default_recipe("toy") == "toy-small"
        register_modality("toy", ToyModality)  # the same class again: no error


def test_entry_points_register_installed_modalities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "simclr_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: simclr-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[simclr.modalities]\ntoy = tests.modalities.toy:ToyModality\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with restored_registry():
        simclr.modalities._entry_points_loaded = False
        assert modality_names() == (*BUILT_IN, "toy")
        assert modality_type("toy") is ToyModality
        assert default_recipe("toy") == "toy-small"  # the class's recipe attribute
        assert detect_modality(str(write_toy(tmp_path / "v.toy.npz"))) == "toy"
    assert "toy" not in modality_names()


def test_image_only_protocols_are_refused_by_other_modalities(toy: None, tmp_path: Path) -> None:
    cfg = build_config(recipe_overrides("toy-small"))
    with pytest.raises(UserError, match="for a toy checkpoint use knn"):
        modality_for(cfg).classifier_data(str(tmp_path), split="train")


def test_the_command_line_trains_and_scores_a_registered_modality(
    toy: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simclr.cli import main

    data = str(write_toy(tmp_path / "vectors.toy.npz", n=40))
    run = tmp_path / "run"
    argv = ["pretrain", "--data", data, "--out", str(run), "--max-steps", "2", "--device", "cpu"]
    assert main([*argv, "--set", "options.toy.hidden=8", "--set", "train.progress=false"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2
    saved = (run / "config.yaml").read_text()  # detected as toy: its recipe applies
    assert "modality: toy" in saved and "backbone: toy-mlp" in saved and "hidden: 8" in saved
    assert main(["knn", str(run), "--train-data", data, "--test-data", data]) == 0
    knn = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= knn["top1"] <= 100 and "standardised" in knn["protocol"]["preprocessing"]
    assert main(["finetune", str(run), "--train-data", data, "--test-data", data,
                 "--label-fraction", "0.5"]) == 2  # fmt: skip
    assert "for a toy checkpoint use knn" in capsys.readouterr().err
    out = tmp_path / "views.png"
    assert main(["views", "--data", data, "--out", str(out), "--modality", "toy"]) == 0
    assert out.with_suffix(".txt").read_text().startswith("vectors.toy.npz#")
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert state["fitted"]["dim"] == 6


def _dict(cfg: object) -> dict:
    from simclr.config import to_dict

    return to_dict(cfg)  # type: ignore[arg-type]
