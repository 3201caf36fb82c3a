"""What the encoder is asked to match, in words: texts next to their two decoded views."""

from __future__ import annotations

from pathlib import Path

from simclr.checkpoint import write_text_atomic
from simclr.config import TextConfig
from simclr.errors import UserError
from simclr.modalities.text.items import TextItems
from simclr.modalities.text.tokenizer import PAD_ID, decode, load_tokenizer
from simclr.modalities.text.views import TokenViews


def write_view_listing(
    items: TextItems, cfg: TextConfig, out: Path, *, num_items: int, seed: int
) -> Path:
    """Write the first ``num_items`` texts with two views each, decoded from their token ids.

    The views come from :class:`TokenViews` seeded with ``seed``, as in training (the encoder's
    dropout, the fourth difference between views, is not visible here).

    Args:
        items: The texts (from :meth:`TextModality.open`).
        cfg: The text recipe.
        out: Where to write; the suffix becomes ``.txt`` (parent folders are created).
        num_items: Items listed (fewer when the dataset is smaller).
        seed: Seed of the views.

    Returns:
        The path written.

    Raises:
        UserError: ``num_items`` < 1.
    """
    if num_items < 1:
        raise UserError(f"num_items must be at least 1 (got {num_items})")
    count = min(num_items, len(items))
    first, second = TokenViews(cfg, seed)(items.inputs[:count], items.lengths[:count])
    tokenizer = load_tokenizer(items.tokenizer)
    decoded = decode(tokenizer, first), decode(tokenizer, second)
    lines = [
        f"# {count} texts and two views of each (token dropout {cfg.word_dropout}, span "
        f"deletion up to {cfg.span_deletion}, shuffle window {cfg.shuffle_window}; seed {seed}).",
        f"# Views are decoded from the first {cfg.max_length} tokens of the lower-case text"
        if cfg.lowercase
        else f"# Views are decoded from the first {cfg.max_length} tokens of the text",
        "",
    ]
    for i in range(count):
        label = int(items.labels[i])
        heading = f"[{i + 1}] {items.names[i]}"
        if label >= 0:
            heading += f"  class {items.classes[label]}"
        lengths = [
            int(items.lengths[i]),
            int((first[i] != PAD_ID).sum()),
            int((second[i] != PAD_ID).sum()),
        ]
        lines += [
            heading,
            f"  text   ({lengths[0]:3d} tokens): {items.texts[i]}",
            f"  view 1 ({lengths[1]:3d} tokens): {decoded[0][i]}",
            f"  view 2 ({lengths[2]:3d} tokens): {decoded[1][i]}",
            "",
        ]
    path = out.with_suffix(".txt")
    return write_text_atomic(path, "\n".join(lines))
