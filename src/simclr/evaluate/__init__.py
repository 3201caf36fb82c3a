"""Evaluation: extract frozen features once, then score them."""

from simclr.evaluate.classifier import ClassifierTraining as ClassifierTraining
from simclr.evaluate.cluster import cluster as cluster
from simclr.evaluate.distill import DistillationLoss as DistillationLoss
from simclr.evaluate.distill import distill as distill
from simclr.evaluate.features import Features as Features
from simclr.evaluate.features import dataset_features as dataset_features
from simclr.evaluate.features import extract_features as extract_features
from simclr.evaluate.features import load_encoder as load_encoder
from simclr.evaluate.finetune import finetune as finetune
from simclr.evaluate.finetune import load_classifier as load_classifier
from simclr.evaluate.knn import knn_accuracy as knn_accuracy
from simclr.evaluate.knn import knn_predict as knn_predict
from simclr.evaluate.linear import linear_probe as linear_probe
