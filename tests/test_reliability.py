"""Run safety (issue 17): divergence, signals, locks, resumes, full disks, hostile files.

Each test names the defect it covers; the README's "Errors" section states the guarantees.
"""

import contextlib
import errno
import json
import logging
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from simclr import train as train_module
from simclr.checkpoint import (
    LATEST,
    WriteFailed,
    load_checkpoint,
    save_checkpoint,
    write_text_atomic,
)
from simclr.cli import main
from simclr.config import build_config
from simclr.errors import UserError
from simclr.evaluate import features as features_module
from simclr.evaluate.features import dataset_features, load_encoder
from simclr.metrics import MetricsLog, read_metrics
from simclr.run_folder import RunLock
from simclr.train import pretrain
from tests.conftest import write_image_folder
from tests.test_cli import TINY_FLAGS
from tests.test_train import TINY, crash_after_first_checkpoint, tiny_config


def _pretrain_argv(data, run, *extra):
    return ["pretrain", "--data", str(data), "--out", str(run), *TINY_FLAGS, *extra]


def _one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("simclr: error:")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert "Traceback" not in "\n".join(err)
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _all_finite(state):
    tensors = list(state["model"].values())
    for slot in state["optimizer"]["state"].values():
        tensors += [v for v in slot.values() if isinstance(v, torch.Tensor)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _poisoned_training_step(monkeypatch, at_call, *, weights=False, loss=False):
    """Wrap ``training_step``: at call ``at_call`` the weights and/or the loss become NaN."""
    real = train_module.training_step
    calls = [0]

    def step(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        calls[0] += 1
        if calls[0] == at_call:
            if weights:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))
            if loss:
                return torch.tensor(float("nan")), result[1]
        return result

    monkeypatch.setattr(train_module, "training_step", step)


# --- 1. a non-finite loss or weights never reach a checkpoint ------------------------------


def test_a_nan_loss_between_log_steps_is_caught_before_the_next_checkpoint(
    image_folder, tmp_path, monkeypatch
):
    # the loss turns NaN at step 5, no log step until 100: the checkpoint at step 6 refuses
    _poisoned_training_step(monkeypatch, 5, loss=True)
    run = tmp_path / "run"
    cfg = tiny_config(image_folder, max_steps=12, checkpoint_every=3, log_every=100)
    with pytest.raises(UserError) as caught:
        pretrain(cfg, run)
    message = str(caught.value)
    assert "non-finite at step 5" in message
    assert f"{run / 'checkpoints' / LATEST} (step 3)" in message and "--resume" in message
    assert load_checkpoint(run)["step"] == 3


def test_nan_weights_are_never_saved_and_the_error_names_the_last_good_checkpoint(
    image_folder, tmp_path, monkeypatch
):
    _poisoned_training_step(monkeypatch, 5, weights=True)
    run = tmp_path / "run"
    cfg = tiny_config(image_folder, max_steps=12, checkpoint_every=1, log_every=100)
    with pytest.raises(UserError, match=r"step 4\), intact") as caught:
        pretrain(cfg, run)
    assert "NaN or infinity after step 5" in str(caught.value)
    state = load_checkpoint(run)
    assert state["step"] == 4 and _all_finite(state)


def test_a_real_divergence_leaves_only_finite_checkpoints(image_folder, tmp_path):
    # the reproduction, small: lr 1e6 and a checkpoint at every step
    run = tmp_path / "run"
    cfg = build_config(
        TINY,
        {
            "data": {"path": str(image_folder)},
            "optim": {"lr": 1e6},
            "train": {"max_steps": 12, "checkpoint_every": 1, "log_every": 100},
        },
    )
    with pytest.raises(UserError, match="non-finite|NaN or infinity"):
        pretrain(cfg, run)
    if (run / "checkpoints" / LATEST).exists():
        assert _all_finite(load_checkpoint(run))


