"""A dataset's training and test splits, opened as a modality's recipe reads them.

Shared by the ``baseline_<modality>.py`` scripts, whose baselines need both splits in memory.
"""

from __future__ import annotations

from typing import Any

from simclr.config import Config, build_config
from simclr.data.items import TensorItems
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
    test, _ = modality.open(spec, split="test", fitted=fitted)
    if not isinstance(train, TensorItems) or not isinstance(test, TensorItems):
        raise TypeError(f"{spec}: the baselines need items held in memory")
    return cfg, train, test, fitted
