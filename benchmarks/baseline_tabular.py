"""The non-learned table baseline: kNN and a linear probe on the standardised raw features.

Each row is what the encoder would get at evaluation (the modality's ``model_input``): numbers
standardised with the training mean and standard deviation, missing ones set to the training
median; categorical columns are one-hot encoded here (code 0, unknown, gets its own column)
instead of entering as codes. Scored two ways:

* ``knn_top1``: the weighted cosine kNN that scores learned features
  (:func:`simclr.evaluate.knn.knn_accuracy`, ``eval.k``, ``eval.temperature``);
* ``linear_top1``: the logistic-regression probe (:func:`simclr.evaluate.linear.linear_probe`).

The datasets are the tables scikit-learn ships (no download)::

    .venv/bin/python benchmarks/baseline_tabular.py          # wine, breast_cancer, digits
    .venv/bin/python benchmarks/baseline_tabular.py sklearn:iris path/to/table.csv
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from baselines import knn_and_linear, open_splits

from simclr.config import Config, recipe_overrides
from simclr.data.items import TensorItems
from simclr.modalities.tabular import TableItems
from simclr.modalities.tabular.columns import cardinalities

DATASETS = ("sklearn:wine", "sklearn:breast_cancer", "sklearn:digits")
"""The acceptance data: 178, 569 and 1,797 rows."""


def raw_features(items: TensorItems) -> torch.Tensor:
    """The encoded rows with every categorical column one-hot (plain rows: as they are).

    Shape:
        ``[N, D']`` float32, ``D'`` = numeric columns + sum of (categories + 1).
    """
    if not isinstance(items, TableItems):
        return items.inputs.float()
    parts = []
    for j, n in enumerate(cardinalities(items.columns)):
        column = items.inputs[:, j]
        parts.append(column[:, None] if n == 0 else F.one_hot(column.long(), n + 1).float())
    return torch.cat(parts, dim=1)


def baseline(train: TensorItems, test: TensorItems, cfg: Config) -> dict[str, float]:
    """Top-1 accuracies (percent) of kNN and the linear probe on the raw features.

    Args:
        train: Training rows opened by the tabular modality.
        test: Test rows opened with the training data's fitted state.
        cfg: The run's configuration (kNN settings).
    """
    return knn_and_linear(raw_features(train), train, raw_features(test), test, cfg)


def main() -> None:
    """Print the baselines of the given tables (default :data:`DATASETS`) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", default=list(DATASETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for spec in args.data:
        cfg, train, test, _ = open_splits(spec, recipe_overrides("tabular-small"))
        results[spec] = {"rows": len(train) + len(test), **baseline(train, test, cfg)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
