"""Evaluation: extract frozen features once, then score them."""

from simclr.evaluate.features import extract_features as extract_features
from simclr.evaluate.knn import knn_accuracy as knn_accuracy
from simclr.evaluate.knn import knn_predict as knn_predict
