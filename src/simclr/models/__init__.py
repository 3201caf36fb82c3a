"""Models: backbones (encoder f), projection heads (g) and SimCLR (f + g)."""

from simclr.models.backbones import create_backbone as create_backbone
from simclr.models.backbones import input_channels as input_channels
from simclr.models.backbones import list_backbones as list_backbones
from simclr.models.backbones import register_backbone as register_backbone
from simclr.models.heads import ProjectionHead as ProjectionHead
from simclr.models.resnet_v2 import ResNetV2 as ResNetV2
from simclr.models.simclr import SimCLR as SimCLR
