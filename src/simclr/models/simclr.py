"""SimCLR = encoder f + projection head g."""

from __future__ import annotations

from torch import Tensor, nn

from simclr.config import ModelConfig
from simclr.models.backbones import create_backbone
from simclr.models.heads import ProjectionHead, head_for_version


class SimCLR(nn.Module):
    """Backbone f and projection head g as one module, for any modality.

    ``forward_features`` gives the representation h = f(x) used downstream (kNN, linear probe,
    export); ``forward`` gives z = g(f(x)), used only by the contrastive loss (section 2.1 of the
    paper: the representation before the head is the better one).

    Args:
        backbone: Module mapping a batch x to ``[B, feature_dim]`` (more axes are flattened).
        feature_dim: Output dimension of the backbone.
        head: The projection head; its input dimension must be ``feature_dim``.

    Shape:
        x: whatever the backbone takes (images ``[B, C, H, W]``, token ids ``[B, L]``, ...);
        h: ``[B, feature_dim]``; z: ``[B, out_dim]``.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = head

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SimCLR:
        """Build the image model of a :class:`ModelConfig` (registered, timm or tv backbone).

        The encoder takes ``cfg.in_channels`` channels (3 when ``None``; the image modality
        fills in the count of the training data).
        """
        backbone, dim = create_backbone(
            cfg.backbone,
            width=cfg.width,
            stem=cfg.stem,
            zero_init_residual=cfg.zero_init_residual,
            args=cfg.backbone_args,
            in_channels=3 if cfg.in_channels is None else cfg.in_channels,
        )
        head = head_for_version(cfg.head, dim, cfg.head_hidden_dim, cfg.head_out_dim)
        return cls(backbone, dim, head)

    def forward_features(self, x: Tensor) -> Tensor:
        """Representation h = f(x), flattened to ``[B, feature_dim]``."""
        features: Tensor = self.backbone(x)
        return features.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Projection z = g(f(x)), ``[B, out_dim]``."""
        projected: Tensor = self.head(self.forward_features(x))
        return projected
