"""Projection head g: the MLP between the representation h and the contrastive space z."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """MLP projection head of SimCLR v1 and v2.

    v1 (arXiv 2002.05709, section 2.1): ``num_layers=2`` -- Linear, ReLU, Linear.
    v2 (arXiv 2006.10029, and the official code): ``num_layers=3`` with ``batch_norm=True`` --
    every Linear is followed by batch norm, including the output layer, whose Linear has no bias
    and whose norm has a scale but no learnable shift (its bias stays zero), and no ReLU.

    Args:
        in_dim: Feature dimension of the backbone (h).
        hidden_dim: Width of the hidden layers.
        out_dim: Dimension of z (128 in the paper).
        num_layers: Number of Linear layers (at least 1).
        batch_norm: Batch norm after every Linear layer.

    Shape:
        input ``[B, in_dim]`` -> output ``[B, out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = index == num_layers - 1
            layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
            if batch_norm:
                norm = nn.BatchNorm1d(d_out)
                if last:  # the official code's output norm has a scale but no shift (center=False)
                    norm.bias.requires_grad_(False)
                layers.append(norm)
            if not last:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """Project features h to z."""
        out: Tensor = self.layers(features)
        return out


def head_for_version(
    version: str, in_dim: int, hidden_dim: int | None, out_dim: int
) -> ProjectionHead:
    """The projection head of a SimCLR version.

    ``v1``: 2 layers as the v1 paper describes them (Linear, ReLU, Linear). ``v1-bn``: the same
    2 layers with batch norm on each, as the official v1 code builds them. ``v2``: 3 layers with
    batch norm on each (paper and code).
    """
    hidden = in_dim if hidden_dim is None else hidden_dim
    if version not in HEAD_VERSIONS:
        raise ValueError(f"unknown head version {version!r}; choose {', '.join(HEAD_VERSIONS)}")
    num_layers, batch_norm = HEAD_VERSIONS[version]
    return ProjectionHead(in_dim, hidden, out_dim, num_layers=num_layers, batch_norm=batch_norm)


HEAD_VERSIONS = {"v1": (2, False), "v1-bn": (2, True), "v2": (3, True)}
"""``model.head`` values: (Linear layers, batch norm after each)."""
