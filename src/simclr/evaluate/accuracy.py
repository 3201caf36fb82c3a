"""Top-k accuracy of class scores: the one definition every scorer reports."""

from __future__ import annotations

from torch import Tensor


def topk_accuracy(
    scores: Tensor, labels: Tensor, classes: Tensor | None = None
) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent (top-k with k = min(5, number of classes)).

    Args:
        scores: Class scores; higher is more likely.
        labels: True classes.
        classes: Class of each score column, when the columns are not ``0..K-1`` (scikit-learn's
            ``classes_``).

    Shape:
        scores ``[M, K]``, labels ``[M]``, classes ``[K]``.
    """
    ranked = scores.argsort(dim=1, descending=True)
    if classes is not None:
        ranked = classes[ranked]
    hits = ranked == labels[:, None]
    k = min(5, scores.shape[1])
    return {
        "top1": round(100.0 * hits[:, 0].float().mean().item(), 2),
        "top5": round(100.0 * hits[:, :k].any(dim=1).float().mean().item(), 2),
    }
