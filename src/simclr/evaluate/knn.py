"""Weighted k-nearest-neighbour classification of frozen features (Wu et al. 2018, InstDisc).

The protocol used by lightly and most SSL papers: L2-normalised features, cosine similarity, the
k most similar training items vote for their class with weight exp(similarity / temperature).
It is not part of the SimCLR paper's protocol; it is the cheap monitor everybody reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr import distributed
from simclr.config import EvalConfig
from simclr.data.items import Items
from simclr.errors import UserError
from simclr.evaluate.accuracy import topk_accuracy
from simclr.evaluate.features import extract_features, extract_features_across_ranks

if TYPE_CHECKING:
    from simclr.modalities.base import Modality


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores of each test item from its k nearest training items.

    Features need not be normalised: this function L2-normalises both sets.

    Shape:
        train_features ``[N, D]``, train_labels ``[N]``, test_features ``[M, D]`` ->
        scores ``[M, num_classes]`` (sort them for top-k predictions).
    """
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device)
    k = min(k, len(train))
    scores = []
    for chunk in F.normalize(test_features.float().to(train.device), dim=1).split(chunk_size):
        similarity = chunk @ train.T  # (m, N)
        top_sim, top_index = similarity.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()  # (m, k)
        votes = torch.zeros(len(chunk), num_classes, dtype=weights.dtype, device=train.device)
        votes.scatter_add_(1, labels[top_index], weights)  # (m, C)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
) -> dict[str, Any]:
    """Top-1 and top-5 accuracy (in percent) of :func:`knn_predict`, with the protocol."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
    )
    return {
        **topk_accuracy(scores, test_labels),
        "protocol": {
            "method": "weighted kNN",
            "k": min(k, len(train_labels)),
            "temperature": temperature,
            "similarity": "cosine",
            "features": "backbone (h), L2-normalised",
            "num_train": len(train_labels),
            "num_test": len(test_labels),
        },
    }


def evaluate_knn(
    encoder: nn.Module,
    train_set: Items,
    test_set: Items,
    *,
    modality: Modality,
    cfg: EvalConfig,
    device: torch.device | str = "cpu",
    across_ranks: bool = False,
) -> dict[str, Any]:
    """Extract frozen features of both sets with ``encoder`` and score them with weighted kNN.

    ``modality`` gives the evaluation preprocessing. With ``across_ranks`` the processes of a
    distributed job share the feature extraction (see :func:`extract_features_across_ranks`);
    rank 0 scores and every rank gets the result.
    """
    extract = extract_features_across_ranks if across_ranks else extract_features
    train, test = (
        extract(encoder, data, modality=modality, batch_size=cfg.batch_size, device=device)
        for data in (train_set, test_set)
    )

    def score() -> dict[str, Any]:
        assert train is not None and test is not None  # rank 0 holds the gathered features
        if len(train.index) == 0 or len(test.index) == 0:
            raise UserError("no readable items to extract features from")
        result = knn_accuracy(
            train.features,
            train.labels,
            test.features,
            test.labels,
            k=cfg.k,
            temperature=cfg.temperature,
        )
        result["protocol"]["preprocessing"] = modality.preprocessing()
        return result

    return distributed.run_on_main(score)
