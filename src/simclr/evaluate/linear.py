"""Linear evaluation: a linear classifier on top of the frozen representation.

Two protocols:

* :func:`linear_probe` -- multinomial logistic regression (scikit-learn, L-BFGS) on cached frozen
  features, standardised, with the L2 strength C chosen on a stratified validation split carved
  out of the training set (never the test set), then refit on the whole training set. Cheap,
  deterministic, and what most SSL libraries report.
* :func:`linear_probe_sgd` -- the paper's protocol (arXiv 2002.05709, appendix B.6): a
  zero-initialised linear layer trained with SGD + momentum and a cosine schedule on top of the
  frozen backbone, with random crop and flip every step, scored with the evaluation
  preprocessing.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from simclr.config import AugmentConfig
from simclr.data.datasets import ImageDataset, require_labels
from simclr.errors import UserError
from simclr.evaluate.accuracy import topk_accuracy
from simclr.evaluate.classifier import Classifier, ClassifierTraining, train_and_score, zero_linear
from simclr.evaluate.features import Features
from simclr.models.backbones import input_channels

log = logging.getLogger("simclr")

DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Inverse L2 strengths tried, log-spaced (C = 1 / (lambda N) in scikit-learn's convention)."""
DEFAULT_MAX_ITER = 1000
"""L-BFGS iterations per fit, at most. With ``tol=1e-6`` the fits on standardised features
take 5-30 iterations (warm-started along the grid); the cap bounds the worst case at 7 fits x
1000 iterations x ~30 ms (45k x 128 x 10 classes, one thread) = a few minutes."""
DEFAULT_TOL = 1e-6
"""L-BFGS gradient tolerance. scikit-learn's 1e-4 stops the warm-started fits at C >= 10 after 0
iterations on 45k items (the change of the L2 term is below it), so they would all report the
solution of the previous C; 1e-6 lets every C move, for ~2x the time of 1e-4."""
SGD_PROBE_TRAINING = ClassifierTraining(epochs=100, batch_size=512, lr=0.1, nesterov=True)
"""The paper's linear-evaluation settings for :func:`linear_probe_sgd`: 100 epochs, batch 512,
lr 0.1 per 256 images, SGD with Nesterov momentum 0.9 (as the official code), no weight
decay."""


def validation_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split training items into a fit part and a stratified validation part.

    The validation part holds ``round(fraction * N)`` items, at least one per class, with every
    class in the same proportion as in ``labels``; the split is a function of the labels,
    ``fraction`` and ``seed``.

    Returns:
        ``(fit, val)``: sorted, disjoint positions covering ``0..N-1``. Shape: ``[N]`` -> two
        int64 tensors.

    Raises:
        UserError: ``fraction`` outside (0, 1), or a class with a single item.
    """
    if not 0 < fraction < 1:
        raise UserError(f"validation fraction must be in (0, 1), got {fraction}")
    y = labels.numpy()
    num_classes = len(np.unique(y))
    num_val = max(round(fraction * len(y)), num_classes)
    if len(y) - num_val < num_classes:
        raise UserError(
            f"{len(y)} training items are too few to hold out a validation split with every one "
            f"of the {num_classes} classes on both sides"
        )
    try:
        fit, val = train_test_split(
            np.arange(len(y)), test_size=num_val, stratify=y, random_state=seed
        )
    except ValueError as err:
        raise UserError(f"cannot make a stratified validation split: {err}") from None
    return torch.from_numpy(np.sort(fit)), torch.from_numpy(np.sort(val))


def linear_probe(
    train: Features,
    test: Features,
    *,
    val_fraction: float = 0.1,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Multinomial logistic regression on frozen features, C chosen on validation data.

    Steps: (1) :func:`validation_split` of the training features; (2) for each C in ascending
    order, fit a standardiser on the fit part and L-BFGS logistic regression on it, warm-started
    from the previous C, and measure top-1 and log-loss on the validation part; (3) pick the C
    with the best validation top-1, the lowest validation log-loss among ties (small validation
    sets often tie at several C, and the weakest C then underfits); (4) refit the standardiser
    and the regression on the whole training set with that C; (5) report top-1/top-5 on the
    test set.
    The test labels are used in step 5 only. Features are fitted as float32 (half the memory of
    float64; same accuracies and half the time on 50k x 128 features here).

    Args:
        train: Labelled training features (:func:`simclr.evaluate.features.dataset_features`).
        test: Labelled test features from the same encoder.
        val_fraction: Share of the training items held out to choose C.
        c_grid: Inverse regularisation strengths to try.
        seed: Seed of the validation split (the fits themselves are deterministic).
        max_iter: L-BFGS iteration cap per fit (see :data:`DEFAULT_MAX_ITER`).
        tol: L-BFGS gradient tolerance (see :data:`DEFAULT_TOL`).
        threads: BLAS threads during the fits; ``None`` keeps the library default. One by
            default: these products are skinny (classes x items x features) and OpenBLAS's
            threads spin-wait when the cores are shared. On 2 cores with other jobs running the
            whole probe (50k x 128, 10 classes) took 35 s with 2 threads against 2.1 s with one;
            on idle cores 2 threads were only 15% faster (2.6 s against 3.0 s).

    Returns:
        ``top1``, ``top5`` (percent on the test set), ``best_c``, ``val_top1`` and
        ``val_log_loss`` (validation scores per C), ``seconds`` and the ``protocol``.

    Raises:
        UserError: unlabelled features, an empty C grid, or a training set too small to split.
    """
    grid = _checked_grid(train, test, c_grid)
    began = time.perf_counter()
    x_train, y_train = train.features.numpy().astype(np.float32), train.labels.numpy()
    fit, val = (i.numpy() for i in validation_split(train.labels, val_fraction, seed))
    with threadpool_limits(limits=threads):
        search = _search_c(x_train, y_train, fit, val, grid, max_iter=max_iter, tol=tol)
        final, scores = _fit_final(x_train, y_train, test, search.best_c, max_iter, tol)
    if int(np.max(final.n_iter_)) >= max_iter:
        log.warning("linear probe: L-BFGS stopped at max_iter=%d at C=%g", max_iter, search.best_c)
    result = topk_accuracy(scores, test.labels, torch.from_numpy(final.classes_))
    return {
        **result,
        "best_c": search.best_c,
        "val_top1": {f"{c:g}": v for c, v in search.val_top1.items()},
        "val_log_loss": {f"{c:g}": round(v, 4) for c, v in search.val_loss.items()},
        "seconds": round(time.perf_counter() - began, 2),
        "protocol": _logistic_protocol(
            train,
            test,
            grid,
            search,
            final,
            fit=fit,
            val=val,
            val_fraction=val_fraction,
            seed=seed,
            max_iter=max_iter,
            tol=tol,
            threads=threads,
        ),
    }


