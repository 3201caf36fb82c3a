"""What the ``baseline_<modality>.py`` scripts share: opening the splits, scoring features."""

from __future__ import annotations

from typing import Any

import torch

from simclr.config import Config, build_config
from simclr.data.items import TensorItems
from simclr.evaluate.features import Features
from simclr.evaluate.knn import knn_accuracy
from simclr.evaluate.linear import linear_probe
from simclr.modalities import modality_for


def open_splits(
    spec: str, *overrides: dict[str, Any]
) -> tuple[Config, TensorItems, TensorItems, dict[str, Any]]:
    """The config, the training and test items, and the preprocessing fitted on training.

    Args:
        spec: The data, as ``--data`` names it.
        overrides: Config layers under the data path (a recipe's overrides, for instance).
    """
    cfg = build_config(*overrides, {"data": {"path": spec}})
    modality = modality_for(cfg)
    train, fitted = modality.open(spec, split="train")
    test, _ = modality.with_fitted(fitted).open(spec, split="test")
    if not isinstance(train, TensorItems) or not isinstance(test, TensorItems):
        raise TypeError(f"{spec}: the baselines need items held in memory")
    return cfg, train, test, fitted


def knn_and_linear(
    x_train: torch.Tensor, train: TensorItems, x_test: torch.Tensor, test: TensorItems, cfg: Config
) -> dict[str, float]:
    """Top-1 (percent) of the run's weighted kNN and of the linear probe on fixed features.

    Shape:
        ``x_train`` ``[len(train), D]``, ``x_test`` ``[len(test), D]``.
    """
    knn = knn_accuracy(
        x_train, train.labels, x_test, test.labels, k=cfg.eval.k, temperature=cfg.eval.temperature
    )
    linear = linear_probe(
        Features(x_train, train.labels, torch.arange(len(train))),
        Features(x_test, test.labels, torch.arange(len(test))),
    )
    return {"knn_top1": float(knn["top1"]), "linear_top1": float(linear["top1"])}
