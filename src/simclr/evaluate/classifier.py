"""The classifier trainer shared by fine-tuning and the SGD linear probe.

Both protocols train a zero-initialised linear layer (with or without the backbone below it)
with cross-entropy, a random resized crop and flip per image every step, SGD or LARS and a
cosine schedule without warmup, then score it on the test set with the evaluation
preprocessing. They differ only in what they freeze and in the items they see:
:func:`simclr.evaluate.finetune.finetune` trains everything on a class-balanced label subset,
:func:`simclr.evaluate.linear.linear_probe_sgd` trains the linear layer on every item over the
frozen backbone. The settings are one :class:`ClassifierTraining`, the outcome one
:class:`ClassifierRun`, and :func:`classifier_protocol` writes the protocol record they share.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from simclr.augment import functional as AF
from simclr.augment.loader import TwoCrops
from simclr.augment.params import sample_view_params
from simclr.clock import Budget, StepClock
from simclr.config import AugmentConfig, OptimConfig
from simclr.data.datasets import FileImages, ImageDataset, TensorImages
from simclr.data.loading import epoch_batches
from simclr.errors import UserError
from simclr.evaluate.accuracy import topk_accuracy
from simclr.evaluate.features import extract_features
from simclr.optim import build_optimizer, lr_at, set_lr
from simclr.runtime import autocast_dtype, ignore_stop_signals, resolve_precision

__all__ = [
    "Classifier",
    "ClassifierRun",
    "ClassifierTraining",
    "classifier_augment",
    "classifier_protocol",
    "evaluate_classifier",
    "train_and_score",
    "train_classifier",
    "zero_linear",
]


LR_SCALING_WORDS = {
    "linear": "linear (lr x batch / 256)",
    "sqrt": "sqrt (lr x sqrt(batch))",
    "none": "none",
}


@dataclass(frozen=True)
class ClassifierTraining:
    """How a classifier is trained: budget, optimizer, seed, precision and loading."""

    epochs: int
    """Passes over the training items (at most; ``max_time`` may stop earlier)."""
    batch_size: int
    """Images per step (at most the number of items)."""
    lr: float
    """Base learning rate, scaled by ``lr_scaling`` for the batch size actually used."""
    optimizer: str = "sgd"
    """``sgd`` (momentum, no Nesterov) or ``lars`` (v2 fine-tunes with LARS). The new linear
    layer gets neither weight decay nor the LARS adaptation, as in the official code."""
    momentum: float = 0.9
    nesterov: bool = False
    """Nesterov momentum (the official linear evaluation's SGD uses it)."""
    weight_decay: float = 0.0
    """On weights with more than one dimension."""
    seed: int = 0
    """Data order and augmentation (and, in fine-tuning, the label subset and fresh weights)."""
    max_time: float | None = None
    """Seconds of training at most; the cosine then spans the budget."""
    precision: str = "auto"
    """``auto`` (:func:`simclr.runtime.resolve_precision`), ``bf16``, ``fp16`` or ``fp32``."""
    num_workers: int = 2
    """Loader processes for image files."""
    lr_scaling: str = "linear"
    """``linear``: lr x batch / 256; ``sqrt``: lr x sqrt(batch) (v2 fine-tuning: 0.005)."""

    def __post_init__(self) -> None:
        if self.lr_scaling not in LR_SCALING_WORDS:
            raise UserError(f"lr scaling must be one of {', '.join(LR_SCALING_WORDS)}")

    def optim_config(self) -> OptimConfig:
        """The optimizer section of these settings."""
        return OptimConfig(
            name=self.optimizer,
            lr=self.lr,
            lr_scaling=self.lr_scaling,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            nesterov=self.nesterov,
        )


@dataclass(frozen=True)
class ClassifierRun:
    """What :func:`train_classifier` did."""

    steps: int
    epochs_done: float
    """Steps over steps per epoch, rounded to 3 decimals."""
    batch_size: int
    """The batch size used (at most the number of items)."""
    peak_lr: float
    """The learning rate after scaling, where the cosine starts."""
    train_seconds: float
    final_loss: float
    """Cross-entropy of the last step, rounded to 4 decimals."""
    stopped_by: str
    """``epochs`` or ``time``."""
    precision: str
    """The resolved precision (``bf16``, ``fp16`` or ``fp32``)."""


class Classifier(nn.Module):
    """Backbone f, optionally the first projection-head layers, then one linear layer.

    With ``freeze_backbone`` the backbone runs without gradient and stays in eval mode even when
    the classifier trains (batch norm uses and keeps its running statistics): the linear
    evaluation protocol. Otherwise everything trains (fine-tuning).

    Shape:
        ``[B, 3, S, S]`` -> logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head_layers: nn.Module,
        fc: nn.Linear,
        *,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_layers = head_layers
        self.fc = fc
        self.freeze_backbone = freeze_backbone

    def forward(self, images: Tensor) -> Tensor:
        """Class logits of a batch of images."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            features = self.backbone(images).flatten(1)
        logits: Tensor = self.fc(self.head_layers(features))
        return logits

    def train(self, mode: bool = True) -> Classifier:
        """Set train mode, except for a frozen backbone, which stays in eval mode."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def trainable(self) -> nn.Module:
        """The part the optimizer updates: everything, or all but a frozen backbone."""
        return nn.ModuleList([self.head_layers, self.fc]) if self.freeze_backbone else self


def zero_linear(in_features: int, num_classes: int) -> nn.Linear:
    """The new linear layer of both protocols, weights and bias zero (``classifier_init``)."""
    fc = nn.Linear(in_features, num_classes)
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    return fc


def classifier_augment(augment: AugmentConfig) -> AugmentConfig:
    """The recipe's random resized crop and flip, without colour, grayscale or blur.

    This is the augmentation of the paper's linear evaluation and of v2's fine-tuning.
    """
    return dataclasses.replace(augment, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def _labelled_batches(
    dataset: ImageDataset,
    items: Tensor,
    augment: AugmentConfig,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 images and labels of one shuffled epoch over ``items``.

    In-memory images come whole (cropped later on the device); files come as one random resized
    crop each, cut by loader workers with :class:`TwoCrops`'s crop (unreadable files dropped).

    Shape:
        images ``[B, 3, H, W]`` uint8, labels ``[B]`` int64.
    """
    batches = [items[b] for b in epoch_batches(len(items), batch_size, seed=seed, epoch=epoch)]
    if isinstance(dataset, TensorImages):
        for index in batches:
            yield dataset.images[index], dataset.labels[index]
        return
    assert isinstance(dataset, FileImages)
    yield from DataLoader(
        dataset.with_transform(TwoCrops(augment).crop),
        batch_sampler=[b.tolist() for b in batches],
        num_workers=num_workers,
        collate_fn=_stack_labelled,
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
        worker_init_fn=ignore_stop_signals,
    )


def _stack_labelled(batch: list[tuple[Tensor | None, int]]) -> tuple[Tensor, Tensor]:
    readable = [(image, label) for image, label in batch if image is not None]
    if not readable:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    return torch.stack([i for i, _ in readable]), torch.tensor([lab for _, lab in readable])


def _crop_flip(
    images: Tensor, augment: AugmentConfig, generator: torch.Generator, *, crop: bool
) -> Tensor:
    """Random resized crop (when not cut already) and flip, batched on the images' device."""
    x = images.float().div_(255)
    params = sample_view_params(len(x), x.shape[-2], x.shape[-1], augment, generator)
    if crop:  # bicubic overshoot clamped back into [0, 1]
        cropped = AF.resized_crop(
            x, params.boxes, augment.size, params.flip, interpolation=augment.interpolation
        )
        return cropped if augment.interpolation == "bilinear" else cropped.clamp_(0, 1)
    return AF.hflip(x, params.flip)


class _Update:
    """One optimisation step: crop and flip, forward, cross-entropy, backward, optimizer step.

    Built in the order the trainer has always used (optimizer, scaler, then the augmentation
    generator seeded with ``training.seed``), so a seed gives the same numbers.
    """

    def __init__(
        self,
        model: Classifier,
        dataset: ImageDataset,
        augment: AugmentConfig,
        training: ClassifierTraining,
        *,
        batch_size: int,
        device: torch.device,
        precision: str,
    ) -> None:
        self.model, self.augment, self.device = model, augment, device
        self.optimizer = build_optimizer(
            model.trainable(), training.optim_config(), batch_size, exclude=model.fc.parameters()
        )
        self.peak_lr = float(self.optimizer.param_groups[0]["peak_lr"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.dtype = autocast_dtype(precision)
        self.generator = torch.Generator(device=device).manual_seed(training.seed)
        self.crop_on_device = isinstance(dataset, TensorImages)

    def __call__(self, images: Tensor, labels: Tensor, lr: float) -> Tensor:
        """Train on one batch at learning rate ``lr``; the loss (a scalar on the device)."""
        set_lr(self.optimizer, lr)
        x = _crop_flip(
            images.to(self.device), self.augment, self.generator, crop=self.crop_on_device
        )
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), labels.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss


def _check_budget(num_items: int, training: ClassifierTraining) -> None:
    """Raise a :class:`UserError` unless there are 2 items, an epoch and 2 images per batch."""
    if num_items < 2:
        raise UserError(f"training a classifier needs at least 2 labelled items, got {num_items}")
    if training.epochs < 1 or training.batch_size < 2:
        raise UserError(
            f"epochs must be >= 1 and batch size >= 2 (got {training.epochs}, "
            f"{training.batch_size})"
        )


def train_classifier(
    model: Classifier,
    dataset: ImageDataset,
    items: Tensor,
    augment: AugmentConfig,
    training: ClassifierTraining,
    *,
    device: torch.device,
) -> ClassifierRun:
    """Train ``model`` with cross-entropy on ``dataset[items]``, cosine schedule, no warmup.

    Each step draws a random resized crop and flip per image (``augment``, from a generator
    seeded with ``training.seed``); the epoch order is :func:`epoch_batches` of ``(seed,
    epoch)``. The learning rate is ``training.lr`` scaled linearly for the batch size actually
    used, decayed by a cosine over the planned steps; with ``max_time`` the plan follows the
    step time measured by :class:`simclr.clock.StepClock`, as in pretraining.

    Args:
        model: The classifier; moved to ``device`` and trained in place.
        dataset: Labelled images.
        items: Positions in ``dataset`` to train on. Shape: ``[n]`` int64.
        augment: Crop size and ranges (:func:`classifier_augment`).
        training: Budget, optimizer, seed, precision and loader settings.
        device: Where to train.

    Raises:
        UserError: fewer than 2 items, no readable image, or a loss that stops being finite.
    """
    _check_budget(len(items), training)
    torch.manual_seed(training.seed)  # the loader workers' crops of files
    batch = min(training.batch_size, len(items))
    budget = Budget(len(items) // batch, training.epochs, None, training.max_time)
    precision = resolve_precision(training.precision, device)
    model.to(device).train()
    update = _Update(
        model, dataset, augment, training, batch_size=batch, device=device, precision=precision
    )
    clock = StepClock()
    step, loss = 0, torch.tensor(float("nan"))
    while not budget.done(step, clock.elapsed()):
        step_at_epoch_start = step
        for images, labels in _labelled_batches(
            dataset,
            items,
            augment,
            batch_size=batch,
            seed=training.seed,
            epoch=step // budget.steps_per_epoch,
            num_workers=training.num_workers,
        ):
            if len(images) < 2:  # batch norm needs two; only unreadable files get here
                continue
            total_steps = budget.planned_steps(step, clock.elapsed(), clock.seconds_per_step(step))
            loss = update(images, labels, lr_at(step, total_steps, 0, update.peak_lr))
            step += 1
            clock.step_done(step)
            if budget.done(step, clock.elapsed()):
                break
        if step == step_at_epoch_start:
            raise UserError("no readable training images (every file failed to decode)")
    final_loss = loss.item()
    if not math.isfinite(final_loss):
        raise UserError(f"the classifier's loss became {final_loss}; lower the learning rate")
    return ClassifierRun(
        steps=step,
        epochs_done=round(step / budget.steps_per_epoch, 3),
        batch_size=batch,
        peak_lr=update.peak_lr,
        train_seconds=round(clock.elapsed(), 2),
        final_loss=round(final_loss, 4),
        stopped_by="epochs" if step >= budget.step_limit else "time",
        precision=precision,
    )


def evaluate_classifier(
    model: nn.Module,
    test_set: ImageDataset,
    *,
    size: int,
    device: torch.device,
    num_workers: int = 2,
    batch_size: int = 512,
) -> dict[str, float]:
    """Top-1/top-5 on ``test_set``: eval mode, evaluation preprocessing, every readable item."""
    from simclr.modalities.image import image_modality

    modality = image_modality(size, num_workers=num_workers)
    logits = extract_features(
        model, test_set, modality=modality, batch_size=batch_size, device=device
    )
    return topk_accuracy(logits.features, logits.labels)


def train_and_score(
    model: Classifier,
    train_set: ImageDataset,
    items: Tensor,
    test_set: ImageDataset,
    recipe: AugmentConfig,
    training: ClassifierTraining,
    *,
    device: torch.device,
    show_crop_ratio: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`train_classifier` on ``train_set[items]``, then :func:`evaluate_classifier`.

    Args:
        model: The classifier to train (in place).
        train_set: Labelled training images.
        items: Positions in ``train_set`` to train on.
        test_set: Labelled test images with the same classes.
        recipe: The pretraining view recipe; training uses its crop and flip
            (:func:`classifier_augment`).
        training: Epochs, batch size, learning rate, optimizer, budget and loading.
        device: Where to train and score.
        show_crop_ratio: See :func:`classifier_protocol`.

    Returns:
        The result, ``top1``/``top5`` (percent on ``test_set``, images resized to the recipe's
        size) and ``train_seconds``; and the shared protocol record (:func:`classifier_protocol`).
    """
    augment = classifier_augment(recipe)
    run = train_classifier(model, train_set, items, augment, training, device=device)
    scores = evaluate_classifier(
        model, test_set, size=augment.size, device=device, num_workers=training.num_workers
    )
    protocol = classifier_protocol(
        training,
        run,
        augment,
        num_train=len(train_set),
        num_test=len(test_set),
        show_crop_ratio=show_crop_ratio,
    )
    return {**scores, "train_seconds": run.train_seconds}, protocol


def classifier_protocol(
    training: ClassifierTraining,
    run: ClassifierRun,
    augment: AugmentConfig,
    *,
    num_train: int,
    num_test: int,
    show_crop_ratio: bool = True,
) -> dict[str, Any]:
    """The protocol record both classifier protocols share (each adds its own keys).

    Args:
        training: The settings trained with.
        run: What training did.
        augment: The crop and flip trained with.
        num_train: Items of the training set (all of it, not only those trained on).
        num_test: Items of the test set.
        show_crop_ratio: Name the crop's aspect-ratio range in ``augmentation``. The linear
            probe's record has always left it out; kept so that saved results still compare.
    """
    ratio = f", ratio {tuple(round(r, 4) for r in augment.crop_ratio)}" if show_crop_ratio else ""
    size = augment.size
    return {
        "seed": training.seed,
        "epochs": training.epochs,
        "epochs_done": run.epochs_done,
        "steps": run.steps,
        "stopped_by": run.stopped_by,
        "max_time": training.max_time,
        "batch_size": run.batch_size,
        "lr": training.lr,
        "lr_scaling": LR_SCALING_WORDS[training.lr_scaling],
        "classifier_optimisation": "no weight decay and no LARS adaptation on the new linear layer",
        "peak_lr": run.peak_lr,
        "schedule": "cosine, no warmup",
        "optimizer": training.optimizer,
        "momentum": training.momentum,
        "nesterov": training.nesterov,
        "weight_decay": training.weight_decay,
        "classifier_init": "zeros",
        "augmentation": f"random resized crop (scale {tuple(augment.crop_scale)}{ratio}) to "
        f"{size} px, horizontal flip",
        "preprocessing": f"test: resize to {size} px (shorter side to {size}/0.875 and centre "
        "crop when larger); no augmentation",
        "precision": run.precision,
        "final_loss": run.final_loss,
        "num_train": num_train,
        "num_test": num_test,
    }
