"""k-means clustering of frozen features, scored against the labels when there are any.

The usual unsupervised check of a representation: cluster the L2-normalised features into as many
groups as there are classes and ask how well the groups match the classes. Three scores, all in
percent: NMI and ARI (scikit-learn, invariant to how clusters are numbered) and cluster accuracy,
the accuracy of the best one-to-one mapping of clusters to classes (Hungarian matching on the
contingency matrix, as in DEC, Xie et al. 2016).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from torch import Tensor

from simclr.errors import UserError
from simclr.evaluate.features import Features


def cluster_accuracy(labels: Tensor | np.ndarray, assignment: Tensor | np.ndarray) -> float:
    """Accuracy (percent) of the best one-to-one mapping of cluster ids to class ids.

    Cluster ids are arbitrary, so plain accuracy is meaningless; the Hungarian algorithm finds
    the mapping that agrees with the most labels. With more clusters than classes (or fewer),
    the extra clusters stay unmatched and count as errors.

    Shape:
        labels ``[N]``, assignment ``[N]`` (any integer ids).
    """
    counts = contingency_matrix(np.asarray(labels), np.asarray(assignment))  # (classes, clusters)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return 100.0 * float(counts[rows, cols].sum()) / len(np.asarray(labels))


def cluster_scores(
    labels: Tensor | np.ndarray, assignment: Tensor | np.ndarray
) -> dict[str, float]:
    """NMI, ARI and cluster accuracy of ``assignment`` against ``labels``, in percent.

    Shape:
        labels ``[N]``, assignment ``[N]``.
    """
    truth, found = np.asarray(labels), np.asarray(assignment)
    return {
        "nmi": round(100.0 * float(normalized_mutual_info_score(truth, found)), 2),
        "ari": round(100.0 * float(adjusted_rand_score(truth, found)), 2),
        "accuracy": round(cluster_accuracy(truth, found), 2),
    }


def cluster(
    features: Features, *, k: int | None = None, seed: int = 0, n_init: int = 10
) -> dict[str, Any]:
    """k-means on the L2-normalised features, scored against the labels when they exist.

    Normalising first makes Euclidean k-means rank points by cosine similarity, the geometry the
    contrastive loss trains.

    Args:
        features: From :func:`simclr.evaluate.features.dataset_features`.
        k: Number of clusters; defaults to the number of classes present in the labels.
        seed: ``random_state`` of k-means (the k-means++ initialisations).
        n_init: Independent k-means runs; the one with the lowest inertia is kept.

    Returns:
        ``assignment`` (int64 tensor ``[N]``, cluster of each row of ``features``: drop it before
        writing JSON), ``nmi``, ``ari`` and ``accuracy`` in percent when the features are
        labelled, ``inertia``, and ``protocol``.

    Raises:
        UserError: no labels and no ``k``, or ``k`` outside ``1..N``.
    """
    labelled = features.has_labels
    num_items = len(features.features)
    k_from = "argument" if k is not None else "number of classes in the labels"
    if k is None:
        if not labelled:
            raise UserError("the data has no labels to count classes from; give --k")
        k = len(torch.unique(features.labels))
    if not 1 <= k <= num_items:
        raise UserError(f"k must be between 1 and the number of items ({num_items}); got {k}")
    points = F.normalize(features.features.float(), dim=1).numpy()  # float32: half the memory
    kmeans = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    assignment = kmeans.fit_predict(points)
    result: dict[str, Any] = {"assignment": torch.from_numpy(assignment.astype(np.int64))}
    if labelled:
        result.update(cluster_scores(features.labels.numpy(), assignment))
    result["inertia"] = float(kmeans.inertia_)
    result["protocol"] = {
        "method": "k-means (scikit-learn KMeans, k-means++ initialisation, Lloyd iterations)",
        "k": k,
        "k_from": k_from,
        "n_init": n_init,
        "seed": seed,
        "normalisation": "L2 (k-means in the cosine geometry)",
        "num_items": num_items,
        "scores": (
            "NMI (arithmetic mean normalisation), ARI, and accuracy after Hungarian matching of "
            "clusters to classes; percent"
            if labelled
            else "none (unlabelled data)"
        ),
    }
    return result
