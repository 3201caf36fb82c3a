"""Quality while it trains: a weighted kNN every N steps or seconds on a fixed, recorded subset.

``simclr pretrain --eval-data TEST --eval-every 500`` (or ``5m``) scores the backbone during
pretraining, as the end-of-run kNN does, but on a fixed random subset of the reference data
(``eval.every_reference`` items, by default 5,000) and of the test data (``eval.every_test``,
2,000) so that each evaluation costs seconds. The subset is a function of the data sizes and
the run's seed, written to ``eval_subset.json`` in the run folder, so every evaluation of a run
(and of its resumed continuation) scores the same items. The pretraining loop leaves the
evaluation time out of its time budget and logs what share of training time it took.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simclr import distributed
from simclr.checkpoint import write_text_atomic
from simclr.clock import Interval, parse_interval
from simclr.config import EvalConfig
from simclr.data.items import Items
from simclr.evaluate.knn import evaluate_knn
from simclr.modalities.base import Modality

SUBSET_FILE = "eval_subset.json"


def fixed_subset(size: int, count: int, seed: int) -> torch.Tensor:
    """Ascending positions of ``count`` of ``size`` items drawn with ``seed``; all when fewer.

    Shape:
        int64 ``[min(count, size)]``.
    """
    if count >= size:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[:count].sort().values


@dataclass
class PeriodicKnn:
    """The periodic kNN of one run: when it is due, the subsets it scores, the best so far.

    Build it with :meth:`for_run`. ``state()`` goes into the checkpoint and ``for_run`` takes
    it back, so a resumed run keeps its best score and its evaluation time.
    """

    interval: Interval
    reference: Items
    test: Items
    cfg: EvalConfig
    last: tuple[int, float]
    """``(step, training seconds)`` when :meth:`due` last looked."""
    best_top1: float = -math.inf
    best_step: int | None = None
    seconds: float = 0.0
    """Seconds spent evaluating, over the whole run."""
    evaluations: int = 0

    @classmethod
    def for_run(
        cls,
        cfg: EvalConfig,
        reference: Items,
        test: Items,
        *,
        seed: int,
        step: int,
        elapsed: float,
        saved: dict[str, Any] | None,
        run_dir: Path,
    ) -> PeriodicKnn:
        """The periodic kNN of a run at ``step``, with the subsets recorded in ``run_dir``.

        Args:
            cfg: ``eval``: its ``every``, ``every_reference``, ``every_test``, ``k``...
            reference: The labelled reference data of the end-of-run kNN.
            test: Its labelled test data.
            seed: The run's seed (draws the subsets).
            step: The step training starts at (a resumed run: its checkpoint's).
            elapsed: The training seconds at ``step``.
            saved: :meth:`state` from the checkpoint, or ``None``.
            run_dir: Where ``eval_subset.json`` is written (by rank 0).
        """
        assert cfg.every is not None
        picked = {
            "reference": fixed_subset(len(reference), cfg.every_reference, seed),
            "test": fixed_subset(len(test), cfg.every_test, seed + 1),
        }
        if distributed.is_main():
            record = {
                "seed": seed,
                **{
                    role: {"items": len(data), "positions": picked[role].tolist()}
                    for role, data in (("reference", reference), ("test", test))
                },
            }
            write_text_atomic(run_dir / SUBSET_FILE, json.dumps(record) + "\n")
        monitor = cls(
            interval=parse_interval(cfg.every, "eval.every"),
            reference=reference.subset(picked["reference"]),
            test=test.subset(picked["test"]),
            cfg=cfg,
            last=(step, elapsed),
        )
        if saved:
            monitor.best_top1 = float(saved["best_top1"])
            monitor.best_step = saved["best_step"]
            monitor.seconds = float(saved["seconds"])
            monitor.evaluations = int(saved["evaluations"])
        return monitor

    def due(self, step: int, elapsed: float) -> bool:
        """True when an interval has passed since the last call.

        Every rank agrees: the step and the training time are agreed values.
        """
        due = self.interval.due(step, elapsed, self.last)
        self.last = (step, elapsed)
        return due

    def evaluate(
        self,
        encoder: nn.Module,
        modality: Modality,
        device: torch.device,
        step: int,
        *,
        baseline: bool = False,
    ) -> dict[str, Any]:
        """Score ``encoder`` on the subsets (every process takes a share); the metrics record.

        The record holds ``knn_top1``, ``knn_top5``, ``knn_best`` (the best top-1 so far),
        ``eval_s`` (this evaluation's seconds) and ``eval_share`` (evaluation time over the
        whole run, as a fraction of training time); ``is_best`` tells whether it is a new best.
        A ``baseline`` (the untrained network at step 0) is scored and timed but never the best,
        and its record has no ``knn_best``.
        """
        started = time.perf_counter()
        result = evaluate_knn(
            encoder,
            self.reference,
            self.test,
            modality=modality,
            cfg=self.cfg,
            device=device,
            across_ranks=True,
        )
        seconds = distributed.agree_max([time.perf_counter() - started])[0]
        self.seconds += seconds
        self.evaluations += 1
        top1 = float(result["top1"])
        is_best = not baseline and top1 > self.best_top1
        if is_best:
            self.best_top1, self.best_step = top1, step
        record = {
            "step": step,
            "knn_top1": top1,
            "knn_top5": float(result.get("top5", math.nan)),
            "knn_best": self.best_top1,
            "eval_s": round(seconds, 2),
            "is_best": is_best,
        }
        if baseline:
            del record["knn_best"]
        return record

    def share(self, training_seconds: float) -> float:
        """Evaluation time so far as a fraction of ``training_seconds``."""
        return self.seconds / max(training_seconds, 1e-9)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the best score and step, the time and count so far."""
        return {
            "best_top1": self.best_top1,
            "best_step": self.best_step,
            "seconds": self.seconds,
            "evaluations": self.evaluations,
        }
