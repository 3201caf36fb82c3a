"""The kNN during pretraining (--eval-every), best.pt, snapshots and RUN:best."""

import json

import pytest
import torch

from simclr import cli
from simclr.checkpoint import load_checkpoint, resolve_checkpoint
from simclr.clock import Interval, StepClock, parse_interval
from simclr.config import build_config
from simclr.errors import UserError
from simclr.monitor import SUBSET_FILE, fixed_subset
from simclr.train import pretrain
from simclr.viz import plot_run
from tests.test_train import TINY


def monitored_config(folder, **train):
    return build_config(
        TINY,
        {
            "data": {"path": str(folder)},
            "train": {"max_steps": 6, "checkpoint_every": 2, **train},
            "eval": {"data": str(folder), "every": "2", "every_reference": 12, "every_test": 9},
        },
    )


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_parse_interval_reads_steps_and_durations():
    assert parse_interval("500", "x") == Interval(steps=500)
    assert parse_interval("90s", "x") == Interval(seconds=90.0)
    assert parse_interval("5m", "x") == Interval(seconds=300.0)
    assert parse_interval("1.5h", "x") == Interval(seconds=5400.0)
    for bad in ("0", "-5", "2.5", "soon", "5d", ""):
        with pytest.raises(UserError, match="x must be"):
            parse_interval(bad, "x")


def test_an_interval_is_due_when_a_boundary_is_crossed():
    every_2 = Interval(steps=2)
    assert [every_2.due(s, 0.0, (s - 1, 0.0)) for s in range(1, 7)] == [0, 1, 0, 1, 0, 1]
    every_10s = Interval(seconds=10.0)
    assert not every_10s.due(5, 9.9, (4, 8.0))
    assert every_10s.due(6, 10.2, (5, 9.9))
    assert every_10s.due(6, 31.0, (5, 9.9))  # a long step crosses two boundaries: one evaluation


def test_excluded_time_is_left_out_of_training_time_and_step_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("simclr.clock.now", lambda: now[0])
    clock = StepClock()
    for step in range(1, 8):
        now[0] += 1.0
        clock.step_done(step)
    now[0] += 30.0  # an evaluation
    clock.exclude(30.0)
    assert clock.elapsed() == pytest.approx(7.0)
    assert clock.seconds_per_step(7) == pytest.approx(1.0)


def test_the_subset_is_fixed_by_the_seed_and_all_items_when_fewer():
    assert torch.equal(fixed_subset(100, 10, 3), fixed_subset(100, 10, 3))
    assert not torch.equal(fixed_subset(100, 10, 3), fixed_subset(100, 10, 4))
    assert torch.equal(fixed_subset(5, 10, 3), torch.arange(5))
    picked = fixed_subset(100, 10, 3)
    assert len(set(picked.tolist())) == 10 and bool((picked.diff() > 0).all())


def test_eval_every_needs_eval_data_and_a_valid_interval(image_folder):
    with pytest.raises(UserError, match="needs eval.data"):
        build_config(TINY, {"data": {"path": str(image_folder)}, "eval": {"every": "100"}})
    with pytest.raises(UserError, match="eval.every"):
        build_config(TINY, {"eval": {"data": str(image_folder), "every": "often"}})


def test_pretraining_evaluates_keeps_best_and_snapshots(image_folder, tmp_path):
    run = tmp_path / "run"
    summary = pretrain(monitored_config(image_folder, keep_checkpoints=2), run)
    evaluated = [r for r in records(run) if "knn_top1" in r]
    assert [r["step"] for r in evaluated] == [0, 2, 4, 6]  # step 0: the untrained baseline
    assert "knn_best" not in evaluated[0]  # the baseline is never the best
    during = evaluated[1:]
    for r in evaluated:
        assert 0 <= r["knn_top1"] <= 100 and r["eval_s"] >= 0 and r["eval_share"] >= 0
    for r in during:
        assert r["knn_best"] == max(d["knn_top1"] for d in during if d["step"] <= r["step"])
    training = [r for r in records(run) if "loss" in r]
    assert all(r["proj_std"] > 0 for r in training)
    # the subset is recorded, and the kNN it gives is the one logged
    subset = json.loads((run / SUBSET_FILE).read_text())
    assert subset["reference"]["items"] == 24 and len(subset["reference"]["positions"]) == 12
    assert subset["test"]["items"] == 24 and len(subset["test"]["positions"]) == 9
    # best.pt is the checkpoint of the first evaluation with the best score
    best = max(during, key=lambda r: (r["knn_top1"], -r["step"]))
    assert load_checkpoint(run / "checkpoints" / "best.pt")["step"] == best["step"]
    assert summary["periodic_knn"]["best_step"] == best["step"]
    assert summary["periodic_knn"]["evaluations"] == 4
    # keep_checkpoints=2: the two newest snapshots besides latest.pt
    names = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert names == ["step-00000004.pt", "step-00000006.pt"]
    assert load_checkpoint(run / "checkpoints" / "step-00000004.pt")["step"] == 4
    # RUN:best, RUN:latest and RUN:STEP name them
    assert resolve_checkpoint(run.with_name("run:best")) == run / "checkpoints" / "best.pt"
    assert resolve_checkpoint(run.with_name("run:latest")) == run / "checkpoints" / "latest.pt"
    assert resolve_checkpoint(run.with_name("run:4")).name == "step-00000004.pt"
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint(run.with_name("run:2"))
    with pytest.raises(UserError, match="unknown checkpoint"):
        resolve_checkpoint(run.with_name("run:worst"))
    # an evaluation command on RUN:best
    out = tmp_path / "knn-best.json"
    argv = ["knn", f"{run}:best", "--train-data", str(image_folder), "--test-data"]
    assert cli.main([*argv, str(image_folder), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["checkpoint"]["step"] == best["step"]
    # the curve is drawn
    assert plot_run(run).stat().st_size > 0


def test_run_best_without_periodic_evaluation_says_how_to_get_it(image_folder, tmp_path):
    run = tmp_path / "plain"
    pretrain(
        build_config(TINY, {"data": {"path": str(image_folder)}, "train": {"max_steps": 1}}), run
    )
    with pytest.raises(UserError, match="--eval-every"):
        resolve_checkpoint(run.with_name("plain:best"))


def test_a_resumed_run_keeps_its_best_score(image_folder, tmp_path):
    run = tmp_path / "run"
    pretrain(monitored_config(image_folder, max_steps=4), run)
    first = load_checkpoint(run)["periodic_knn"]
    assert first["evaluations"] == 3  # steps 0, 2 and 4
    summary = pretrain(monitored_config(image_folder, max_steps=6), run, resume=True)
    assert summary["periodic_knn"]["evaluations"] == 4  # no second baseline on resuming
    assert summary["periodic_knn"]["best_top1"] >= first["best_top1"]
    assert [r["step"] for r in records(run) if "knn_top1" in r] == [0, 2, 4, 6]
