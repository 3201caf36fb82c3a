import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from simclr import clock as clock_module
from simclr import train as train_module
from simclr.checkpoint import load_checkpoint
from simclr.clock import Budget
from simclr.config import build_config
from simclr.errors import UserError
from simclr.models.simclr import SimCLR
from simclr.train import pretrain

TINY = {
    "model": {"backbone": "resnet18", "width": 0.0625, "stem": "cifar", "head": "v2"},
    "augment": {"size": 16, "blur_p": 0.5},
    "optim": {"name": "lars", "lr": 0.3, "warmup_epochs": 1},
    "train": {
        "batch_size": 8,
        "epochs": 100,
        "device": "cpu",
        "precision": "fp32",
        "log_every": 1,
        "checkpoint_every": 3,
        "progress": False,
    },
    "data": {"num_workers": 0},
}


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that advances 10 ms on every reading: step times, and so time-budgeted runs,
    become independent of machine load."""
    now = [0.0]

    def clock():
        now[0] += 0.01
        return now[0]

    monkeypatch.setattr(clock_module, "now", clock)


def crash_after_first_checkpoint(cfg, run_dir, monkeypatch):
    """Run ``cfg`` and die (SystemExit) right after its first checkpoint is written."""
    real_save = train_module.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        raise SystemExit("simulated crash right after a checkpoint")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_checkpoint", save_then_die)
        with pytest.raises(SystemExit):
            pretrain(cfg, run_dir)


def tiny_config(folder, **train):
    return build_config(TINY, {"data": {"path": str(folder)}, "train": train})


def test_data_wait_shows_a_loader_that_starves_the_step(image_folder, tmp_path, monkeypatch):
    from simclr.modalities.image import ImageModality

    batches = ImageModality.train_batches

    def slow_batches(self, *args, **kwargs):
        for batch in batches(self, *args, **kwargs):
            time.sleep(0.5)  # a loader far slower than a step of the tiny network
            yield batch

    def waits(run: str) -> list[float]:
        pretrain(tiny_config(image_folder, max_steps=3, log_every=1), tmp_path / run)
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["data_wait"] for line in lines]

    fast = waits("fast")  # batches cut from images in memory
    monkeypatch.setattr(ImageModality, "train_batches", slow_batches)
    slow = waits("slow")
    assert len(fast) == len(slow) == 3
    # Relative, not absolute: on a loaded machine the tiny step itself can take 0.5 s.
    assert all(0 <= wait <= 1 for wait in fast + slow)
    assert min(slow[1:]) > max(fast[1:]) and min(slow[1:]) > 0.25


def test_pretrain_writes_logs_checkpoint_and_knn(image_folder, tmp_path):
    cfg = build_config(
        TINY,
        {
            "data": {"path": str(image_folder)},
            "train": {"max_steps": 4},
            "eval": {"data": str(image_folder)},
        },
    )
    run = tmp_path / "run"
    summary = pretrain(cfg, run)
    assert summary["steps"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("step", "epoch", "loss", "lr", "images_per_s", "data_wait", "elapsed_s"):
        assert key in records[0]
    assert all(0 <= r["data_wait"] <= 1 for r in records)
    assert all(r["loss"] > 0 for r in records)
    state = load_checkpoint(run)
    assert state["step"] == 4 and state["config"]["train"]["max_steps"] == 4
    assert (run / "config.yaml").exists() and list((run / "tensorboard").iterdir())
    knn = json.loads((run / "knn.json").read_text())
    assert (
        set(knn) == {"trained", "random_init", "checkpoint"} and 0 <= knn["trained"]["top1"] <= 100
    )
    assert knn["checkpoint"]["step"] == 4 and len(knn["checkpoint"]["sha256"]) == 64


def test_loss_goes_down_and_weights_change(tmp_path):
    # Mild views (large crops, no colour changes) make the task learnable in 30 steps, so a
    # loop that does not optimise the loss shows; with the full recipe 30 steps are noise.
    mild = {"crop_scale": [0.8, 1.0], "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}
    cfg = build_config(
        TINY,
        {
            "data": {"path": "digits"},
            "model": {"width": 0.125},
            "augment": mild,
            "optim": {"name": "adam", "lr": 0.003, "warmup_epochs": 0},
            "train": {"batch_size": 64, "max_steps": 30, "temperature": 0.5},
        },
    )
    torch.manual_seed(0)
    initial = SimCLR.from_config(cfg.model).state_dict()
    summary = pretrain(cfg, tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in records[:5]) / 5, sum(r["loss"] for r in records[-5:]) / 5
    assert last < first - 0.1
    assert summary["steps"] == 30
    trained = load_checkpoint(tmp_path / "run")["model"]
    assert not torch.equal(trained["backbone.conv1.weight"], initial["backbone.conv1.weight"])


def test_resume_continues_exactly(image_folder, tmp_path, monkeypatch):
    # 24 images in batches of 8: 3 steps an epoch, so the step-4 checkpoint is mid-epoch
    cfg = tiny_config(image_folder, max_steps=8, checkpoint_every=4)
    pretrain(cfg, tmp_path / "straight")
    expected = load_checkpoint(tmp_path / "straight")["model"]

    crash_after_first_checkpoint(cfg, tmp_path / "crashed", monkeypatch)
    assert load_checkpoint(tmp_path / "crashed")["step"] == 4
    pretrain(cfg, tmp_path / "crashed", resume=True)
    resumed = load_checkpoint(tmp_path / "crashed")
    assert resumed["step"] == 8
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0, msg=name)


def _cli_command(image_folder, run):
    """``simclr pretrain`` of a tiny network as a subprocess, checkpointing every 2 steps."""
    return [
        sys.executable,
        "-m",
        "simclr",
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(run),
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--checkpoint-every",
        "2",
        "--set",
        "model.width=0.0625",
        "--set",
        "model.backbone=resnet18",
        "--set",
        "model.stem=cifar",
        "--set",
        "augment.size=16",
        "--set",
        "train.log_every=1",
        "--set",
        "train.progress=false",
        "--set",
        "data.num_workers=0",
    ]


def test_sigkill_then_resume_from_last_checkpoint(image_folder, tmp_path):
    run = tmp_path / "run"
    command = _cli_command(image_folder, run)
    process = subprocess.Popen([*command, "--max-steps", "100000"], stderr=subprocess.DEVNULL)
    checkpoint = run / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not checkpoint.exists() or load_checkpoint(checkpoint)["step"] < 4
    ):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved_step = load_checkpoint(checkpoint)["step"]
    assert saved_step >= 4 and saved_step % 2 == 0
    logged_before = len((run / "metrics.jsonl").read_text().splitlines())
    assert logged_before >= saved_step  # the killed run got further than its last checkpoint
    result = subprocess.run(
        [*command, "--max-steps", str(saved_step + 2), "--resume"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == saved_step + 2
    # the steps logged after the checkpoint were cut and logged again once: no step twice
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, saved_step + 3))
    assert load_checkpoint(checkpoint)["step"] == saved_step + 2


def test_sigterm_stops_after_the_step_with_a_checkpoint(image_folder, tmp_path):
    run = tmp_path / "run"
    command = [*_cli_command(image_folder, run), "--max-steps", "100000"]
    process = subprocess.Popen(
        [*command, "--checkpoint-every", "100000"], stderr=subprocess.PIPE, text=True
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "stopping after this step" in err
    logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    # the checkpoint holds the last finished step (no periodic checkpoint was due)
    assert load_checkpoint(run)["step"] == logged[-1] >= 3


def test_time_budget_stops_and_anneals(image_folder, tmp_path, fake_clock):
    cfg = tiny_config(image_folder, max_time=3.0, checkpoint_every=1000, epochs=100_000)
    summary = pretrain(cfg, tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = summary["steps"]
    assert 3.0 <= summary["train_seconds"] < 3.2 and 20 < steps < 300
    # the schedule was planned from the measured step time, not from the epoch budget (300,000
    # steps): it ends where the time does, at the bottom of the cosine
    assert abs(records[-1]["planned_steps"] - steps) <= 2
    assert records[-1]["lr"] < 0.05 * max(r["lr"] for r in records)
    assert load_checkpoint(tmp_path / "run")["step"] == steps


def test_resumed_time_budget_keeps_its_schedule(image_folder, tmp_path, fake_clock, monkeypatch):
    cfg = tiny_config(image_folder, max_time=3.0, checkpoint_every=20, epochs=100_000)
    crash_after_first_checkpoint(cfg, tmp_path / "run", monkeypatch)
    pretrain(cfg, tmp_path / "run", resume=True)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in records}
    peak = max(lr.values())
    # without the saved step time, the first steps after resuming planned for the epoch budget
    # and the learning rate jumped back towards the peak
    assert abs(lr[21] - lr[20]) < 0.05 * peak and abs(lr[22] - lr[21]) < 0.05 * peak


def test_an_existing_run_is_not_overwritten(image_folder, tmp_path):
    cfg = tiny_config(image_folder, max_steps=2)
    pretrain(cfg, tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run"):
        pretrain(cfg, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run")["step"] == 2


def test_budget_arithmetic():
    budget = Budget(steps_per_epoch=10, max_epochs=5, max_steps=None, max_time=100.0)
    assert budget.step_limit == 50
    assert budget.planned_steps(0, 0.0, None) == 50
    assert budget.planned_steps(10, 20.0, 2.0) == 50  # time allows 40 more, epochs allow 40
    assert budget.planned_steps(10, 60.0, 2.0) == 30
    assert budget.done(30, 100.0) and not budget.done(30, 99.0)
    assert Budget(10, 5, 7, None).step_limit == 7


def test_progress_is_the_share_of_whichever_budget_ends_training_first():
    by_time = Budget(steps_per_epoch=10, max_epochs=5, max_steps=None, max_time=100.0)
    assert by_time.progress(5, 50.0) == 0.5  # 10 % of the steps, half of the time
    assert by_time.progress(40, 10.0) == 0.8  # the steps run out first
    assert by_time.progress(50, 120.0) == 1.0
    assert Budget(10, 5, None, None).progress(25, 1e6) == 0.5


def test_progressive_resolution_grows_the_views_over_the_run(image_folder, tmp_path):
    cfg = build_config(
        TINY,
        {
            "data": {"path": str(image_folder)},
            "augment": {"size": 24, "progressive_from": 0.3, "full_size_at": 0.5},
            "train": {"max_steps": 8},
        },
    )
    pretrain(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    sizes = [json.loads(line)["view_size"] for line in lines if "view_size" in json.loads(line)]
    # the size of step s (logged after it) is set from progress (s - 1) / 8
    assert sizes == [8, 8, 16, 16, 24, 24, 24, 24]


def test_batch_larger_than_dataset(image_folder, tmp_path):
    cfg = tiny_config(image_folder, batch_size=64)
    with pytest.raises(UserError, match="larger than the dataset"):
        pretrain(cfg, tmp_path / "run")


def test_unlabelled_eval_data_fails_before_training(tmp_path, image_folder):
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(flat / f"{i}.png")
    cfg = build_config(TINY, {"data": {"path": str(image_folder)}, "eval": {"data": str(flat)}})
    with pytest.raises(UserError, match="no labels"):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_keys(image_folder, tmp_path):
    cfg = tiny_config(image_folder, max_steps=3, compile=True)
    pretrain(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 3
    assert not any(key.startswith("_orig_mod") for key in state["model"])
