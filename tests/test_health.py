"""The warnings of a run that is not learning: plateau, collapse, starved loader."""

import logging
import math

import pytest
import torch

from simclr.health import (
    PATIENCE_STEPS,
    STARVED_WINDOWS,
    TrainingHealth,
    chance_loss,
    projection_spread,
)

WARMUP = 50
LATE = WARMUP + PATIENCE_STEPS


def record(step, loss=3.0, proj_std=0.08, data_wait=0.01):
    return {"step": step, "loss": loss, "proj_std": proj_std, "data_wait": data_wait}


def test_chance_loss_is_nt_xent_of_identical_projections():
    from simclr.losses import NTXentLoss

    z = torch.ones(6, 4)  # every view equally similar to all 2N - 1 others
    assert NTXentLoss(0.1)(z[:3], z[3:]).item() == pytest.approx(chance_loss(3))
    assert chance_loss(256) == pytest.approx(math.log(511))


def test_projection_spread_is_zero_for_collapse_and_near_the_even_spread_for_random():
    assert projection_spread(torch.ones(64, 16) * 3).item() == pytest.approx(0.0, abs=1e-6)
    spread = projection_spread(torch.randn(20000, 16, generator=torch.Generator().manual_seed(0)))
    assert spread.item() == pytest.approx(1 / math.sqrt(16), rel=0.02)


def test_a_loss_at_chance_after_warmup_warns_once(caplog):
    health = TrainingHealth(global_batch=256, projection_dim=128)
    chance = chance_loss(256)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        assert health.check(record(WARMUP, loss=chance), WARMUP) == []  # still warming up
        assert health.check(record(LATE - 1, loss=chance), WARMUP) == []
        assert health.check(record(LATE, loss=0.9 * chance), WARMUP) == []  # learning
        found = health.check(record(LATE + 10, loss=chance - 0.01), WARMUP)
        assert len(found) == 1 and "ln(2N-1)" in found[0] and "--lr" in found[0]
        assert health.check(record(LATE + 20, loss=chance), WARMUP) == []  # once per run
    assert [r.getMessage() for r in caplog.records] == found
    assert "\n" not in found[0]


def test_collapsed_projections_warn():
    health = TrainingHealth(global_batch=256, projection_dim=128)
    even = 1 / math.sqrt(128)
    assert health.check(record(LATE, proj_std=0.5 * even), WARMUP) == []
    found = health.check(record(LATE + 10, proj_std=0.01 * even), WARMUP)
    assert len(found) == 1 and "collaps" in found[0] and "proj_std" in found[0]


def test_a_starved_loader_warns_after_several_windows_in_a_row():
    health = TrainingHealth(global_batch=256, projection_dim=128)
    assert health.check(record(10, data_wait=0.9), 0) == []  # the first window: loader starting
    for step in range(20, 20 + 10 * (STARVED_WINDOWS - 1), 10):
        assert health.check(record(step, data_wait=0.6), 0) == []
    assert health.check(record(90, data_wait=0.05), 0) == []  # a fast window resets the count
    found = []
    for step in range(100, 100 + 10 * STARVED_WINDOWS, 10):
        found += health.check(record(step, data_wait=0.6), 0)
    assert len(found) == 1 and "--workers" in found[0]


def test_a_healthy_run_gives_no_warning():
    health = TrainingHealth(global_batch=256, projection_dim=128)
    for step in range(10, 2000, 10):
        assert health.check(record(step, loss=4.0, proj_std=0.07, data_wait=0.02), 195) == []


def test_the_training_loop_warns_about_a_starved_loader(
    image_folder, tmp_path, monkeypatch, caplog
):
    import time

    from simclr.config import build_config
    from simclr.modalities.image import ImageModality
    from simclr.train import pretrain
    from tests.test_train import TINY

    batches = ImageModality.train_batches

    def slow_batches(self, *args, **kwargs):
        for batch in batches(self, *args, **kwargs):
            time.sleep(0.4)  # a loader far slower than a step of the tiny network
            yield batch

    monkeypatch.setattr(ImageModality, "train_batches", slow_batches)
    cfg = build_config(TINY, {"data": {"path": str(image_folder)}, "train": {"max_steps": 6}})
    with caplog.at_level(logging.WARNING, logger="simclr"):
        pretrain(cfg, tmp_path / "run")
    starved = [r.getMessage() for r in caplog.records if "waits for data" in r.getMessage()]
    assert len(starved) == 1 and "--workers" in starved[0]
