"""Distillation: the loss against the paper's formula, learning, resume, and the teacher file."""

import os
import signal
import sys

import numpy as np
import pytest
import torch

from simclr.checkpoint import load_checkpoint
from simclr.config import build_config
from simclr.data.datasets import TensorImages
from simclr.errors import UserError
from simclr.evaluate.classifier import ClassifierSaving, ClassifierTraining
from simclr.evaluate.distill import DistillationLoss, distill
from simclr.evaluate.finetune import (
    build_classifier,
    classifier_record,
    finetune,
    load_classifier,
)

from ..test_train import TINY

CONFIG = build_config(TINY)


def _log_softmax(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _reference_loss(student, teacher, labels, t, label_weight):
    """The v2 paper's loss, per-term batch means, in float64 numpy."""
    p_teacher = np.exp(_log_softmax(teacher / t))
    distillation = -(p_teacher * _log_softmax(student / t)).sum(axis=1).mean()
    labelled = labels >= 0
    supervised = 0.0
    if labelled.any():
        log_p = _log_softmax(student)[labelled]
        supervised = -log_p[np.arange(labelled.sum()), labels[labelled]].mean()
    return (1 - label_weight) * distillation + label_weight * supervised


class _FixedLogits(torch.nn.Module):
    """A 'teacher' whose logits are a fixed table indexed by the image's first pixel."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, images):
        return self.table[images[:, 0, 0, 0].long()]


@pytest.mark.parametrize(
    ("t", "label_weight", "labels"),
    [(1.0, 0.0, [0, 1, 2, 1, 0]), (2.5, 0.0, [-1] * 5), (0.5, 0.3, [0, -1, 2, -1, 1])],
)
def test_loss_matches_the_papers_formula(t, label_weight, labels):
    generator = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(5, 3, generator=generator, dtype=torch.float64) * 3
    student_logits = torch.randn(5, 3, generator=generator, dtype=torch.float64) * 3
    images = torch.arange(5, dtype=torch.float64).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    labels = torch.tensor(labels)
    loss = DistillationLoss(_FixedLogits(teacher_logits), temperature=t, label_weight=label_weight)
    value = loss(student_logits, labels, images)
    expected = _reference_loss(
        student_logits.numpy(), teacher_logits.numpy(), labels.numpy(), t, label_weight
    )
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_loss_is_smallest_at_the_teachers_logits_and_the_teacher_gets_no_gradient():
    teacher = torch.nn.Linear(4, 3)
    loss = DistillationLoss(teacher, temperature=2.0)
    images = torch.randn(6, 4)
    target = teacher(images).detach()
    at_teacher = loss(target, torch.full((6,), -1), images)
    elsewhere = loss(target + torch.randn(6, 3), torch.full((6,), -1), images)
    assert at_teacher < elsewhere
    student = target.clone().requires_grad_(True)
    loss(student + 0.5, torch.full((6,), -1), images).backward()
    assert teacher.weight.grad is None and student.grad is not None
    assert not loss.train().teacher.training  # eval mode, always


@pytest.mark.parametrize(("t", "w"), [(0.0, 0.0), (1.0, 1.5), (1.0, -0.1)])
def test_bad_temperature_or_label_weight_is_a_user_error(t, w):
    with pytest.raises(UserError):
        DistillationLoss(torch.nn.Identity(), temperature=t, label_weight=w)


def _images(n=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % 3
    images[:, labels.tolist(), :, :] = 255  # a visible class signal
    names = [f"array/{i}" for i in range(n)]
    return TensorImages(images, labels, ["a", "b", "c"], names)


def _training(**overrides):
    base = {
        "epochs": 6,
        "batch_size": 8,
        "lr": 2.0,
        "num_workers": 0,
        "precision": "fp32",
        "weight_decay": 0.0,
    }
    return ClassifierTraining(**(base | overrides))


def _teacher():
    torch.manual_seed(3)
    teacher = build_classifier(None, CONFIG, num_classes=3, from_scratch=True, seed=3)
    torch.nn.init.normal_(teacher.fc.weight, std=0.5)
    return teacher.eval()


def _agreement(student, teacher, dataset):
    x = dataset.images.float() / 255
    student.eval()
    with torch.no_grad():
        return (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()


def test_the_student_learns_the_teachers_predictions():
    dataset, teacher = _images(), _teacher()
    student = build_classifier(None, CONFIG, num_classes=3, from_scratch=True, seed=1)
    before = _agreement(student, teacher, dataset)
    result = distill(teacher, student, dataset, dataset, CONFIG.augment, _training())
    after = _agreement(student, teacher, dataset)
    assert after > max(before, 0.6), (before, after)
    assert set(result) >= {"student", "teacher", "steps", "protocol"}
    assert result["steps"] == 36 and result["protocol"]["temperature"] == 1.0
    assert 0 <= result["student"]["top1"] <= 100


def test_a_stopped_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch):
    dataset, teacher = _images(), _teacher()
    record = classifier_record(CONFIG, ["a", "b", "c"], 0)

    def student():
        return build_classifier(None, CONFIG, num_classes=3, from_scratch=True, seed=1)

    whole = student()
    distill(teacher, whole, dataset, None, CONFIG.augment, _training(epochs=2))

    stopped, calls = student(), []

    class StopAtStep5(DistillationLoss):
        def forward(self, logits, labels, images):
            calls.append(1)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would
            return super().forward(logits, labels, images)

    saving = ClassifierSaving(tmp_path / "latest.pt", record, every=100)
    module = sys.modules["simclr.evaluate.distill"]  # the package exports a function of that name
    monkeypatch.setattr(module, "DistillationLoss", StopAtStep5)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, stopped, dataset, None, CONFIG.augment, _training(epochs=2), saving=saving)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "latest.pt")
    assert state["step"] == 5 and state["kind"] == "classifier"

    resumed = student()
    saving = ClassifierSaving(tmp_path / "latest.pt", record, every=100, resume=state)
    distill(teacher, resumed, dataset, None, CONFIG.augment, _training(epochs=2), saving=saving)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 12


def test_a_student_with_other_outputs_is_refused():
    dataset, teacher = _images(), _teacher()
    student = build_classifier(None, CONFIG, num_classes=4, from_scratch=True)
    with pytest.raises(UserError, match="outputs"):
        distill(teacher, student, dataset, None, CONFIG.augment, _training())


def test_finetune_writes_a_classifier_that_loads_as_the_same_network(tmp_path):
    dataset = _images()
    path = tmp_path / "teacher.pt"
    training = _training(epochs=1, lr=0.5)
    result = finetune(
        None, CONFIG, dataset, dataset, fraction=0.5, training=training, from_scratch=True,
        keep_projection_layers=1, save_to=path,
    )  # fmt: skip
    assert result["classifier_checkpoint"] == str(path)
    loaded, config, state = load_classifier(path)
    assert config.model == CONFIG.model and state["classes"] == ["a", "b", "c"]
    assert len(loaded.head_layers) > 0  # the kept projection layer came back
    x = dataset.images[:4].float() / 255
    again, _, _ = load_classifier(path)
    assert torch.equal(loaded(x), again(x)) and loaded(x).shape == (4, 3)


def test_a_pretraining_checkpoint_is_not_a_teacher(tmp_path):
    torch.save({"model": {}, "config": {}, "step": 0, "schema": 1}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="not a classifier checkpoint"):
        load_classifier(tmp_path / "x.pt")