def _checked_grid(train: Features, test: Features, c_grid: Sequence[float]) -> list[float]:
    """The C grid in ascending order, after checking that both feature sets have labels."""
    for role, features in (("training", train), ("test", test)):
        if not features.has_labels:
            raise UserError(f"the {role} features have no labels; a linear probe needs classes")
    grid = sorted(float(c) for c in c_grid)
    if not grid or min(grid) <= 0:
        raise UserError(f"the C grid must hold positive values, got {list(c_grid)}")
    return grid


@dataclass
class _CSearch:
    """Validation scores per C and the C chosen from them."""

    best_c: float
    val_top1: dict[float, float]
    """Percent, rounded to 2 decimals."""
    val_loss: dict[float, float]
    iterations: dict[float, int]
    """L-BFGS iterations of each fit."""


def _search_c(
    x_train: np.ndarray,
    y_train: np.ndarray,
    fit: np.ndarray,
    val: np.ndarray,
    grid: list[float],
    *,
    max_iter: int,
    tol: float,
) -> _CSearch:
    """Steps 2-3 of :func:`linear_probe`: warm-started fits along the grid, then the choice.

    Args:
        x_train: Training features. Shape: ``[N, D]`` float32.
        y_train: Their labels. Shape: ``[N]``.
        fit: Positions fitted on (:func:`validation_split`).
        val: Positions scored.
        grid: Ascending C values.
        max_iter: L-BFGS iteration cap per fit.
        tol: L-BFGS gradient tolerance.
    """
    scaler = StandardScaler().fit(x_train[fit])
    x_fit, x_val = scaler.transform(x_train[fit]), scaler.transform(x_train[val])
    model = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
    val_top1, val_loss, iterations = {}, {}, {}
    for c in grid:
        model.set_params(C=c)
        _fit_quietly(model, x_fit, y_train[fit])
        val_top1[c] = round(100.0 * float(model.score(x_val, y_train[val])), 2)
        probabilities = model.predict_proba(x_val)
        val_loss[c] = float(log_loss(y_train[val], probabilities, labels=model.classes_))
        iterations[c] = int(np.max(model.n_iter_))
    best_c = max(grid, key=lambda c: (val_top1[c], -val_loss[c], -c))
    return _CSearch(best_c, val_top1, val_loss, iterations)


