"""The tokenizer: a byte-level BPE (as GPT-2's) trained on the training texts.

Byte-level BPE never meets an unknown character (every byte is in the base vocabulary), so the
only special token is the padding ``<pad>``, id :data:`PAD_ID`. The fitted tokenizer travels as
its JSON string (``Tokenizer.to_str``), which checkpoints store with the rest of the fitted
preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from simclr.errors import require

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PAD = "<pad>"
PAD_ID = 0
"""Id of :data:`PAD`: the first special token, so zero-padded id tensors are padded."""


def train_tokenizer(texts: Sequence[str], *, vocab_size: int, lowercase: bool) -> str:
    """Train a byte-level BPE with at most ``vocab_size`` tokens on ``texts``.

    Merges stop at ``vocab_size`` or when no pair of tokens occurs twice, whichever is first.

    Returns:
        The tokenizer as JSON (rebuild it with :func:`load_tokenizer`).
    """
    require("tokenizers", "text", "for text data")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if lowercase:
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tokenizer.token_to_id(PAD) != PAD_ID:
        raise RuntimeError(f"{PAD} did not get id {PAD_ID}")
    json_text: str = tokenizer.to_str()
    return json_text


def load_tokenizer(json_text: str) -> Tokenizer:
    """The tokenizer saved by :func:`train_tokenizer`."""
    require("tokenizers", "text", "for text data")
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json_text)


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Token ids of the start of each text, zero-padded to ``max_length``.

    Truncation and padding are the tokenizer's own (this sets them on ``tokenizer``).

    Returns:
        ``(ids, lengths)``: ids int64 ``[N, max_length]`` (:data:`PAD_ID` after the valid
        tokens), lengths int64 ``[N]`` (valid tokens of each text, at most ``max_length``).
    """
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token=PAD, length=max_length)
    encodings = tokenizer.encode_batch(list(texts))
    shape = (len(texts), max_length)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(shape)
    valid = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long).reshape(shape)
    return ids, valid.sum(1)


def decode(tokenizer: Tokenizer, ids: Tensor) -> list[str]:
    """The text of each row of token ids, padding left out.

    Shape:
        ids ``[N, L]`` -> N strings.
    """
    rows = [[t for t in row if t != PAD_ID] for row in ids.tolist()]
    decoded: list[str] = tokenizer.decode_batch(rows)
    return [text.strip() for text in decoded]
