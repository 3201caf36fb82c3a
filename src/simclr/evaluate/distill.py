"""Distillation, stage 3 of SimCLR v2: a fine-tuned teacher labels images for a student.

Section 2 of arXiv 2006.10029. The teacher (a classifier checkpoint written by ``simclr
finetune`` or by an earlier distillation) sees each random resized crop and flip that the
student sees, and the student is trained to match its temperature-scaled class distribution:

    L = -(1 - a) sum_{(x, y) labelled} log P_S(y | x)
        - a sum_x sum_c P_T(c | x; t) log P_S(c | x; t)

with ``P(y | x; t) = softmax(logits / t)``. The paper uses ``t = 1`` and mostly ``a = 1`` (no
labels); here the weight of the labelled term, ``1 - a``, is ``label_weight`` (0 by default), and
each term is a mean over its items of the batch (unlabelled items, label -1, count only in the
distillation term). As in the paper there is no ``t**2`` factor on the distillation term.

The student is any classifier (:class:`simclr.evaluate.classifier.Classifier`): the teacher's
architecture or a smaller one, from fresh weights or from a pretrained encoder. It trains with
:func:`simclr.evaluate.classifier.train_classifier`, the loop of fine-tuning, here with
checkpoints, resume, metrics and a progress bar (:class:`ClassifierSaving`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.config import AugmentConfig
from simclr.data.datasets import ImageDataset
from simclr.errors import UserError
from simclr.evaluate.classifier import (
    Classifier,
    ClassifierSaving,
    ClassifierTraining,
    classifier_augment,
    classifier_protocol,
    evaluate_classifier,
    train_classifier,
)

__all__ = ["DistillationLoss", "distill"]


class DistillationLoss(nn.Module):
    """The v2 distillation loss of a student's logits against a frozen teacher's.

    Args:
        teacher: The fine-tuned classifier; kept in eval mode (batch norm uses its running
            statistics) and run without gradient on the student's own input.
        temperature: ``t`` of both softmaxes (v2: 1).
        label_weight: Weight of the cross-entropy with the labels (``1 - a`` in the paper's
            notation); 0 ignores the labels.

    Shape:
        ``forward(student_logits [B, C], labels [B] (-1: unlabelled), images [B, ...])`` ->
        scalar.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 1.0, label_weight: float = 0.0):
        super().__init__()
        if temperature <= 0:
            raise UserError(f"distillation temperature must be > 0, got {temperature}")
        if not 0 <= label_weight <= 1:
            raise UserError(f"label weight must be in [0, 1], got {label_weight}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.label_weight = label_weight

    def train(self, mode: bool = True) -> DistillationLoss:
        """The teacher stays in eval mode whatever the mode of the module around it."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, logits: Tensor, labels: Tensor, images: Tensor) -> Tensor:
        """The loss of one batch (the teacher runs in the caller's autocast)."""
        with torch.no_grad():
            teacher_logits = self.teacher(images).float()
        t = self.temperature
        soft_targets = F.softmax(teacher_logits / t, dim=1)
        student = logits.float()
        loss = F.cross_entropy(student / t, soft_targets)
        if self.label_weight > 0:
            labelled = (labels >= 0).sum().clamp_min(1)  # no host sync: 0 labelled -> term 0
            supervised = F.cross_entropy(student, labels, ignore_index=-1, reduction="sum")
            loss = (1 - self.label_weight) * loss + self.label_weight * supervised / labelled
        return loss


def distill(
    teacher: Classifier,
    student: Classifier,
    train_set: ImageDataset,
    test_set: ImageDataset | None,
    recipe: AugmentConfig,
    training: ClassifierTraining,
    *,
    temperature: float = 1.0,
    label_weight: float = 0.0,
    device: torch.device | str = "cpu",
    saving: ClassifierSaving | None = None,
) -> dict[str, Any]:
    """Train ``student`` to match ``teacher`` on every image of ``train_set``; score both.

    Args:
        teacher: The fine-tuned classifier (not modified).
        student: The classifier to train, in place; its outputs must match the teacher's.
        train_set: The images to distil on; labels are needed only with ``label_weight``.
        test_set: Labelled images to score teacher and student on (``None``: no scores).
        recipe: The view recipe; training uses its crop and flip (:func:`classifier_augment`),
            scoring resizes to its size.
        training: Epochs, batch size, learning rate, optimizer, budget, seed and loading.
        temperature: Softmax temperature of teacher and student (v2: 1).
        label_weight: Weight of the labelled cross-entropy term (v2 mostly: 0).
        device: Where to train and score.
        saving: Checkpoints, metrics, progress and resume of the student's training.

    Returns:
        ``student`` and ``teacher`` top-1/top-5 (percent on ``test_set``, when given),
        ``train_seconds``, ``steps`` and the ``protocol``.

    Raises:
        UserError: different numbers of classes, labels asked for but missing, or what
            :func:`train_classifier` raises.
    """
    device = torch.device(device)
    if teacher.fc.out_features != student.fc.out_features:
        raise UserError(
            f"the student has {student.fc.out_features} outputs, the teacher "
            f"{teacher.fc.out_features}"
        )
    if label_weight > 0 and not train_set.has_labels:
        raise UserError("a label weight above 0 needs labelled training images")
    augment = classifier_augment(recipe)
    objective = DistillationLoss(
        teacher.to(device), temperature=temperature, label_weight=label_weight
    )
    items = torch.arange(len(train_set))
    run = train_classifier(
        student, train_set, items, augment, training, device=device,
        objective=objective, saving=saving,
    )  # fmt: skip
    result: dict[str, Any] = {"train_seconds": run.train_seconds, "steps": run.steps}
    if test_set is not None:
        for name, model in (("student", student), ("teacher", teacher)):
            result[name] = evaluate_classifier(
                model, test_set, size=augment.size, device=device, num_workers=training.num_workers
            )
    result["protocol"] = {
        "method": "distillation of a fine-tuned teacher on unlabelled images (SimCLR v2)",
        "loss": "(1 - label_weight) x cross-entropy(softmax(teacher / t), softmax(student / t)) "
        "+ label_weight x cross-entropy with the labels; no t^2 factor",
        "temperature": temperature,
        "label_weight": label_weight,
        "teacher_input": "the student's own crop and flip, teacher in eval mode",
        **classifier_protocol(
            training,
            run,
            augment,
            num_train=len(train_set),
            num_test=0 if test_set is None else len(test_set),
        ),
    }
    return result
