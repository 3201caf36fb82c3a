"""SimCLR (Chen et al. 2020, arXiv 2002.05709): contrastive self-supervised pretraining.

The public API: the model (:class:`SimCLR`, :func:`create_backbone`, :class:`ProjectionHead`),
the loss (:func:`nt_xent`, :class:`NTXentLoss`), the batched two-view augmentation
(:class:`SimCLRViews`), the optimizer (:class:`LARS`), the configuration (:class:`Config`) and
the loop (:func:`pretrain`).
"""

from simclr.augment.views import SimCLRViews as SimCLRViews
from simclr.config import Config as Config
from simclr.config import build_config as build_config
from simclr.data.datasets import array_dataset as array_dataset
from simclr.data.datasets import build_dataset as build_dataset
from simclr.evaluate.classifier import ClassifierTraining as ClassifierTraining
from simclr.evaluate.cluster import cluster as cluster
from simclr.evaluate.distill import DistillationLoss as DistillationLoss
from simclr.evaluate.distill import distill as distill
from simclr.evaluate.features import extract_features as extract_features
from simclr.evaluate.features import load_encoder as load_encoder
from simclr.evaluate.finetune import finetune as finetune
from simclr.evaluate.finetune import load_classifier as load_classifier
from simclr.evaluate.knn import knn_accuracy as knn_accuracy
from simclr.evaluate.knn import knn_predict as knn_predict
from simclr.evaluate.linear import linear_probe as linear_probe
from simclr.export import embed as embed
from simclr.losses import NTXentLoss as NTXentLoss
from simclr.losses import nt_xent as nt_xent
from simclr.models.backbones import create_backbone as create_backbone
from simclr.models.backbones import register_backbone as register_backbone
from simclr.models.heads import ProjectionHead as ProjectionHead
from simclr.models.simclr import SimCLR as SimCLR
from simclr.optim import LARS as LARS
from simclr.train import pretrain as pretrain

__version__ = "0.1.0"
