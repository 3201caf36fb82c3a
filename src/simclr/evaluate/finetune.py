"""Few-label fine-tuning: the semi-supervised protocol of SimCLR v2 (arXiv 2006.10029).

The whole backbone (optionally with the first projection-head layers) and a new linear classifier
are trained on a class-balanced fraction of the labels, with random resized crop and flip,
batch norm in train mode and a cosine schedule, then scored on the test set with the evaluation
preprocessing. ``from_scratch=True`` trains the same architecture from fresh weights with the
same settings, the baseline that shows what pretraining is worth.

The training itself is :mod:`simclr.evaluate.classifier`'s, shared with the paper's
linear-evaluation protocol (:func:`simclr.evaluate.linear.linear_probe_sgd`); what is specific
to fine-tuning is the label subset and the network, whose backbone trains too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclr.checkpoint import load_checkpoint, load_weights, save_checkpoint
from simclr.config import Config, from_dict, to_dict
from simclr.data.datasets import ImageDataset, require_labels
from simclr.errors import UserError
from simclr.evaluate.classifier import Classifier, ClassifierTraining, train_and_score, zero_linear
from simclr.models.heads import ProjectionHead
from simclr.models.simclr import SimCLR

__all__ = [
    "balanced_subset",
    "build_classifier",
    "classifier_record",
    "finetune",
    "load_classifier",
    "subset_names",
]

CLASSIFIER = "classifier"
"""The ``kind`` of a classifier checkpoint (``finetune``'s and ``distill``'s output)."""


@dataclass(frozen=True)
class FinetuneProtocol:
    """The optimisation settings a fine-tuning protocol fixes (the rest is the user's)."""

    optimizer: str
    lr: float
    """Base learning rate, scaled by ``lr_scaling``."""
    lr_scaling: str
    weight_decay: float
    keep_projection_layers: int


FINETUNE_PROTOCOLS = {
    "sgd": FinetuneProtocol("sgd", 0.05, "linear", 0.0, 0),
    "simclrv2": FinetuneProtocol("lars", 0.005, "sqrt", 0.0, 1),
}
"""``sgd``: SGD with momentum from the backbone output, lr 0.05 x B / 256. ``simclrv2``: the v2
paper's (arXiv 2006.10029, appendix B): from the first projection-head layer, LARS, no weight
decay, lr 0.005 x sqrt(B); both train on random resized crops and flips only."""


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
    return Classifier(copy.deepcopy(model.backbone), head_layers, zero_linear(dim, num_classes))


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


def classifier_record(
    config: Config, classes: list[str], keep_projection_layers: int
) -> dict[str, Any]:
    """What a classifier checkpoint holds besides its weights: enough to rebuild the network.

    ``kind`` (``"classifier"``), the ``config`` of its encoder, its ``classes`` (in output
    order) and ``keep_projection_layers``; :func:`load_classifier` reads it back.
    """
    return {
        "kind": CLASSIFIER,
        "config": to_dict(config),
        "classes": list(classes),
        "keep_projection_layers": keep_projection_layers,
    }


def load_classifier(path: Path | str) -> tuple[Classifier, Config, dict[str, Any]]:
    """Rebuild the classifier of a checkpoint written by ``finetune`` or ``distill``.

    Read safely (:func:`simclr.checkpoint.load_checkpoint`: no pickled code runs).

    Returns:
        The classifier (eval mode, CPU), its encoder's config and the checkpoint's dict.

    Raises:
        UserError: not a classifier checkpoint, or weights that do not fit its description.
    """
    state = load_checkpoint(path)
    classes, keep = state.get("classes"), state.get("keep_projection_layers")
    if (
        state.get("kind") != CLASSIFIER
        or not isinstance(classes, list)
        or not isinstance(keep, int)
    ):
        raise UserError(
            f"{path} is not a classifier checkpoint: a teacher comes from `simclr finetune` "
            "(RUN/finetune-*.pt) or `simclr distill` (OUT/checkpoints/latest.pt)"
        )
    config = from_dict(state["config"])
    classifier = build_classifier(
        None, config, num_classes=len(classes), keep_projection_layers=keep, from_scratch=True
    )
    load_weights(classifier, state["model"], path)
    return classifier.eval(), config, state


def finetune(
    model: SimCLR | None,
    config: Config,
    train_set: ImageDataset,
    test_set: ImageDataset,
    *,
    fraction: float,
    training: ClassifierTraining,
    keep_projection_layers: int = 0,
    from_scratch: bool = False,
    device: torch.device | str = "cpu",
    save_to: Path | None = None,
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
        training: Epochs over the subset, batch size, learning rate (per 256 images), optimizer
            (v2: LARS, no weight decay), budget and loading; its ``seed`` also draws the subset
            and the fresh weights of ``from_scratch``.
        keep_projection_layers: Projection-head layers kept below the classifier (v2: 1).
        from_scratch: Train the same architecture from fresh weights instead (the baseline).
        device: Where to train.
        save_to: Write the fine-tuned classifier there (atomically), for ``simclr distill``
            (:func:`load_classifier` reads it).

    Returns:
        ``top1``/``top5`` (percent, on the test set), ``subset_size``, ``per_class_counts``,
        ``backbone_change`` (relative L2 distance of the backbone weights from where training
        started), ``train_seconds`` and the ``protocol``.

    Raises:
        UserError: unlabelled data, different classes, ``fraction`` outside (0, 1].
    """
    require_labels(train_set, test_set, "fine-tuning")
    seed = training.seed
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
    start = _flat_weights(classifier.backbone)
    result, shared = train_and_score(
        classifier, train_set, subset, test_set, config.augment, training, device=device
    )
    change = (_flat_weights(classifier.backbone) - start).norm() / start.norm().clamp_min(1e-12)
    counts = torch.bincount(train_set.labels[subset], minlength=len(train_set.classes)).tolist()
    if save_to is not None:
        record = classifier_record(config, train_set.classes, keep_projection_layers)
        state = {**record, "model": classifier.state_dict(), "step": shared["steps"]}
        result["classifier_checkpoint"] = str(save_checkpoint(state, save_to))
    return {
        **result,
        "subset_size": len(subset),
        "per_class_counts": dict(zip(train_set.classes, counts, strict=True)),
        "backbone_change": round(float(change), 6),
        "protocol": {
            "method": "fine-tune backbone + linear classifier on a class-balanced label subset "
            "(SimCLR v2)",
            "init": "random (from scratch)" if from_scratch else "pretrained",
            "from_scratch": from_scratch,
            "keep_projection_layers": keep_projection_layers,
            "label_fraction": fraction,
            "subset": f"balanced_subset(labels, {fraction}, seed={seed}): max(1, round(fraction "
            "x count)) per class",
            "batch_norm": "train mode while training, running statistics at test time",
            **shared,
        },
    }


def _flat_weights(module: nn.Module) -> Tensor:
    """All parameters of ``module`` as one float32 CPU vector (a copy)."""
    return torch.cat([p.detach().flatten().float().cpu() for p in module.parameters()])