def test_the_loss_is_read_from_the_device_only_at_log_and_checkpoint_steps(
    image_folder, tmp_path, monkeypatch
):
    reads = []
    real = train_module._check_loss

    def spy(run, **kwargs):
        reads.append(run.step)
        real(run, **kwargs)

    monkeypatch.setattr(train_module, "_check_loss", spy)
    pretrain(
        tiny_config(image_folder, max_steps=10, log_every=5, checkpoint_every=5), tmp_path / "r"
    )
    assert set(reads) == {5, 10} and len(reads) == 4  # no per-step host sync


def test_a_stop_request_does_not_save_nan_weights(image_folder, tmp_path, monkeypatch):
    real = train_module.training_step
    calls = [0]

    def step(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 3:  # weights diverge, then Ctrl-C arrives during the step
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(train_module, "training_step", step)
    run = tmp_path / "run"
    cfg = tiny_config(image_folder, max_steps=12, checkpoint_every=2, log_every=100)
    with pytest.raises(BaseException) as caught:  # not KeyboardInterrupt after NaN weights
        pretrain(cfg, run)
    assert caught.type is UserError, caught.value
    assert re.search(r"after step 3 .*\(step 2\), intact", str(caught.value))
    assert load_checkpoint(run)["step"] == 2 and _all_finite(load_checkpoint(run))


def test_evaluation_warns_in_one_line_about_nonfinite_weights(image_folder, tmp_path, caplog):
    pretrain(tiny_config(image_folder, max_steps=1), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    state["model"]["backbone.conv1.weight"][0] = float("nan")
    save_checkpoint(state, tmp_path / "nan.pt")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        load_encoder(tmp_path / "nan.pt")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "NaN or infinity" in warnings[0] and "backbone.conv1.weight" in warnings[0]


# --- 2. SIGTERM to the whole process group, loader workers included ------------------------


@pytest.mark.parametrize(
    "workers, target", [(0, "group"), (1, "group"), (2, "group"), (2, "process")]
)
def test_sigterm_to_the_process_group_saves_and_exits_130(tmp_path, workers, target):
    # 96 px PNG files read from disk: the loader workers decode and crop them
    data = write_image_folder(tmp_path / "images", classes=3, per_class=16, size=96)
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "simclr",
        *_pretrain_argv(data, run, "--max-steps", "100000", "--checkpoint-every", "100000"),
        "--workers",
        str(workers),
        "--set",
        "data.in_memory=never",
        "--set",
        "train.log_every=1",
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.1)
    if target == "group":
        os.killpg(process.pid, signal.SIGTERM)  # what a scheduler does
    else:
        os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "killed by signal" not in err, err
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert load_checkpoint(run)["step"] == logged[-1] >= 3


def test_loader_workers_ignore_stop_signals():
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, time\n"
            "from simclr.runtime import ignore_stop_signals\n"
            "ignore_stop_signals(0)\n"
            "os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGINT)\n"
            "print('alive')",
        ],
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0 and child.stdout.strip() == "alive", child.stderr


def test_every_dataloader_ignores_stop_signals_in_its_workers():
    import ast

    package = Path(train_module.__file__).parent
    missing = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "DataLoader"
                and "worker_init_fn" not in {k.arg for k in node.keywords}
            ):
                missing.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not missing, missing


# --- 3. one writer per run folder; a folder without a checkpoint is not reused silently --------


def test_a_second_writer_is_refused_naming_the_holder(capsys, image_folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = RunLock(run)
    holder.acquire()
    try:
        _one_line_error(
            capsys,
            _pretrain_argv(image_folder, run, "--max-steps", "1"),
            "in use by another simclr run",
            f"PID {os.getpid()} on {socket.gethostname()}",
        )
    finally:
        holder.release()
    assert main(_pretrain_argv(image_folder, run, "--max-steps", "1")) == 0
    after = RunLock(run)
    after.acquire()  # released when the run ended
    after.release()


def test_a_run_killed_before_its_first_checkpoint_is_not_reused_silently(
    capsys, image_folder, tmp_path, caplog
):
    run = tmp_path / "run"
    run.mkdir()
    old = [{"step": s, "loss": 9.0} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    argv = _pretrain_argv(image_folder, run, "--max-steps", "2", "--set", "train.log_every=1")
    _one_line_error(capsys, argv, "stopped before its first checkpoint", "--resume")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        assert main([*argv, "--resume"]) == 0
    assert any("starts afresh" in r.getMessage() for r in caplog.records)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] != 9.0 for r in records)


