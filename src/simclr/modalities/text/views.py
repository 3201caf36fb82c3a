"""Two views of a batch of token sequences: token dropout, span deletion, local shuffling.

The discrete edits of CLEAR (Wu et al. 2020) and the noise of unsupervised translation (Lample
et al. 2018), batched: each item of the ``2B`` views gets its own random parameters
(:func:`sample_token_view_params`) and one pure function applies them
(:func:`apply_token_views`). The third source of difference between the views, SimCSE's
dropout noise (Gao et al. 2021), lives in the encoder: the loop runs both views through it in
train mode, so every row gets its own dropout masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from simclr.config import TextConfig
from simclr.modalities.base import SeededViews
from simclr.modalities.text.tokenizer import PAD_ID


@dataclass(frozen=True)
class TokenViewParams:
    """Random parameters of N views of sequences ``L`` tokens wide.

    Shape:
        ``survives`` bool ``[N, L]`` (the token is not dropped by token dropout);
        ``span_start``, ``span_length`` int64 ``[N]`` (the deleted span, in input positions);
        ``jitter`` float32 ``[N, L]`` in ``[0, shuffle_window + 1)`` (local-shuffle noise of
        the token that lands at that position after the deletions).
    """

    survives: Tensor
    span_start: Tensor
    span_length: Tensor
    jitter: Tensor

    def row(self, index: int) -> TokenViewParams:
        """The parameters of view ``index`` alone (a batch of one)."""
        i = slice(index, index + 1)
        return TokenViewParams(
            self.survives[i], self.span_start[i], self.span_length[i], self.jitter[i]
        )


def sample_token_view_params(
    lengths: Tensor, width: int, cfg: TextConfig, generator: torch.Generator
) -> TokenViewParams:
    """Draw the parameters of one view per sequence.

    Each token survives token dropout with probability ``1 - cfg.word_dropout``; the span
    length is uniform in ``0 .. floor(cfg.span_deletion x length)`` and its start uniform over
    the positions where it fits; the shuffle noise is uniform in ``[0, shuffle_window + 1)``.

    Args:
        lengths: Valid tokens of each sequence, int64 ``[N]``.
        width: Padded width L of the sequences.
        cfg: The text recipe.
        generator: Source of every random number (on ``lengths``' device).
    """
    n, device = len(lengths), lengths.device

    def uniform(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=device)

    survives = uniform(n, width) >= cfg.word_dropout
    longest = (lengths * cfg.span_deletion).floor().long()
    span_length = (uniform(n) * (longest + 1)).long()  # floor of a uniform: 0..longest
    span_start = (uniform(n) * (lengths - span_length + 1)).long()
    jitter = uniform(n, width) * (cfg.shuffle_window + 1)
    return TokenViewParams(survives, span_start, span_length, jitter)


def apply_token_views(
    ids: Tensor, lengths: Tensor, params: TokenViewParams
) -> tuple[Tensor, Tensor]:
    """Edit each sequence with its parameters; the result is packed to the left and padded.

    A token is kept when it is valid, survives token dropout and lies outside the deleted span.
    If nothing is kept, the first token outside the span is (a view is never empty; the span
    never covers a whole sequence because ``span_deletion < 1``). The kept tokens are then
    sorted by ``packed position + jitter``: a token moves at most ``shuffle_window`` places,
    since two tokens further apart than that cannot swap.

    Returns:
        ``(ids, lengths)`` of the views, dtype and device of the input.

    Shape:
        ids ``[N, L]``, lengths ``[N]`` -> ``[N, L]``, ``[N]``.
    """
    positions = torch.arange(ids.shape[1], device=ids.device)
    span_end = params.span_start + params.span_length
    outside_span = (positions < params.span_start[:, None]) | (positions >= span_end[:, None])
    keep = (positions < lengths[:, None]) & params.survives & outside_span
    rescue = torch.where(params.span_start > 0, 0, params.span_length)
    keep |= (positions == rescue[:, None]) & ~keep.any(1, keepdim=True)

    packed = keep.cumsum(1) - 1
    key = (packed + params.jitter).masked_fill(~keep, float("inf"))
    order = key.argsort(dim=1, stable=True)
    view_lengths = keep.sum(1)
    views = ids.gather(1, order).masked_fill(positions >= view_lengths[:, None], PAD_ID)
    return views, view_lengths


class TokenViews(SeededViews):
    """The two-view generator of text: ``views(ids, lengths) -> (view1, view2)``.

    Both views of an item are independent draws; the ``2B`` views are edited as one batch on
    the ids' device.

    Args:
        cfg: The text recipe (``word_dropout``, ``span_deletion``, ``shuffle_window``).
        seed: Seed of the generator.
    """

    def __init__(self, cfg: TextConfig, seed: int = 0) -> None:
        super().__init__(seed)
        self.cfg = cfg

    def extra_repr(self) -> str:
        """Show the recipe in ``print(module)``."""
        c = self.cfg
        return (
            f"word_dropout={c.word_dropout}, span_deletion={c.span_deletion}, "
            f"shuffle_window={c.shuffle_window}, seed={self.seed}"
        )

    @torch.no_grad()
    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Two edited views of each sequence.

        Shape:
            ids int64 ``[B, L]`` (:data:`PAD_ID` after the valid tokens), lengths ``[B]`` ->
            two ``[B, L]``, int64, on the ids' device.
        """
        both = torch.cat([ids, ids])
        both_lengths = torch.cat([lengths, lengths]).to(ids.device)
        params = sample_token_view_params(
            both_lengths, ids.shape[1], self.cfg, self.generator(ids.device)
        )
        views, _ = apply_token_views(both, both_lengths, params)
        first, second = views.chunk(2)
        return first, second
