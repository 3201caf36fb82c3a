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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from simclr.augment import functional as AF
from simclr.augment.loader import TwoCrops
from simclr.augment.params import sample_view_params
from simclr.checkpoint import load_weights, nonfinite_tensors, save_checkpoint, state_tensors
from simclr.clock import Budget, StepClock
from simclr.config import AugmentConfig, OptimConfig
from simclr.data.datasets import FileImages, ImageDataset, TensorImages, stack_images
from simclr.data.loading import epoch_batches
from simclr.errors import UserError, first_line
from simclr.evaluate.accuracy import topk_accuracy
from simclr.evaluate.features import extract_features
from simclr.metrics import MetricsLog
from simclr.optim import build_optimizer, lr_at, set_lr
from simclr.runtime import StopRequest, autocast_dtype, ignore_stop_signals, resolve_precision

__all__ = [
    "Classifier",
    "ClassifierRun",
    "ClassifierSaving",
    "ClassifierTraining",
    "Objective",
    "classifier_augment",
    "classifier_protocol",
    "evaluate_classifier",
    "label_cross_entropy",
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
    start: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Images and labels of one shuffled epoch over ``items``, from its batch ``start``.

    In-memory images come whole (cropped later on the device); files come as one random resized
    crop each, cut by loader workers with :class:`TwoCrops`'s crop (unreadable files dropped).

    Shape:
        images ``[B, C, H, W]`` uint8 (float32 for high bit depths), labels ``[B]`` int64.
    """
    order = epoch_batches(len(items), batch_size, seed=seed, epoch=epoch)
    batches = [items[b] for b in order[start:]]
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
    return stack_images([i for i, _ in readable]), torch.tensor([lab for _, lab in readable])


def _crop_flip(
    images: Tensor, augment: AugmentConfig, generator: torch.Generator, *, crop: bool
) -> Tensor:
    """Random resized crop (when not cut already) and flip, batched on the images' device."""
    x = AF.to_float(images)
    params = sample_view_params(len(x), x.shape[-2], x.shape[-1], augment, generator)
    if crop:  # bicubic overshoot clamped back into [0, 1]
        cropped = AF.resized_crop(
            x, params.boxes, augment.size, params.flip, interpolation=augment.interpolation
        )
        return cropped if augment.interpolation == "bilinear" else cropped.clamp_(0, 1)
    return AF.hflip(x, params.flip)


Objective = Callable[[Tensor, Tensor, Tensor], Tensor]
"""A classifier's training loss from ``(logits, labels, images)``: cross-entropy with the
labels (:func:`label_cross_entropy`), or distillation from a teacher that sees the same images
(:class:`simclr.evaluate.distill.DistillationLoss`). Called inside the step's autocast."""


def label_cross_entropy(logits: Tensor, labels: Tensor, images: Tensor) -> Tensor:
    """Cross-entropy of the logits with the labels (the images are not needed)."""
    return F.cross_entropy(logits.float(), labels)


class _Update:
    """One optimisation step: crop and flip, forward, loss, backward, optimizer step.

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
        objective: Objective,
    ) -> None:
        self.model, self.augment, self.device, self.objective = model, augment, device, objective
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
            loss = self.objective(self.model(x), labels.to(self.device), x)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def state(self) -> dict[str, Any]:
        """What continuing this training needs: weights, optimizer, scaler, crop generator."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def restore(self, state: dict[str, Any], source: Path) -> None:
        """Load a :meth:`state` written by the same training.

        Raises:
            UserError: the saved state does not fit this network or optimizer.
        """
        load_weights(self.model, state["model"], source)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            self.generator.set_state(state["generator"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise UserError(f"cannot resume {source}: {first_line(err)}") from None


@dataclass
class ClassifierSaving:
    """Where a classifier's training keeps its state as it goes (``simclr distill``).

    A checkpoint every ``every`` steps, on a stop signal (Ctrl-C, SIGTERM: after the step) and
    at the end; a metrics record every ``log_every`` steps; a progress bar. With ``resume`` (a
    checkpoint written here) training continues at its step: the data order is a function of
    (seed, epoch) and the crop generator is saved, so in-memory data continues exactly as if
    never stopped (the crops of image files are cut by loader workers and differ after it).
    """

    checkpoint: Path
    record: dict[str, Any]
    """Written into every checkpoint besides the training state (config, classes...)."""
    every: int = 500
    log_every: int = 50
    metrics: MetricsLog | None = None
    progress: bool = False
    resume: dict[str, Any] | None = None


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
    objective: Objective = label_cross_entropy,
    saving: ClassifierSaving | None = None,
) -> ClassifierRun:
    """Train ``model`` on ``dataset[items]`` with a cosine schedule and no warmup.

    Each step draws a random resized crop and flip per image (``augment``, from a generator
    seeded with ``training.seed``); the epoch order is :func:`epoch_batches` of ``(seed,
    epoch)``. The learning rate is ``training.lr`` scaled for the batch size actually used,
    decayed by a cosine over the planned steps; with ``max_time`` the plan follows the step
    time measured by :class:`simclr.clock.StepClock`, as in pretraining.

    Args:
        model: The classifier; moved to ``device`` and trained in place.
        dataset: Images (labelled unless ``objective`` needs no labels).
        items: Positions in ``dataset`` to train on. Shape: ``[n]`` int64.
        augment: Crop size and ranges (:func:`classifier_augment`).
        training: Budget, optimizer, seed, precision and loader settings.
        device: Where to train.
        objective: The loss (default: cross-entropy with the labels).
        saving: Checkpoints, metrics, progress and resume (default: none of them).

    Raises:
        UserError: fewer than 2 items, no readable image, a loss or weights that stop being
            finite, or a checkpoint that cannot be written or resumed.
        KeyboardInterrupt: Ctrl-C or SIGTERM with ``saving``, after saving the last full step.
    """
    _check_budget(len(items), training)
    torch.manual_seed(training.seed)  # the loader workers' crops of files
    batch = min(training.batch_size, len(items))
    budget = Budget(len(items) // batch, training.epochs, None, training.max_time)
    precision = resolve_precision(training.precision, device)
    model.to(device).train()
    update = _Update(
        model,
        dataset,
        augment,
        training,
        batch_size=batch,
        device=device,
        precision=precision,
        objective=objective,
    )
    loop = _Loop(update, budget, saving or ClassifierSaving(Path(), {}, every=0, log_every=0))
    try:
        while not budget.done(loop.step, loop.clock.elapsed()):
            step_at_epoch_start = loop.step
            epoch, offset = divmod(loop.step, budget.steps_per_epoch)
            for images, labels in _labelled_batches(
                dataset,
                items,
                augment,
                batch_size=batch,
                seed=training.seed,
                epoch=epoch,
                num_workers=training.num_workers,
                start=offset,
            ):
                if len(images) < 2:  # batch norm needs two; only unreadable files get here
                    continue
                if loop.step_on(images, labels):
                    break
            if loop.step == step_at_epoch_start:
                raise UserError("no readable training images (every file failed to decode)")
        loop.finish()
    finally:
        loop.close()
    return ClassifierRun(
        steps=loop.step,
        epochs_done=round(loop.step / budget.steps_per_epoch, 3),
        batch_size=batch,
        peak_lr=update.peak_lr,
        train_seconds=round(loop.clock.elapsed(), 2),
        final_loss=round(loop.loss, 4),
        stopped_by="epochs" if loop.step >= budget.step_limit else "time",
        precision=precision,
    )


class _Loop:
    """The bookkeeping around :class:`_Update`: schedule, clock, checkpoints, log, stop.

    Without a checkpoint path (``saving.every == 0``) it only keeps the schedule and the clock.
    """

    def __init__(self, update: _Update, budget: Budget, saving: ClassifierSaving) -> None:
        self.update, self.budget, self.saving = update, budget, saving
        self.step, elapsed, per_step, self.loss = 0, 0.0, None, float("nan")
        if saving.resume is not None:
            state = saving.resume
            update.restore(state, saving.checkpoint)
            self.step, elapsed = int(state["step"]), float(state["elapsed_s"])
            per_step, self.loss = state.get("seconds_per_step"), float(state["loss"])
        self.saved_step = self.step if saving.resume is not None else None
        self.clock = StepClock(self.step, elapsed, per_step)
        self.last_loss: Tensor | None = None
        self.lr, self.total, self.logged_step = 0.0, budget.step_limit, -1
        self.stop = StopRequest() if saving.every else None
        self.bar = tqdm(
            total=budget.step_limit,
            initial=self.step,
            disable=not saving.progress,
            unit="step",
            dynamic_ncols=True,
        )

    def step_on(self, images: Tensor, labels: Tensor) -> bool:
        """Train one step; True when the budget is spent. Saves and logs on schedule."""
        elapsed = self.clock.elapsed()
        total = self.budget.planned_steps(
            self.step, elapsed, self.clock.seconds_per_step(self.step)
        )
        lr = lr_at(self.step, total, 0, self.update.peak_lr)
        self.last_loss = self.update(images, labels, lr)
        self.step += 1
        self.clock.step_done(self.step)
        self.bar.update(1)
        self.lr, self.total = lr, total
        saving = self.saving
        if saving.log_every and self.step % saving.log_every == 0:
            self._log()
        if saving.every and self.step % saving.every == 0:
            self.save()
        if self.stop is not None and self.stop.is_set():
            self.save()
            raise KeyboardInterrupt("stop requested")
        return self.budget.done(self.step, self.clock.elapsed())

    def _read_loss(self) -> float:
        """The last step's loss (a host sync); raise when it is not finite."""
        if self.last_loss is not None:
            self.loss = self.last_loss.item()
        if not math.isfinite(self.loss):
            where = (
                "no checkpoint was written"
                if self.saved_step is None
                else f"{self.saving.checkpoint} (step {self.saved_step}) is intact"
            )
            raise UserError(
                f"the classifier's loss became {self.loss} at step {self.step}; {where}; "
                "lower the learning rate"
            )
        return self.loss

    def _log(self) -> None:
        """Show the step in the progress bar and write its metrics record."""
        loss = self._read_loss()
        self.logged_step = self.step
        self.bar.total = self.total
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.lr:.3g}")
        if self.saving.metrics is not None:
            self.saving.metrics.write(
                {
                    "step": self.step,
                    "epoch": round(self.step / self.budget.steps_per_epoch, 4),
                    "loss": loss,
                    "lr": self.lr,
                    "elapsed_s": round(self.clock.elapsed(), 2),
                    "planned_steps": self.total,
                }
            )

    def save(self) -> None:
        """Write the checkpoint (atomically), never with a non-finite loss or weight."""
        if not self.saving.every or self.saved_step == self.step:
            return
        self._read_loss()
        state = self.update.state()
        bad = nonfinite_tensors(state_tensors(state["model"], "model."))
        if bad:
            raise UserError(
                f"the weights hold NaN or infinity after step {self.step} ({bad[0]}); "
                "nothing was saved; lower the learning rate"
            )
        record = {
            **self.saving.record,
            **state,
            "step": self.step,
            "elapsed_s": self.clock.elapsed(),
            "seconds_per_step": self.clock.seconds_per_step(self.step),
            "loss": self.loss,
        }
        save_checkpoint(record, self.saving.checkpoint)
        self.saved_step = self.step

    def finish(self) -> None:
        """The final loss check, log record and checkpoint."""
        self._read_loss()
        trained_here = self.last_loss is not None
        if self.saving.log_every and trained_here and self.logged_step != self.step:
            self._log()
        self.save()

    def close(self) -> None:
        """Put the signal handlers back and close the progress bar."""
        if self.stop is not None:
            self.stop.restore()
        self.bar.close()


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