# --- 4. a resume is checked before anything is rewritten -----------------------------------


def test_a_refused_resume_leaves_config_yaml_untouched(capsys, image_folder, tmp_path):
    run = tmp_path / "run"
    assert main(_pretrain_argv(image_folder, run, "--max-steps", "2")) == 0
    saved = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    _one_line_error(
        capsys,
        ["pretrain", "--out", str(run), "--resume", "--backbone", "resnet34"],
        "model.backbone 'resnet18' -> 'resnet34'",
    )
    assert (run / "config.yaml").read_bytes() == saved


def test_weights_refused_on_resume_leave_config_yaml_untouched(image_folder, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(image_folder, max_steps=2)
    pretrain(cfg, run)
    saved = (run / "config.yaml").read_bytes()
    state = load_checkpoint(run)
    del state["model"]["head.layers.0.weight"]
    with pytest.raises(UserError, match=r"weights do not fit the model: 1 missing key \(head"):
        pretrain(tiny_config(image_folder, max_steps=4), run, resume=True, state=state)
    assert (run / "config.yaml").read_bytes() == saved


def test_resume_refuses_settings_that_change_the_run(capsys, image_folder, tmp_path):
    run = tmp_path / "run"
    assert main(_pretrain_argv(image_folder, run, "--max-steps", "2")) == 0
    capsys.readouterr()
    line = _one_line_error(
        capsys,
        ["pretrain", "--out", str(run), "--resume", "--batch-size", "12", "--seed", "3"],
        "train.batch_size 8 -> 12",
        "train.seed 0 -> 3",
    )
    assert "--resume" in line


def test_resume_accepts_budget_changes_with_a_warning(capsys, image_folder, tmp_path, caplog):
    run = tmp_path / "run"
    assert main(_pretrain_argv(image_folder, run, "--max-steps", "2")) == 0
    with caplog.at_level(logging.WARNING, logger="simclr"):
        assert main(["pretrain", "--out", str(run), "--resume", "--max-steps", "3"]) == 0
    assert any("train.max_steps 2 -> 3" in r.getMessage() for r in caplog.records)
    assert load_checkpoint(run)["step"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 3


# --- 5. full disks, killed saves and metrics after a resume ---------------------------------


def test_enospc_during_a_checkpoint_save_is_one_line_and_keeps_the_last_one(
    capsys, image_folder, tmp_path, monkeypatch
):
    real_save = torch.save
    saves = [0]

    def save(obj, handle, *args, **kwargs):
        saves[0] += 1
        if saves[0] > 1:
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / LATEST
    _one_line_error(
        capsys,
        _pretrain_argv(image_folder, run, "--max-steps", "6", "--checkpoint-every", "2"),
        f"cannot write {checkpoint}: No space left on device",
        "(step 2), intact",
    )
    monkeypatch.undo()
    assert load_checkpoint(run)["step"] == 2
    assert [p.name for p in checkpoint.parent.iterdir()] == [LATEST]  # no temporary left


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs (root on Linux), filled on demand with :func:`_fill`."""
    if platform.system() != "Linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def _fill(disk):
    """Fill ``disk`` to the last byte."""
    with open(disk / "filler", "ab", buffering=0) as handle:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * size)


def test_a_really_full_disk(image_folder, small_disk, monkeypatch):
    real_save = train_module.save_checkpoint

    def save_then_fill(state, path):
        real_save(state, path)
        _fill(small_disk)

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_fill)
    run = small_disk / "run"
    cfg = tiny_config(image_folder, max_steps=8, checkpoint_every=2, log_every=1)
    with pytest.raises(UserError, match="No space left on device") as caught:
        pretrain(cfg, run)
    assert str(small_disk) in str(caught.value) and "\n" not in str(caught.value)
    assert load_checkpoint(run)["step"] == 2
    assert [p.name for p in (run / "checkpoints").iterdir()] == [LATEST]


def test_a_full_disk_under_tensorboard_is_one_line(tmp_path, small_disk, capfd):
    (small_disk / "events").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").symlink_to(small_disk / "events")
    log = MetricsLog(tmp_path / "run")
    _fill(small_disk)
    with pytest.raises(WriteFailed, match="tensorboard: No space left on device"):
        for step in range(100_000):  # the events are written by a thread, now and then
            log.write({"step": step, "loss": 1.0})
            if step % 100 == 0:
                time.sleep(0.05)
    log.close()
    assert "Traceback" not in capfd.readouterr().err  # not the thread's traceback


def test_every_run_file_write_fails_in_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    write_text_atomic(path, "old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteFailed, match=f"cannot write {path}: No space left on device"):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.undo()

    log = MetricsLog(tmp_path, loggers=())

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    log._handle = FullDisk()
    with pytest.raises(WriteFailed, match="metrics.jsonl: No space left on device"):
        log.write({"step": 1, "loss": 1.0})
    log.close()  # a second failure while closing is not raised over the first


def test_a_run_that_cannot_write_its_config_stops_in_one_line(
    capsys, image_folder, tmp_path, monkeypatch
):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    run = tmp_path / "run"
    _one_line_error(
        capsys,
        _pretrain_argv(image_folder, run, "--max-steps", "1"),
        f"cannot write {run / 'config.yaml'}: No space left on device",
    )
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_a_killed_save_leaves_no_temporary_after_the_next_start(image_folder, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(image_folder, max_steps=2)
    pretrain(cfg, run)
    stale = [run / "checkpoints" / ".latest.pt.tmp99999", run / ".config.yaml.tmp99998"]
    for path in stale:
        path.write_bytes(b"half a file")
    pretrain(tiny_config(image_folder, max_steps=3), run, resume=True)
    assert not any(path.exists() for path in stale)


def test_no_step_is_logged_twice_after_a_resume(image_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_config(image_folder, max_steps=8, checkpoint_every=4)
    crash_after_first_checkpoint(cfg, run, monkeypatch)
    with open(run / "metrics.jsonl", "a") as handle:  # the killed run went on to step 6
        handle.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    pretrain(cfg, run, resume=True)
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 9))


# --- 6. one line instead of a traceback --------------------------------------------------


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--max-time", "inf"], "train.max_time must be a finite"),
        (["--max-time", "nan"], "train.max_time must be a finite"),
        (["--seed", str(2**64)], "train.seed must be in [0, 2**63)"),
        (["--seed", "-1"], "train.seed must be in [0, 2**63)"),
    ],
)
def test_out_of_range_settings_are_one_line(capsys, image_folder, tmp_path, extra, words):
    _one_line_error(capsys, _pretrain_argv(image_folder, tmp_path / "run", *extra), words)


def test_bad_flags_of_the_checkpoint_commands_are_one_line(capsys, tmp_path):
    _one_line_error(
        capsys,
        ["knn", str(tmp_path), "--workers", "-1", "--train-data", "x", "--test-data", "y"],
        "--workers: must be at least 0",
    )
    _one_line_error(
        capsys,
        ["finetune", str(tmp_path), "--seed", str(2**70), "--label-fraction", "0.1"]
        + ["--train-data", "x", "--test-data", "y"],
        "--seed: must be in [0, 2**63)",
    )


@pytest.mark.parametrize(
    "change, words",
    [
        ({"step": None}, "no 'step' in it"),
        ({"step": "abc"}, "'step' is 'abc'"),
        ({"model": "str"}, "'model' is a str"),
        ({"config": [1]}, "'config' is a list"),
    ],
)
def test_checkpoints_of_the_wrong_layout_are_one_line(capsys, tmp_path, change, words):
    state = {"model": {"w": torch.zeros(2)}, "config": {}, "step": 3, "schema": 1}
    state.update(change)
    if change.get("step", 0) is None:
        del state["step"]
    torch.save(state, tmp_path / "odd.pt")
    _one_line_error(
        capsys,
        ["knn", str(tmp_path / "odd.pt"), "--train-data", "x", "--test-data", "y"],
        "not a simclr checkpoint:",
        words,
    )


def test_a_truncated_feature_cache_is_recomputed(image_folder, tmp_path, caplog):
    run = tmp_path / "run"
    pretrain(tiny_config(image_folder, max_steps=1), run)
    encoder = load_encoder(run)
    first, _, _ = dataset_features(encoder, str(image_folder), split="train", num_workers=0)
    (cache,) = (run / "features").iterdir()
    cache.write_bytes(cache.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="simclr"):
        again, _, _ = dataset_features(encoder, str(image_folder), split="train", num_workers=0)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(again.features, first.features)
    torch.load(cache, weights_only=True)  # rewritten whole


# --- 7. a checkpoint on read-only storage can be evaluated -----------------------------------


def test_read_only_run_folder_caches_features_in_the_user_cache(
    image_folder, tmp_path, monkeypatch, caplog
):
    run = tmp_path / "run"
    pretrain(tiny_config(image_folder, max_steps=1), run)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_save = features_module.save_checkpoint

    def read_only_run(state, path):
        if run in path.parents:
            raise WriteFailed(path, OSError(errno.EROFS, os.strerror(errno.EROFS), str(path)))
        return real_save(state, path)

    monkeypatch.setattr(features_module, "save_checkpoint", read_only_run)
    encoder = load_encoder(run)
    with caplog.at_level(logging.INFO, logger="simclr"):
        first, _, _ = dataset_features(encoder, str(image_folder), split="train", num_workers=0)
    notes = [r.getMessage() for r in caplog.records if "cached in" in r.getMessage()]
    assert len(notes) == 1 and "Read-only file system" in notes[0], notes
    assert len(list((tmp_path / "xdg" / "simclr" / "features").glob("*.pt"))) == 1
    assert not (run / "features").exists()

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cached features should have been read")

    monkeypatch.setattr(features_module, "extract_features", no_extraction)
    again, _, _ = dataset_features(encoder, str(image_folder), split="train", num_workers=0)
    torch.testing.assert_close(again.features, first.features)


# --- 8. hostile and mismatched files ------------------------------------------------------


def test_pickled_code_is_refused_plainly_without_running_it(capsys, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload(), "config": {}, "step": 1}, tmp_path / "evil.pt")
    line = _one_line_error(
        capsys,
        ["knn", str(tmp_path / "evil.pt"), "--train-data", "x", "--test-data", "y"],
        "pickled code-bearing objects (such as",
        "system",
        "nothing in it was run",
    )
    assert "PyTorch 2.6" not in line and not marker.exists()


def test_mismatched_weights_get_one_summary_for_knn_and_resume(capsys, image_folder, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_config(image_folder, max_steps=1), run)
    state = load_checkpoint(run)
    weights = state["model"]
    removed = [key for key in weights if key.startswith("backbone.layer4")]
    for key in removed:
        del weights[key]
    weights["extra.weight"] = torch.zeros(1)
    weights["backbone.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    save_checkpoint(state, tmp_path / "mismatch.pt")
    line = _one_line_error(
        capsys,
        ["knn", str(tmp_path / "mismatch.pt"), "--train-data", "x", "--test-data", "y"],
        f"weights do not fit the model: {len(removed)} missing keys (backbone.layer4",
        "1 unexpected (extra.weight)",
        "1 of different shape (backbone.conv1.weight: saved [1, 2, 3, 3]",
    )
    assert line.count("backbone.layer4") <= 3  # a summary, not every key
    with pytest.raises(UserError) as caught:
        pretrain(tiny_config(image_folder, max_steps=2), run, resume=True, state=state)
    assert line.split("weights do not fit")[1] == str(caught.value).split("weights do not fit")[1]
