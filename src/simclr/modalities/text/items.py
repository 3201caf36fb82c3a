"""A text dataset in memory: token ids with the texts and the tokenizer that made them."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from simclr.data.items import TensorItems


class TextItems(TensorItems):
    """:class:`TensorItems` of token ids that keep their source texts and tokenizer.

    The texts serve the listing of views and the TF-IDF baseline; the tokenizer (its JSON)
    decodes the views back to text.

    Shape:
        ``inputs`` int64 ``[N, max_length]`` (zero-padded), ``lengths`` ``[N]``.
    """

    def __init__(
        self,
        inputs: Tensor,
        lengths: Tensor,
        labels: Tensor,
        classes: Sequence[str],
        names: Sequence[str],
        *,
        texts: Sequence[str],
        tokenizer: str,
    ) -> None:
        super().__init__(inputs, lengths, labels, classes, names)
        if len(texts) != len(self.names):
            raise ValueError("texts must have one entry per item")
        self.texts = list(texts)
        self.tokenizer = tokenizer

    def subset(self, index: Tensor) -> TextItems:
        """The items at ``index`` (int64 positions), in that order, with their texts."""
        positions = index.tolist()
        return TextItems(
            self.inputs[index],
            self.lengths[index],
            self.labels[index],
            self.classes,
            [self.names[i] for i in positions],
            texts=[self.texts[i] for i in positions],
            tokenizer=self.tokenizer,
        )
