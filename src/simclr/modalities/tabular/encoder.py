"""The ``mlp`` encoder of table rows: category embeddings, then Linear -> (BN) -> ReLU blocks.

SCARF's encoder (Bahri et al. 2022) is a plain ReLU MLP on the row's features; categorical
columns, which arrive as integer codes, first go through one learned embedding each (code 0,
"unknown or missing", has its own vector). The representation h is the last block's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class TabularMLP(nn.Module):
    """MLP over encoded rows: standardised numbers as they are, category codes embedded.

    Args:
        cardinalities: Per column, 0 for a numeric column or the number of known categories of
            a categorical one (codes ``0..n``, 0 = unknown).
        hidden_dim: Width of every block, and the feature dimension.
        layers: Number of Linear -> (BN) -> ReLU -> (dropout) blocks.
        batch_norm: Batch norm after every Linear (which then has no bias).
        dropout: Dropout after every block (0: none).
        embedding_dim: Largest embedding size; a column gets ``min(embedding_dim, n + 1)``.

    Shape:
        ``[B, D]`` float (codes are whole numbers) -> ``[B, hidden_dim]``.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        *,
        hidden_dim: int = 256,
        layers: int = 4,
        batch_norm: bool = True,
        dropout: float = 0.0,
        embedding_dim: int = 8,
    ) -> None:
        super().__init__()
        if not cardinalities:
            raise ValueError("a table needs at least one column")
        self.feature_dim = hidden_dim
        numeric = [j for j, n in enumerate(cardinalities) if n == 0]
        categorical = [j for j, n in enumerate(cardinalities) if n > 0]
        # Column positions depend only on the fitted table, so they are not saved as state.
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.long), persistent=False)
        self.categorical = categorical
        self.limits = [cardinalities[j] for j in categorical]
        sizes = [min(embedding_dim, n + 1) for n in self.limits]
        self.embeddings = nn.ModuleList(
            nn.Embedding(n + 1, size) for n, size in zip(self.limits, sizes, strict=True)
        )
        width = len(numeric) + sum(sizes)
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm1d(hidden_dim))
            blocks.append(nn.ReLU(inplace=True))
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = hidden_dim
        self.blocks = nn.Sequential(*blocks)

    def forward(self, rows: Tensor) -> Tensor:
        """Features h of encoded rows."""
        numeric: Tensor = self.numeric  # type: ignore[assignment]
        parts = [rows.index_select(1, numeric)]
        for j, limit, embedding in zip(self.categorical, self.limits, self.embeddings, strict=True):
            # Codes beyond the vocabulary cannot come from encode_rows; clamp keeps them valid.
            codes = rows[:, j].round().long().clamp_(0, limit)
            parts.append(embedding(codes).to(rows.dtype))
        features: Tensor = self.blocks(torch.cat(parts, dim=1))
        return features
