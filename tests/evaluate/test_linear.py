from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from simclr.config import build_config
from simclr.data.datasets import build_dataset
from simclr.errors import UserError
from simclr.evaluate import linear as linear_module
from simclr.evaluate.classifier import ClassifierTraining
from simclr.evaluate.features import Features, extract_features
from simclr.evaluate.linear import linear_probe, linear_probe_sgd, validation_split
from simclr.modalities.image import image_modality
from simclr.models.simclr import SimCLR

from ..test_train import TINY


def clusters(num_classes, per_class, dim, seed, spread=1.0, scale=6.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99)) * scale
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    points = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return Features(points, labels, torch.arange(len(labels)))


def test_separable_clusters_reach_100_and_shuffled_labels_are_near_chance():
    train, test = clusters(5, 80, 16, seed=0), clusters(5, 40, 16, seed=1)
    result = linear_probe(train, test, c_grid=(0.01, 1.0))
    assert result["top1"] == 100.0 and result["top5"] == 100.0

    g = torch.Generator().manual_seed(2)
    noise = Features(train.features, train.labels[torch.randperm(400, generator=g)], train.index)
    shuffled = linear_probe(noise, test, c_grid=(0.01, 1.0))
    assert shuffled["top1"] < 40.0  # chance is 20%
    assert max(shuffled["val_top1"].values()) < 45.0


def test_validation_ties_are_broken_by_log_loss_not_by_the_weakest_c():
    train, test = clusters(5, 80, 16, seed=0), clusters(5, 40, 16, seed=1)
    result = linear_probe(train, test, c_grid=(0.001, 0.1, 10.0))
    assert set(result["val_top1"].values()) == {100.0}  # every C separates the validation part
    losses = result["val_log_loss"]
    assert losses["10"] < losses["0.1"] < losses["0.001"]
    assert result["best_c"] == 10.0


def test_choice_of_c_never_sees_the_test_set(monkeypatch):
    g = torch.Generator().manual_seed(3)
    train = clusters(4, 50, 8, seed=0, spread=4.0)  # overlapping: C matters
    test = clusters(4, 30, 8, seed=1, spread=4.0)
    fitted_sizes = []
    real_fit = LogisticRegression.fit

    def spy_fit(self, x, y, *args, **kwargs):
        fitted_sizes.append(len(y))
        return real_fit(self, x, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy_fit)
    result = linear_probe(train, test)
    assert set(fitted_sizes) == {180, 200}  # the fit part (90%) and the whole training set
    permuted = Features(test.features, test.labels[torch.randperm(120, generator=g)], test.index)
    again = linear_probe(train, permuted)
    assert again["best_c"] == result["best_c"] and again["val_top1"] == result["val_top1"]
    assert again["top1"] != result["top1"]
    assert result["val_top1"][f"{result['best_c']:g}"] == max(result["val_top1"].values())


def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    fit, val = validation_split(labels, 0.2, seed=0)
    assert len(val) == 20 and len(fit) == 80
    assert torch.equal(torch.cat([fit, val]).sort().values, torch.arange(100))
    assert torch.bincount(labels[val]).tolist() == [10, 6, 4]
    again_fit, again_val = validation_split(labels, 0.2, seed=0)
    assert torch.equal(val, again_val) and torch.equal(fit, again_fit)
    assert not torch.equal(val, validation_split(labels, 0.2, seed=1)[1])
    with pytest.raises(UserError):
        validation_split(torch.tensor([0, 0, 0, 1]), 0.3, seed=0)  # class 1 has one item


def test_protocol_fields_and_2048_dim_features():
    train, test = clusters(3, 20, 2048, seed=0), clusters(3, 10, 2048, seed=1)
    result = linear_probe(train, test, c_grid=(0.1, 1.0), val_fraction=0.25)
    assert result["top1"] == 100.0
    protocol = result["protocol"]
    for key in (
        "features",
        "standardised",
        "solver",
        "c_grid",
        "chosen_c",
        "val_fraction",
        "num_fit",
        "num_val",
        "num_train",
        "num_test",
        "seed",
        "max_iter",
    ):
        assert key in protocol
    assert protocol["num_fit"] + protocol["num_val"] == protocol["num_train"] == 60
    assert protocol["chosen_c"] == result["best_c"] and set(result["val_top1"]) == {"0.1", "1"}
    assert "2048-d" in protocol["features"]


def test_unlabelled_features_and_bad_grid_raise():
    train, test = clusters(3, 10, 4, seed=0), clusters(3, 5, 4, seed=1)
    unlabelled = Features(train.features, torch.full((30,), -1), train.index)
    with pytest.raises(UserError, match="no labels"):
        linear_probe(unlabelled, test)
    with pytest.raises(UserError, match="no labels"):
        linear_probe(train, Features(test.features, torch.full((15,), -1), test.index))
    with pytest.raises(UserError):
        linear_probe(train, test, c_grid=())


def test_both_probes_leave_the_backbone_unchanged(image_folder):
    torch.manual_seed(0)
    backbone = SimCLR.from_config(build_config(TINY).model).backbone  # in train mode
    for name, buffer in backbone.named_buffers():  # statistics a probe in train mode would move
        if "running" in name:
            buffer.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    dataset = build_dataset(str(image_folder), size=16, num_workers=0)

    features = extract_features(backbone, dataset, modality=image_modality(16, num_workers=0))
    logistic = linear_probe(features, features, val_fraction=0.25)
    training = replace(linear_module.SGD_PROBE_TRAINING, epochs=2, batch_size=8, num_workers=0)
    sgd = linear_probe_sgd(backbone, dataset, dataset, size=16, training=training)
    after = backbone.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert any("running_mean" in name for name in before)
    assert backbone.training  # restored to the mode it was in
    for result in (logistic, sgd):
        assert 0.0 <= result["top1"] <= result["top5"] <= 100.0
    assert sgd["protocol"]["steps"] == 6 and sgd["protocol"]["epochs_done"] == 2


def test_sgd_probe_learns_a_linearly_separable_feature(image_folder):
    # Mean colour separates the classes of the test folder, and survives crop and flip.
    encoder = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(3), nn.Flatten())
    encoder[1].running_mean.fill_(0.4)
    encoder[1].running_var.fill_(0.05)
    dataset = build_dataset(str(image_folder), size=16, num_workers=0)
    result = linear_probe_sgd(
        encoder,
        dataset,
        dataset,
        size=16,
        training=ClassifierTraining(
            epochs=8, batch_size=8, lr=8.0, num_workers=0, precision="fp32"
        ),
    )
    assert result["top1"] == 100.0
    assert result["protocol"]["classifier_init"] == "zeros"
    assert float(encoder[1].running_mean[0]) == pytest.approx(0.4)


def test_sgd_probe_needs_labels(tmp_path):
    images = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    unlabelled = build_dataset(str(tmp_path / "x.npy"), size=16)
    training = replace(linear_module.SGD_PROBE_TRAINING, epochs=1)
    with pytest.raises(UserError, match="no labels"):
        linear_probe_sgd(nn.Flatten(), unlabelled, unlabelled, size=16, training=training)


def test_default_grid_is_log_spaced():
    grid = np.log10(linear_module.DEFAULT_C_GRID)
    assert len(grid) == 6 and np.allclose(np.diff(grid), 1.0)
