"""Few-label fine-tuning: the semi-supervised protocol of SimCLR v2 (arXiv 2006.10029).

The whole backbone (optionally with the first projection-head layers) and a new linear classifier
are trained on a class-balanced fraction of the labels, with random resized crop and flip,
batch norm in train mode and a cosine schedule, then scored on the test set with the evaluation
preprocessing. ``from_scratch=True`` trains the same architecture from fresh weights with the
same settings, the baseline that shows what pretraining is worth.

The training loop here (:func:`train_classifier`) also serves the paper's linear-evaluation
protocol (:func:`simclr.evaluate.linear.linear_probe_sgd`), which is the same loop with the
backbone frozen.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from simclr.augment import functional as AF
from simclr.augment.loader import TwoCrops
from simclr.augment.params import sample_view_params
from simclr.config import AugmentConfig, Config, OptimConfig
from simclr.data.datasets import FileImages, ImageDataset, TensorImages, require_labels
from simclr.data.loading import epoch_batches
from simclr.errors import UserError
from simclr.evaluate.accuracy import topk_accuracy
from simclr.evaluate.features import extract_features
from simclr.models.heads import ProjectionHead
from simclr.models.simclr import SimCLR
from simclr.optim import build_optimizer, lr_at, set_lr
from simclr.runtime import autocast_dtype, resolve_precision
from simclr.train import TIMING_WARMUP_STEPS, Budget

__all__ = [
    "Classifier",
    "balanced_subset",
    "build_classifier",
    "classifier_augment",
    "evaluate_classifier",
    "finetune",
    "subset_names",
    "train_classifier",
]


def balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """A class-balanced random subset: ``max(1, round(fraction * count))`` items of each class.

    v2 fine-tunes on 1% and 10% of ImageNet's labels, drawn per class; drawing per class keeps
    rare classes present at small fractions. ``round`` is Python's (half to even).

    Args:
        labels: Class of every item (all >= 0).
        fraction: Share of each class to keep, in (0, 1].
        seed: The subset is a function of ``(labels, fraction, seed)`` only.

    Returns:
        Sorted positions of the chosen items. Shape: ``[N]`` -> ``[n]`` int64.

    Raises:
        UserError: ``fraction`` outside (0, 1], or unlabelled items.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"label fraction must be in (0, 1], got {fraction}")
    if len(labels) == 0 or bool((labels < 0).any()):
        raise UserError("a label subset needs every training item to have a label")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


def subset_names(dataset: ImageDataset, indices: Tensor) -> list[str]:
    """The item names (file paths, or ``array/i``) of a subset, to save the exact label split."""
    return [dataset.names[i] for i in indices.tolist()]


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


def build_classifier(
    model: SimCLR | None,
    config: Config,
    *,
    num_classes: int,
    keep_projection_layers: int = 0,
    from_scratch: bool = False,
    seed: int = 0,
) -> Classifier:
    """The network to fine-tune: copies of ``model``'s backbone and head layers, or fresh ones.

    Args:
        model: The pretrained model (left untouched: its parts are deep-copied).
        config: Its configuration; ``from_scratch`` builds ``config.model`` anew.
        num_classes: Outputs of the new linear layer (zero-initialised).
        keep_projection_layers: How many projection-head layers stay between backbone and
            classifier, each with its batch norm and ReLU (v2's ``ft_proj_selector``; v2
            fine-tunes from the first layer of its 3-layer head).
        from_scratch: Fresh weights drawn with ``torch.manual_seed(seed)`` instead of ``model``.
        seed: Seed of the fresh weights.

    Raises:
        UserError: no model without ``from_scratch``, or more head layers than the head has.
    """
    if from_scratch:
        torch.manual_seed(seed)
        model = SimCLR.from_config(config.model)
    elif model is None:
        raise UserError("fine-tuning needs a pretrained model unless it starts from scratch")
    head_layers, dim = _head_prefix(model.head, keep_projection_layers, model.feature_dim)
    fc = nn.Linear(dim, num_classes)
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    return Classifier(copy.deepcopy(model.backbone), head_layers, fc)


def _head_prefix(head: ProjectionHead, num_layers: int, in_dim: int) -> tuple[nn.Sequential, int]:
    """Copies of the first ``num_layers`` Linear layers of the head with what follows each."""
    modules = list(head.layers)
    starts = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear)]
    if not 0 <= num_layers <= len(starts):
        raise UserError(
            f"keep_projection_layers must be in [0, {len(starts)}] for this head, got {num_layers}"
        )
    end = starts[num_layers] if num_layers < len(starts) else len(modules)
    kept = copy.deepcopy(modules[:end])
    linears = [m for m in kept if isinstance(m, nn.Linear)]
    return nn.Sequential(*kept), linears[-1].out_features if linears else in_dim


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
    if crop:
        return AF.resized_crop(x, params.boxes, augment.size, params.flip)
    return AF.hflip(x, params.flip)