def _fit_final(
    x_train: np.ndarray,
    y_train: np.ndarray,
    test: Features,
    c: float,
    max_iter: int,
    tol: float,
) -> tuple[LogisticRegression, Tensor]:
    """Steps 4-5 of :func:`linear_probe`: refit on the whole training set, predict the test set.

    Returns:
        The fitted regression and its class probabilities on the test features. Shape:
        ``[N_test, num_classes]`` float64.
    """
    scaler = StandardScaler().fit(x_train)
    final = LogisticRegression(C=c, max_iter=max_iter, tol=tol)
    _fit_quietly(final, scaler.transform(x_train), y_train)
    x_test = scaler.transform(test.features.numpy().astype(np.float32))
    return final, torch.from_numpy(final.predict_proba(x_test))


def _logistic_protocol(
    train: Features,
    test: Features,
    grid: list[float],
    search: _CSearch,
    final: LogisticRegression,
    *,
    fit: np.ndarray,
    val: np.ndarray,
    val_fraction: float,
    seed: int,
    max_iter: int,
    tol: float,
    threads: int | None,
) -> dict[str, Any]:
    """The protocol record of :func:`linear_probe` (its arguments, the search and the final fit)."""
    return {
        "method": "multinomial logistic regression on frozen features",
        "features": f"frozen, precomputed, {train.features.shape[1]}-d (float32)",
        "standardised": "StandardScaler fitted on the training items only (the fit part "
        "while choosing C, the whole training set for the final fit)",
        "solver": "lbfgs (scikit-learn LogisticRegression, L2)",
        "max_iter": max_iter,
        "tol": tol,
        "blas_threads": threads,
        "iterations": {f"{c:g}": n for c, n in search.iterations.items()}
        | {"final": int(np.max(final.n_iter_))},
        "c_grid": grid,
        "chosen_c": search.best_c,
        "selection": "best validation top-1, lowest validation log-loss on ties; fits "
        "warm-started along the ascending grid",
        "val_fraction": val_fraction,
        "split": "stratified by class, carved from the training set; test set unused",
        "num_fit": len(fit),
        "num_val": len(val),
        "num_train": len(train.labels),
        "num_test": len(test.labels),
        "seed": seed,
    }


def _fit_quietly(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> None:
    """Fit; hitting the iteration cap is recorded in the protocol instead of warned per C."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)


def linear_probe_sgd(
    encoder: nn.Module,
    train_set: ImageDataset,
    test_set: ImageDataset,
    *,
    size: int,
    training: ClassifierTraining = SGD_PROBE_TRAINING,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The paper's linear evaluation: SGD on a linear layer over the frozen, augmented backbone.

    The backbone stays in eval mode and runs without gradient (its weights and batch-norm
    statistics never change); the zero-initialised linear layer sees a new random resized crop
    and flip of every image each epoch. Trained on the whole training set with fixed
    hyperparameters, as in the paper (no validation split).

    Args:
        encoder: The backbone, images ``[B, C, size, size]`` -> features ``[B, D]``.
        train_set: Labelled training images.
        test_set: Labelled test images with the same classes.
        size: Side of the crops and of the test images (the pretraining ``augment.size``).
        training: Epochs (paper: 90-100), batch size, learning rate per 256 images, optimizer,
            budget and loading (:data:`SGD_PROBE_TRAINING` by default).
        device: Where to run.

    Returns:
        ``top1``/``top5`` (percent on the test set), ``train_seconds`` and the ``protocol``.
    """
    require_labels(train_set, test_set, "a linear probe")
    device = torch.device(device)
    was_training = encoder.training
    encoder = encoder.to(device)
    dim = _output_dim(encoder, size, device)
    fc = zero_linear(dim, len(train_set.classes))
    model = Classifier(encoder, nn.Sequential(), fc, freeze_backbone=True)
    items = torch.arange(len(train_set))
    try:
        result, shared = train_and_score(
            model,
            train_set,
            items,
            test_set,
            AugmentConfig(size=size),
            training,
            device=device,
            show_crop_ratio=False,
        )
    finally:
        encoder.train(was_training)
    return {
        **result,
        "protocol": {
            "method": "linear classifier trained by SGD on the frozen backbone (SimCLR paper)",
            "features": f"backbone output h, {dim}-d, frozen (eval mode, no gradient)",
            **shared,
        },
    }


@torch.no_grad()
def _output_dim(encoder: nn.Module, size: int, device: torch.device) -> int:
    """Feature dimension of ``encoder``, from one blank image in eval mode (state untouched)."""
    was_training = encoder.training
    encoder.eval()
    try:
        blank = torch.zeros(1, input_channels(encoder), size, size, device=device)
        return int(encoder(blank).flatten(1).shape[1])
    finally:
        encoder.train(was_training)
