import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import simclr.evaluate
from simclr import clock
from simclr.config import AugmentConfig
from simclr.data.datasets import array_dataset
from simclr.errors import UserError
from simclr.evaluate.classifier import (
    Classifier,
    ClassifierRun,
    ClassifierTraining,
    classifier_augment,
    classifier_protocol,
    train_classifier,
    zero_linear,
)

AUGMENT = classifier_augment(AugmentConfig(size=8))


def tiny_data(n=12):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return array_dataset(images, np.arange(n) % 2, size=8)


def tiny_classifier(*, freeze=False):
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1))
    return Classifier(backbone, nn.Sequential(), zero_linear(4, 2), freeze_backbone=freeze)


def training(**overrides):
    base = {"epochs": 2, "batch_size": 4, "lr": 0.5, "num_workers": 0, "precision": "fp32"}
    return ClassifierTraining(**(base | overrides))


def train(model, dataset, settings):
    items = torch.arange(len(dataset))
    return train_classifier(model, dataset, items, AUGMENT, settings, device=torch.device("cpu"))


def test_epoch_budget_counts_steps_and_is_seeded():
    dataset = tiny_data()
    torch.manual_seed(0)
    first, second = tiny_classifier(), tiny_classifier()
    second.load_state_dict(first.state_dict())
    run = train(first, dataset, training(seed=3))
    assert run.steps == 6 and run.epochs_done == 2.0 and run.stopped_by == "epochs"
    assert run.batch_size == 4 and run.peak_lr == pytest.approx(0.5 * 4 / 256)
    assert run.precision == "fp32"
    assert train(second, dataset, training(seed=3)).final_loss == run.final_loss
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name


def test_time_budget_through_the_faked_clock(monkeypatch):
    # Every training forward takes one fake second, so a 5 s budget allows exactly 5 steps.
    fake = {"now": 100.0}
    monkeypatch.setattr(clock, "now", lambda: fake["now"])
    model = tiny_classifier()

    def tick(*_):
        if model.training:
            fake["now"] += 1.0

    model.register_forward_hook(tick)
    run = train(model, tiny_data(), training(epochs=1000, max_time=5.0))
    assert run.stopped_by == "time"
    assert run.steps == 5 and run.train_seconds == 5.0
    assert run.epochs_done == round(5 / 3, 3)


def test_a_frozen_backbone_stays_in_eval_mode_and_unchanged():
    model = tiny_classifier(freeze=True)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train(model, tiny_data(), training())
    assert model.training and not model.backbone.training
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert torch.count_nonzero(model.fc.weight) > 0
    assert all(
        p is not q for p in model.trainable().parameters() for q in model.backbone.parameters()
    )


def test_too_few_items_or_a_bad_budget_raise():
    dataset = tiny_data()
    with pytest.raises(UserError, match="at least 2"):
        train_classifier(
            tiny_classifier(),
            dataset,
            torch.arange(1),
            AUGMENT,
            training(),
            device=torch.device("cpu"),
        )
    with pytest.raises(UserError, match="epochs must be"):
        train(tiny_classifier(), dataset, training(epochs=0))


def test_protocol_record_describes_the_settings_and_the_run():
    settings = training(optimizer="lars", weight_decay=1e-4, max_time=9.0, seed=4)
    run = ClassifierRun(
        steps=6,
        epochs_done=2.0,
        batch_size=4,
        peak_lr=0.0078125,
        train_seconds=1.5,
        final_loss=0.69,
        stopped_by="epochs",
        precision="fp32",
    )
    record = classifier_protocol(settings, run, AUGMENT, num_train=12, num_test=7)
    assert record["optimizer"] == "lars" and record["weight_decay"] == 1e-4
    assert record["seed"] == 4 and record["max_time"] == 9.0 and record["epochs"] == 2
    assert record["steps"] == 6 and record["epochs_done"] == 2.0 and record["peak_lr"] == 0.0078125
    assert record["final_loss"] == 0.69 and record["precision"] == "fp32"
    assert record["num_train"] == 12 and record["num_test"] == 7
    assert record["classifier_init"] == "zeros" and record["schedule"] == "cosine, no warmup"
    assert record["augmentation"] == (
        "random resized crop (scale (0.08, 1.0), ratio (0.75, 1.3333)) to 8 px, horizontal flip"
    )
    short = classifier_protocol(
        settings, run, AUGMENT, num_train=12, num_test=7, show_crop_ratio=False
    )
    assert (
        short["augmentation"] == "random resized crop (scale (0.08, 1.0)) to 8 px, horizontal flip"
    )


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_evaluate_module_imports_the_pretraining_loop(tmp_path):
    folder = Path(simclr.evaluate.__file__).parent
    modules = sorted(folder.rglob("*.py"))
    assert {p.name for p in modules} >= {"classifier.py", "finetune.py", "linear.py"}
    for path in modules:
        package = ".".join(("simclr", *path.parent.relative_to(folder.parent).parts))
        bad = {
            m for m in _imported_modules(path, package) if m.split(".")[:2] == ["simclr", "train"]
        }
        assert not bad, f"{path.name} imports {sorted(bad)}"
    # the check would see each way of writing the import
    for line in ("import simclr.train", "from simclr import train", "from ..train import Budget"):
        (tmp_path / "m.py").write_text(line + "\n")
        assert "simclr.train" in _imported_modules(tmp_path / "m.py", "simclr.evaluate"), line


def test_the_new_classifier_is_excluded_from_lars_adaptation_and_weight_decay(monkeypatch):
    # As the official head_supervised: a LARS-adapted zero-initialised layer barely trains
    # (tests/test_optim.py shows it); the trainer must hand the classifier to that exclusion.
    from simclr.evaluate import classifier as module

    seen = {}
    real = module.build_optimizer

    def spy(model, cfg, batch_size, *, exclude=()):
        optimizer = real(model, cfg, batch_size, exclude=exclude)
        seen["groups"] = optimizer.param_groups
        return optimizer

    monkeypatch.setattr(module, "build_optimizer", spy)
    model = tiny_classifier()
    train(model, tiny_data(), training(optimizer="lars", weight_decay=0.1))
    excluded = {id(p) for g in seen["groups"] if g["lars_exclude"] for p in g["params"]}
    assert {id(model.fc.weight), id(model.fc.bias)} <= excluded
    decayed = [g for g in seen["groups"] if g["weight_decay"] > 0]
    assert all(id(p) not in {id(model.fc.weight)} for g in decayed for p in g["params"])


def test_sqrt_scaling_and_unknown_rules():
    run = train(tiny_classifier(), tiny_data(), training(lr=0.005, lr_scaling="sqrt"))
    assert run.peak_lr == pytest.approx(0.005 * 4**0.5)
    with pytest.raises(UserError, match="lr scaling"):
        training(lr_scaling="cubic")