def train_classifier(
    model: Classifier,
    dataset: ImageDataset,
    items: Tensor,
    augment: AugmentConfig,
    *,
    epochs: int,
    batch_size: int,
    optim: OptimConfig,
    device: torch.device,
    seed: int,
    max_time: float | None = None,
    num_workers: int = 2,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train ``model`` with cross-entropy on ``dataset[items]``, cosine schedule, no warmup.

    Each step draws a random resized crop and flip per image (``augment``, from a generator
    seeded with ``seed``); the epoch order is :func:`epoch_batches` of ``(seed, epoch)``. The
    learning rate is ``optim.lr`` scaled by ``optim.lr_scaling`` for the batch size actually used
    (at most the number of items), decayed by a cosine over the planned steps; with
    ``max_time`` the plan follows the measured step time, as in pretraining.

    Returns:
        ``steps``, ``epochs``, ``batch_size``, ``peak_lr``, ``train_seconds``, ``final_loss``
        and ``stopped_by`` (``epochs`` or ``time``).

    Raises:
        UserError: fewer than 2 items, or a loss that stops being finite.
    """
    if len(items) < 2:
        raise UserError(f"training a classifier needs at least 2 labelled items, got {len(items)}")
    if epochs < 1 or batch_size < 2:
        raise UserError(f"epochs must be >= 1 and batch size >= 2 (got {epochs}, {batch_size})")
    torch.manual_seed(seed)  # the loader workers' crops of files
    batch = min(batch_size, len(items))
    budget = Budget(len(items) // batch, epochs, None, max_time)
    model.to(device).train()
    optimizer = build_optimizer(model.trainable(), optim, batch)
    peak_lr = float(optimizer.param_groups[0]["peak_lr"])
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = autocast_dtype(precision)
    generator = torch.Generator(device=device).manual_seed(seed)
    crop_on_device = isinstance(dataset, TensorImages)
    step, start = 0, time.perf_counter()
    timing_start: tuple[int, float] | None = None  # (step, time) after the warm-up steps
    loss = torch.tensor(float("nan"))

    def elapsed() -> float:
        return time.perf_counter() - start

    while not budget.done(step, elapsed()):
        step_at_epoch_start = step
        for images, labels in _labelled_batches(
            dataset,
            items,
            augment,
            batch_size=batch,
            seed=seed,
            epoch=step // budget.steps_per_epoch,
            num_workers=num_workers,
        ):
            if len(images) < 2:  # batch norm needs two; only unreadable files get here
                continue
            per_step = None
            if timing_start is not None and step > timing_start[0]:
                per_step = (time.perf_counter() - timing_start[1]) / (step - timing_start[0])
            total_steps = budget.planned_steps(step, elapsed(), per_step)
            set_lr(optimizer, lr_at(step, total_steps, 0, peak_lr))
            x = _crop_flip(images.to(device), augment, generator, crop=crop_on_device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if step == TIMING_WARMUP_STEPS:
                timing_start = (step, time.perf_counter())
            if budget.done(step, elapsed()):
                break
        if step == step_at_epoch_start:
            raise UserError("no readable training images (every file failed to decode)")
    final_loss = loss.item()
    if not math.isfinite(final_loss):
        raise UserError(f"the classifier's loss became {final_loss}; lower the learning rate")
    return {
        "steps": step,
        "epochs": round(step / budget.steps_per_epoch, 3),
        "batch_size": batch,
        "peak_lr": peak_lr,
        "train_seconds": round(elapsed(), 2),
        "final_loss": round(final_loss, 4),
        "stopped_by": "epochs" if step >= budget.step_limit else "time",
    }


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


def finetune(
    model: SimCLR | None,
    config: Config,
    train_set: ImageDataset,
    test_set: ImageDataset,
    *,
    fraction: float,
    keep_projection_layers: int = 0,
    from_scratch: bool = False,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    device: torch.device | str = "cpu",
    seed: int = 0,
    max_time: float | None = None,
    num_workers: int = 2,
    precision: str = "auto",
) -> dict[str, Any]:
    """Fine-tune on a class-balanced fraction of the labels and score on the test set.

    Args:
        model: The pretrained model (not modified; its parts are copied). ``None`` with
            ``from_scratch``.
        config: The model's configuration: architecture, image size and crop ranges.
        train_set: Labelled training data; the subset is :func:`balanced_subset` of its labels
            (save it with :func:`subset_names`).
        test_set: Labelled test data with the same classes.
        fraction: Share of each class's labels used, in (0, 1] (v2: 0.01 and 0.1).
        keep_projection_layers: Projection-head layers kept below the classifier (v2: 1).
        from_scratch: Train the same architecture from fresh weights instead (the baseline).
        epochs: Passes over the subset.
        batch_size: Images per step (at most the subset size).
        lr: Learning rate per 256 images (scaled linearly with the batch size).
        optimizer: ``sgd`` (momentum) or ``lars`` (v2 fine-tunes with LARS).
        weight_decay: On weights with more than one dimension (v2: 0).
        momentum: Of SGD or LARS.
        device: Where to train.
        seed: Subset, fresh weights, data order and augmentation.
        max_time: Seconds of training at most; the cosine then spans the budget.
        num_workers: Loader processes for image files.
        precision: ``auto`` (bf16 autocast where :func:`resolve_precision` picks it), ``bf16``,
            ``fp16`` or ``fp32``.

    Returns:
        ``top1``/``top5`` (percent, on the test set), ``subset_size``, ``per_class_counts``,
        ``backbone_change`` (relative L2 distance of the backbone weights from where training
        started), ``train_seconds`` and the ``protocol``.

    Raises:
        UserError: unlabelled data, different classes, ``fraction`` outside (0, 1].
    """
    require_labels(train_set, test_set, "fine-tuning")
    subset = balanced_subset(train_set.labels, fraction, seed)
    device = torch.device(device)
    classifier = build_classifier(
        model,
        config,
        num_classes=len(train_set.classes),
        keep_projection_layers=keep_projection_layers,
        from_scratch=from_scratch,
        seed=seed,
    )
    start = torch.cat(
        [p.detach().flatten().float().cpu() for p in classifier.backbone.parameters()]
    )
    augment = classifier_augment(config.augment)
    precision = resolve_precision(precision, device)
    optim = OptimConfig(
        name=optimizer, lr=lr, lr_scaling="linear", weight_decay=weight_decay, momentum=momentum
    )
    run = train_classifier(
        classifier,
        train_set,
        subset,
        augment,
        epochs=epochs,
        batch_size=batch_size,
        optim=optim,
        device=device,
        seed=seed,
        max_time=max_time,
        num_workers=num_workers,
        precision=precision,
    )
    scores = evaluate_classifier(
        classifier, test_set, size=augment.size, device=device, num_workers=num_workers
    )
    end = torch.cat([p.detach().flatten().float().cpu() for p in classifier.backbone.parameters()])
    counts = torch.bincount(train_set.labels[subset], minlength=len(train_set.classes)).tolist()
    return {
        **scores,
        "subset_size": len(subset),
        "per_class_counts": dict(zip(train_set.classes, counts, strict=True)),
        "backbone_change": round(float((end - start).norm() / start.norm().clamp_min(1e-12)), 6),
        "train_seconds": run["train_seconds"],
        "protocol": {
            "method": "fine-tune backbone + linear classifier on a class-balanced label subset "
            "(SimCLR v2)",
            "init": "random (from scratch)" if from_scratch else "pretrained",
            "from_scratch": from_scratch,
            "keep_projection_layers": keep_projection_layers,
            "label_fraction": fraction,
            "subset": f"balanced_subset(labels, {fraction}, seed={seed}): max(1, round(fraction "
            "x count)) per class",
            "seed": seed,
            "epochs": epochs,
            "epochs_done": run["epochs"],
            "steps": run["steps"],
            "stopped_by": run["stopped_by"],
            "max_time": max_time,
            "batch_size": run["batch_size"],
            "lr": lr,
            "lr_scaling": "linear (lr x batch / 256)",
            "peak_lr": run["peak_lr"],
            "schedule": "cosine, no warmup",
            "optimizer": optimizer,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "classifier_init": "zeros",
            "augmentation": f"random resized crop (scale {tuple(augment.crop_scale)}, ratio "
            f"{tuple(round(r, 4) for r in augment.crop_ratio)}) to {augment.size} px, "
            "horizontal flip",
            "batch_norm": "train mode while training, running statistics at test time",
            "preprocessing": f"test: resize to {augment.size} px (shorter side to "
            f"{augment.size}/0.875 and centre crop when larger); no augmentation",
            "precision": precision,
            "final_loss": run["final_loss"],
            "num_train": len(train_set),
            "num_test": len(test_set),
        },
    }
