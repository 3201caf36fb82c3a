import itertools

import numpy as np
import pytest
import torch

from simclr.errors import UserError
from simclr.evaluate.cluster import cluster, cluster_accuracy
from simclr.evaluate.features import Features


def _features(points, labels):
    return Features(points.float(), labels.long(), torch.arange(len(points)))


def _blobs(num_classes=4, per_class=25, noise=0.05, seed=0):
    """Well separated directions (k-means runs on L2-normalised features) with shuffled ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(num_classes, generator=g)  # class ids unrelated to blob order
    blob = torch.arange(num_classes).repeat_interleave(per_class)
    points = torch.eye(num_classes, 8)[blob] * 5 + noise * torch.randn(len(blob), 8, generator=g)
    return points, ids[blob]


def _brute_force_accuracy(labels, assignment):
    """Best agreement over every injective mapping of cluster ids to class ids."""
    classes, clusters = sorted(set(labels)), sorted(set(assignment))
    pairs = list(zip(labels, assignment, strict=True))
    best = 0
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, image, strict=True))
            best = max(best, sum(mapping[a] == y for y, a in pairs))
    else:
        for image in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(image, classes, strict=True))
            best = max(best, sum(mapping.get(a) == y for y, a in pairs))
    return 100.0 * best / len(labels)


def test_perfect_clusters_score_100_whatever_the_ids():
    points, labels = _blobs()
    result = cluster(_features(points, labels), seed=0)
    assert (result["nmi"], result["ari"], result["accuracy"]) == (100.0, 100.0, 100.0)
    assignment = result["assignment"]
    assert assignment.shape == (100,) and assignment.dtype == torch.int64
    # the same partition: each class is exactly one cluster
    for c in labels.unique():
        assert len(assignment[labels == c].unique()) == 1
    assert result["protocol"]["k"] == 4 and result["protocol"]["normalisation"].startswith("L2")
    assert result["protocol"]["k_from"] == "number of classes in the labels"


@pytest.mark.parametrize(("num_classes", "num_clusters"), [(3, 3), (4, 4), (4, 3), (3, 4)])
def test_cluster_accuracy_matches_brute_force(num_classes, num_clusters):
    rng = np.random.default_rng(num_classes * 10 + num_clusters)
    for _ in range(20):
        labels = rng.integers(0, num_classes, 30)
        assignment = rng.integers(0, num_clusters, 30) + 7  # ids need not start at 0
        expected = _brute_force_accuracy(labels.tolist(), assignment.tolist())
        assert cluster_accuracy(labels, assignment) == pytest.approx(expected)


def test_random_labels_give_nmi_near_zero():
    points, _ = _blobs(num_classes=5, per_class=100)
    labels = torch.randint(0, 5, (500,), generator=torch.Generator().manual_seed(1))
    result = cluster(_features(points, labels))
    assert result["nmi"] < 3.0 and abs(result["ari"]) < 3.0
    assert result["accuracy"] < 35.0  # chance is 20-ish with the best matching


def test_unlabelled_needs_k_and_works_with_it():
    points, blob_labels = _blobs(num_classes=3)
    unlabelled = _features(points, torch.full((len(points),), -1))
    with pytest.raises(UserError, match="--k"):
        cluster(unlabelled)
    result = cluster(unlabelled, k=3, n_init=2)
    assert "nmi" not in result and "accuracy" not in result
    assert result["protocol"]["k"] == 3 and result["protocol"]["k_from"] == "argument"
    assert cluster_accuracy(blob_labels, result["assignment"]) == 100.0
    with pytest.raises(UserError, match="k must be"):
        cluster(unlabelled, k=len(points) + 1)
