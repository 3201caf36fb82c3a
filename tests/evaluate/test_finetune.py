import pytest
import torch
from torch import nn

from simclr.config import build_config
from simclr.data.datasets import FileImages, build_dataset
from simclr.errors import UserError
from simclr.evaluate.accuracy import topk_accuracy
from simclr.evaluate.classifier import ClassifierTraining
from simclr.evaluate.features import load_encoder
from simclr.evaluate.finetune import (
    balanced_subset,
    build_classifier,
    finetune,
    subset_names,
)
from simclr.train import pretrain

from ..test_train import TINY


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from ..conftest import write_image_folder

    root = tmp_path_factory.mktemp("finetune")
    folder = write_image_folder(root / "images")
    cfg = build_config(TINY, {"data": {"path": str(folder)}, "train": {"max_steps": 2}})
    pretrain(cfg, root / "run")
    dataset = build_dataset(str(folder), size=16, num_workers=0)
    return load_encoder(root / "run"), dataset


def settings(fraction=0.5, **overrides):
    base = {"epochs": 2, "batch_size": 4, "lr": 0.5, "num_workers": 0, "precision": "fp32"}
    return {"fraction": fraction, "training": ClassifierTraining(**(base | overrides))}


def test_balanced_subset_counts_determinism_and_seed():
    order = torch.randperm(63, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 30 + [3] * 3)[order]
    subset = balanced_subset(labels, 0.1, seed=0)
    assert torch.bincount(labels[subset]).tolist() == [1, 2, 3, 1]  # round(0.3) = 0, raised to 1
    assert torch.equal(subset, subset.sort().values) and len(subset.unique()) == len(subset)
    assert torch.equal(subset, balanced_subset(labels, 0.1, seed=0))
    assert not torch.equal(subset, balanced_subset(labels, 0.1, seed=1))
    assert torch.equal(balanced_subset(labels, 1.0, seed=5), torch.arange(63))
    assert torch.bincount(labels[balanced_subset(labels, 0.5, seed=0)]).tolist() == [5, 10, 15, 2]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_unit_interval_is_a_user_error(fraction, tiny_run):
    encoder, dataset = tiny_run
    with pytest.raises(UserError, match="fraction"):
        balanced_subset(torch.tensor([0, 1, 1]), fraction, seed=0)
    with pytest.raises(UserError, match="fraction"):
        finetune(encoder.model, encoder.config, dataset, dataset, **settings(fraction=fraction))


def test_finetune_trains_the_backbone_and_reports_sane_numbers(tiny_run):
    encoder, dataset = tiny_run
    pretrained = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    result = finetune(encoder.model, encoder.config, dataset, dataset, **settings())
    assert 0.0 <= result["top1"] <= 100.0 and result["top5"] == 100.0  # 3 classes
    assert result["subset_size"] == 12
    assert result["per_class_counts"] == {"class_0": 4, "class_1": 4, "class_2": 4}
    assert result["backbone_change"] > 0  # the backbone itself was trained
    for name, value in encoder.model.state_dict().items():  # on a copy
        assert torch.equal(value, pretrained[name]), name
    protocol = result["protocol"]
    assert protocol["steps"] == 6 and protocol["batch_size"] == 4
    assert protocol["peak_lr"] == pytest.approx(0.5 * 4 / 256)
    for key in (
        "label_fraction",
        "seed",
        "epochs",
        "lr",
        "optimizer",
        "keep_projection_layers",
        "from_scratch",
    ):
        assert key in protocol
    names = subset_names(dataset, balanced_subset(dataset.labels, 0.5, seed=0))
    assert len(names) == 12 and all(n.endswith(".png") for n in names)


def test_from_scratch_starts_from_fresh_weights(tiny_run):
    encoder, dataset = tiny_run
    copied = build_classifier(encoder.model, encoder.config, num_classes=3)
    fresh = build_classifier(None, encoder.config, num_classes=3, from_scratch=True)
    pretrained = encoder.model.backbone.state_dict()
    conv_weights = [k for k in pretrained if k.endswith("conv1.weight")]
    assert conv_weights
    for name in conv_weights:
        assert torch.equal(copied.backbone.state_dict()[name], pretrained[name])
        assert not torch.equal(fresh.backbone.state_dict()[name], pretrained[name])
    with pytest.raises(UserError):
        build_classifier(None, encoder.config, num_classes=3)
    result = finetune(
        None, encoder.config, dataset, dataset, from_scratch=True, **settings(optimizer="lars")
    )
    assert result["protocol"]["init"] == "random (from scratch)" and result["backbone_change"] > 0


def test_keep_projection_layers_puts_the_first_head_layer_in_the_model(tiny_run):
    encoder, dataset = tiny_run
    head = encoder.model.head.layers  # v2: Linear, BN, ReLU, Linear, BN, ReLU, Linear, BN
    classifier = build_classifier(
        encoder.model, encoder.config, num_classes=3, keep_projection_layers=1
    )
    kept = list(classifier.head_layers)
    assert [type(m) for m in kept] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert torch.equal(kept[0].weight, head[0].weight) and kept[0] is not head[0]
    assert classifier.fc.in_features == head[0].out_features
    assert torch.count_nonzero(classifier.fc.weight) == 0
    with torch.no_grad():
        assert classifier.eval()(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    none = build_classifier(encoder.model, encoder.config, num_classes=3)
    assert len(none.head_layers) == 0 and none.fc.in_features == encoder.model.feature_dim
    with pytest.raises(UserError, match="keep_projection_layers"):
        build_classifier(encoder.model, encoder.config, num_classes=3, keep_projection_layers=4)
    result = finetune(
        encoder.model, encoder.config, dataset, dataset, keep_projection_layers=1, **settings()
    )
    assert result["protocol"]["keep_projection_layers"] == 1


def test_time_budget_stops_early(tiny_run):
    encoder, dataset = tiny_run
    result = finetune(
        encoder.model,
        encoder.config,
        dataset,
        dataset,
        **settings(epochs=10_000, max_time=0.5),
    )
    assert result["protocol"]["stopped_by"] == "time"
    assert result["train_seconds"] < 5 and result["protocol"]["steps"] < 30_000


def test_topk_accuracy_against_a_direct_count():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert topk_accuracy(scores, torch.tensor([1, 1, 0])) == {"top1": 33.33, "top5": 100.0}
    classes = torch.tensor([7, 3, 5])  # columns stand for these labels
    assert topk_accuracy(scores, torch.tensor([3, 7, 5]), classes)["top1"] == 100.0


def test_mismatched_classes_raise(tiny_run, tmp_path):
    encoder, dataset = tiny_run
    from ..conftest import write_image_folder

    other = build_dataset(str(write_image_folder(tmp_path / "two", classes=2)), size=16)
    with pytest.raises(UserError, match="different classes"):
        finetune(encoder.model, encoder.config, dataset, other, **settings())


def test_finetune_on_image_files_crops_in_the_loader(tiny_run, tmp_path):
    from ..conftest import write_image_folder

    encoder, _ = tiny_run
    folder = write_image_folder(tmp_path / "big", per_class=4, size=40)
    files = build_dataset(str(folder), size=16, in_memory="never")
    assert isinstance(files, FileImages)
    result = finetune(
        encoder.model, encoder.config, files, files, **settings(fraction=1.0, batch_size=6)
    )
    assert result["subset_size"] == 12 and result["protocol"]["steps"] == 4
    assert 0.0 <= result["top1"] <= 100.0 and result["backbone_change"] > 0
