"""The 1-D ResNet of Wang, Yan and Oates 2017, the usual encoder for UCR/UEA series.

"Time series classification from scratch with deep neural networks: a strong baseline"
(arXiv 1611.06455): three residual blocks of three convolutions each (kernels 8, 5 and 3,
stride 1, "same" padding, batch norm, ReLU), 64, 128 and 128 channels, then global average
pooling over time, so the representation h does not depend on the series length.
"""

from __future__ import annotations

from torch import Tensor, nn

BLOCK_WIDTHS = (64, 128, 128)
KERNELS = (8, 5, 3)


class ResidualBlock1d(nn.Module):
    """Three convolutions with batch norm, added to a shortcut, then ReLU.

    The shortcut is a 1x1 convolution with batch norm when the width changes and batch norm
    alone otherwise, as in the paper's implementation.

    Shape:
        ``[B, in_channels, L]`` -> ``[B, out_channels, L]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for index, kernel in enumerate(KERNELS):
            # "same" padding, the extra step of an even kernel on the right (as Keras pads)
            left = (kernel - 1) // 2
            layers.append(nn.ConstantPad1d((left, kernel - 1 - left), 0.0))
            layers.append(nn.Conv1d(width, out_channels, kernel, bias=False))
            layers.append(nn.BatchNorm1d(out_channels))
            if index < len(KERNELS) - 1:  # the last ReLU comes after the addition
                layers.append(nn.ReLU(inplace=True))
            width = out_channels
        self.body = nn.Sequential(*layers)
        shortcut: list[nn.Module] = []
        if in_channels != out_channels:
            shortcut.append(nn.Conv1d(in_channels, out_channels, 1, bias=False))
        shortcut.append(nn.BatchNorm1d(out_channels))
        self.shortcut = nn.Sequential(*shortcut)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """The block's output."""
        out: Tensor = self.relu(self.body(x) + self.shortcut(x))
        return out


class ResNet1d(nn.Module):
    """Encoder f for series: three residual blocks and global average pooling.

    Args:
        in_channels: Channels of the input series.
        width: Multiplier of the block widths 64/128/128 (at least one channel each).

    Shape:
        ``[B, in_channels, L]`` (any L >= 1) -> ``[B, out_dim]``, ``out_dim = round(128 width)``.
    """

    def __init__(self, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        widths = [max(1, round(w * width)) for w in BLOCK_WIDTHS]
        blocks = []
        previous = in_channels
        for channels in widths:
            blocks.append(ResidualBlock1d(previous, channels))
            previous = channels
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        """The representation h: the last block's output averaged over time."""
        h: Tensor = self.blocks(x).mean(dim=-1)
        return h
