"""Feature extraction: the frozen encoder's representation h of every image, in dataset order."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from simclr.data.datasets import ImageDataset
from simclr.data.loading import eval_batches


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: ImageDataset,
    *,
    size: int,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    num_workers: int = 2,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run ``encoder`` in eval mode over ``dataset`` with the evaluation preprocessing.

    The encoder is put in eval mode (batch norm uses its running statistics, as lightly PR #1840
    found missing elsewhere) and restored to its previous mode afterwards.

    Returns:
        ``(features, labels)``: float32 ``[N, D]`` on the CPU and int64 ``[N]``.
    """
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    try:
        for images, batch_labels in eval_batches(
            dataset, size=size, batch_size=batch_size, num_workers=num_workers
        ):
            x = images.to(device, non_blocking=True).float().div_(255)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features.append(encoder(x).flatten(1).float().cpu())
            labels.append(batch_labels)
    finally:
        encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)
