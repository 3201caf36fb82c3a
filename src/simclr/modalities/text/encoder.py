"""The text encoder: a small pre-norm Transformer, mean-pooled over the valid tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from simclr.modalities.text.tokenizer import PAD_ID


class TextTransformer(nn.Module):
    """Token and learned position embeddings, a pre-norm Transformer encoder, mean pooling.

    Padding (:data:`PAD_ID`) is masked out of the attention and of the pooling, so padded
    positions do not change the output. Batches are cut to their last valid position first
    (the same result, faster when the batch holds short texts), except while exporting or
    compiling, where a width read from the data would be frozen into the graph.

    Args:
        vocab_size: Rows of the token embedding (the tokenizer's vocabulary).
        max_length: Longest sequence (rows of the position embedding).
        dim: Width of the model and of the output.
        layers: Transformer layers.
        heads: Attention heads (``dim`` must be a multiple).
        dropout: Dropout on the embeddings, attention weights and feed-forward layers.

    Shape:
        input int64 ``[B, L]``, L <= ``max_length``, padded after the valid tokens ->
        output ``[B, dim]``.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        *,
        dim: int = 256,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.positions = nn.Embedding(max_length, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Pre-norm layers leave their output unnormalised: one LayerNorm closes the stack.
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        # BERT's initialisation of the embeddings: small, so they do not swamp the residuals.
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[PAD_ID].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        """Mean of the last layer's outputs over the valid (non-padding) tokens."""
        if ids.shape[1] > self.max_length:
            raise ValueError(f"sequences of {ids.shape[1]} tokens; at most {self.max_length}")
        valid = ids.ne(PAD_ID)
        # An all-padding row would attend to nothing (NaN); let it see its first position.
        valid[:, 0] |= ~valid.any(1)
        if not _tracing():
            width = int((valid * torch.arange(1, ids.shape[1] + 1, device=ids.device)).max())
            ids, valid = ids[:, :width], valid[:, :width]
        x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
        h = self.encoder(self.dropout(x), src_key_padding_mask=~valid)
        weights = valid.unsqueeze(-1).to(h.dtype)
        pooled: Tensor = (h * weights).sum(1) / weights.sum(1)
        return pooled


def _tracing() -> bool:
    """Whether the model is being exported or compiled (data-dependent widths must not be)."""
    return bool(
        torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
    )
