"""The non-learned time-series baselines: 1-NN Euclidean, kNN and a linear probe on raw series.

Each series is what the encoder would get at evaluation (the modality's ``model_input``: its
valid part linearly resampled to the fitted length L, normalised as ``timeseries.normalize``
says), flattened to a ``C x L`` vector. Scored three ways:

* ``1nn_euclidean_top1``: 1-nearest neighbour with Euclidean distance
  (``sklearn.neighbors.KNeighborsClassifier(1)``), the classic UCR/UEA baseline (for several
  channels, the distance over all of them: "ED dependent");
* ``knn_top1``: the weighted cosine kNN that scores learned features
  (:func:`simclr.evaluate.knn.knn_accuracy`, ``eval.k``, ``eval.temperature``);
* ``linear_top1``: the logistic-regression probe (:func:`simclr.evaluate.linear.linear_probe`).

The datasets are the ones shipped inside aeon (no download)::

    .venv/bin/python benchmarks/baseline_timeseries.py          # OSULeaf and JapaneseVowels
    .venv/bin/python benchmarks/baseline_timeseries.py aeon:GunPoint
"""

from __future__ import annotations

import argparse
import json

import torch
from baselines import knn_and_linear, open_splits
from sklearn.neighbors import KNeighborsClassifier

from simclr.config import Config, recipe_overrides
from simclr.data.items import TensorItems
from simclr.modalities.timeseries import fit_length
from simclr.modalities.timeseries.views import Normalization, channel_statistics, evaluation_input

DATASETS = ("aeon:OSULeaf", "aeon:JapaneseVowels")
"""The acceptance data: the largest univariate and multivariate classification sets aeon ships."""


def raw_features(items: TensorItems, length: int, normalize: Normalization) -> torch.Tensor:
    """Each series as the encoder's evaluation input, flattened.

    Shape:
        ``[N, C * length]`` float32.
    """
    return evaluation_input(items.inputs, items.lengths, length, normalize).flatten(1)


def baseline(train: TensorItems, test: TensorItems, cfg: Config) -> dict[str, float]:
    """Top-1 accuracies (percent) of the raw-series baselines.

    Args:
        train: Training series opened by the time-series modality.
        test: Test series opened with the training data's fitted state.
        cfg: The run's configuration (resampling length, normalisation, kNN settings).
    """
    length = fit_length(cfg.timeseries, train)
    mean, std = channel_statistics(train.inputs, train.lengths)
    normalize = Normalization(cfg.timeseries.normalize, tuple(mean), tuple(std))
    x_train = raw_features(train, length, normalize)
    x_test = raw_features(test, length, normalize)
    nearest = KNeighborsClassifier(n_neighbors=1, metric="euclidean")
    nearest.fit(x_train.numpy(), train.labels.numpy())
    one_nn = 100.0 * float(nearest.score(x_test.numpy(), test.labels.numpy()))
    return {
        "1nn_euclidean_top1": round(one_nn, 2),
        **knn_and_linear(x_train, train, x_test, test, cfg),
    }


def main() -> None:
    """Print the baselines of the given aeon datasets (default :data:`DATASETS`) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", default=list(DATASETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for spec in args.data:
        cfg, train, test, fitted = open_splits(spec, recipe_overrides("timeseries-small"))
        results[spec] = {"length": fitted["length"], **baseline(train, test, cfg)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
