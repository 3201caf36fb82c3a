import math

import torch

from simclr.evaluate.knn import knn_accuracy, knn_predict


def _reference_scores(train, train_labels, test, num_classes, k, t):
    """Straight from the definition, one test item at a time."""
    scores = torch.zeros(len(test), num_classes, dtype=torch.float64)
    for i, query in enumerate(test):
        sims = [float(torch.dot(query, x) / (query.norm() * x.norm())) for x in train]
        order = sorted(range(len(train)), key=lambda j: -sims[j])[:k]
        for j in order:
            scores[i, int(train_labels[j])] += math.exp(sims[j] / t)
    return scores


def test_matches_reference_and_chunking():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(13, 8, generator=g, dtype=torch.float64)
    expected = _reference_scores(train, labels, test, 4, k=7, t=0.1)
    for chunk in (1, 5, 100):
        got = knn_predict(
            train, labels, test, num_classes=4, k=7, temperature=0.1, chunk_size=chunk
        )
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_accuracy_on_separable_clusters():
    g = torch.Generator().manual_seed(1)
    centers = torch.eye(5) * 10
    train_labels = torch.arange(5).repeat(20)
    test_labels = torch.arange(5).repeat(4)
    train = centers[train_labels] + torch.randn(100, 5, generator=g)
    test = centers[test_labels] + torch.randn(20, 5, generator=g)
    result = knn_accuracy(train, train_labels, test, test_labels, k=10, temperature=0.1)
    assert result["top1"] == 100.0 and result["top5"] == 100.0
    assert result["protocol"]["k"] == 10 and result["protocol"]["num_test"] == 20
    shuffled = knn_accuracy(
        train, train_labels[torch.randperm(100, generator=g)], test, test_labels, k=10
    )
    assert shuffled["top1"] < 60.0


def test_k_larger_than_train_set():
    scores = knn_predict(
        torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.randn(2, 4), num_classes=2, k=200
    )
    assert scores.shape == (2, 2) and torch.all(scores.sum(1) > 0)
