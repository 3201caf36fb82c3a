"""The standard non-learned baseline of text classification: TF-IDF bag of words.

TF-IDF of the words (scikit-learn's ``TfidfVectorizer`` fitted on the training texts only;
words seen in at least two of them; sublinear term frequency; L2-normalised rows), the
"BoW TFIDF" of Zhang et al. (2015), under the two protocols the learned features get:

* weighted kNN (:func:`simclr.evaluate.knn.knn_accuracy`: k and temperature of ``eval``, cosine);
* multinomial logistic regression on the TF-IDF vectors (the usual linear classifier of this
  baseline: sparse, not standardised), with C chosen on the same stratified validation split of
  the training set as :func:`simclr.evaluate.linear.linear_probe`, then refit on all of it.

    .venv/bin/python benchmarks/baseline_text.py /work/shared/data/ag-news-test.csv.gz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from baselines import open_splits

from simclr.config import Config
from simclr.data.items import TensorItems
from simclr.evaluate.accuracy import topk_accuracy
from simclr.evaluate.knn import knn_accuracy
from simclr.evaluate.linear import DEFAULT_C_GRID, validation_split
from simclr.modalities import modality_for
from simclr.modalities.text import TextItems


def texts_of(items: TensorItems, cfg: Config, split: str) -> list[str]:
    """The texts of ``items``: kept by the text modality, else read again with the same split."""
    if isinstance(items, TextItems):
        return items.texts
    reread, _ = modality_for(cfg).open(cfg.data.path, split=split)
    assert isinstance(reread, TextItems) and reread.names == items.names
    return reread.texts


def baseline(train: TensorItems, test: TensorItems, cfg: Config) -> dict[str, float]:
    """kNN and logistic-regression top-1 (percent) on TF-IDF fitted on the training texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(
        lowercase=cfg.text.lowercase, min_df=2, sublinear_tf=True, dtype=np.float32
    )
    x_train = vectorizer.fit_transform(texts_of(train, cfg, "train"))
    x_test = vectorizer.transform(texts_of(test, cfg, "test"))
    y_train = train.labels.numpy()

    knn = knn_accuracy(
        torch.from_numpy(x_train.toarray()),
        train.labels,
        torch.from_numpy(x_test.toarray()),
        test.labels,
        k=cfg.eval.k,
        temperature=cfg.eval.temperature,
    )

    fit, val = (i.numpy() for i in validation_split(train.labels, 0.1, seed=0))
    val_top1 = {}
    for c in DEFAULT_C_GRID:
        model = LogisticRegression(C=c, max_iter=1000).fit(x_train[fit], y_train[fit])
        val_top1[c] = model.score(x_train[val], y_train[val])
    best_c = max(DEFAULT_C_GRID, key=lambda c: (val_top1[c], -c))
    final = LogisticRegression(C=best_c, max_iter=1000).fit(x_train, y_train)
    scores = torch.from_numpy(final.predict_proba(x_test))
    linear = topk_accuracy(scores, test.labels, torch.from_numpy(final.classes_))
    return {
        "knn_top1": float(knn["top1"]),
        "linear_top1": float(linear["top1"]),
        "linear_best_c": best_c,
        "tfidf_words": float(len(vectorizer.vocabulary_)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    args = parser.parse_args()
    began = time.time()
    cfg, train, test, _ = open_splits(
        str(args.data), {"data": {"modality": "text"}, "model": {"backbone": "transformer"}}
    )
    result = baseline(train, test, cfg)
    result["seconds"] = round(time.time() - began, 1)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
