"""Experiment trackers: TensorBoard, W&B (offline) and MLflow (file store) get the same numbers."""

import json
import logging
import struct
import sys

import pytest

from simclr.cli import main
from simclr.config import build_config
from simclr.errors import UserError
from simclr.metrics import MetricsLog
from simclr.trackers import TRACKERS_FILE, MlflowTracker, final_values
from simclr.train import pretrain
from tests.test_train import TINY

ALL = ["tensorboard", "wandb", "mlflow"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline (no network, no service chatter) and MLflow on a file store, in tmp_path."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    for name in ("WANDB_PROJECT", "WANDB_NAME", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "wandb").mkdir()
    settings = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB__DISABLE_STATS": "true",  # no system-metrics sampling
        "WANDB__DISABLE_META": "true",
        "WANDB_DISABLE_GIT": "true",
        "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 refuses a file store without it
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def wandb_records(path):
    """The records of an offline ``run-<id>.wandb`` file (a LevelDB-style log of protobufs).

    wandb 0.31 has no Python reader of its own any more (its Go core reads them): a 7-byte
    header (``:W&B``, magic, version), then 32 KiB blocks of chunks ``crc32, length, type``
    (1 full, 2 first, 3 middle, 4 last), each block's tail under 7 bytes zero-padded.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # padding up to the end of the block
            pos += block - pos % block
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_logged(wandb_dir, run_id):
    """(history {key: {step: value}}, config {key: value}, summary {key: value}) of every
    offline segment of ``run_id`` (a resumed or reopened run writes a new folder)."""
    history, config, summary = {}, {}, {}
    files = sorted(wandb_dir.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert files, f"no offline run {run_id} in {wandb_dir}"
    for path in files:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {"/".join(i.nested_key) or i.key: i.value_json for i in record.history.item}
                for key, value in items.items():
                    history.setdefault(key, {})[record.history.step.num] = json.loads(value)
            elif kind in ("config", "run"):
                updates = record.config.update if kind == "config" else record.run.config.update
                config.update({i.key: json.loads(i.value_json) for i in updates})
            elif kind == "summary":
                for item in record.summary.update:
                    summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return history, config, summary, files


def tensorboard_logged(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {
        tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]
    }
    text = b"".join(
        t.tensor_proto.string_val[0] for t in events.Tensors("config/text_summary")
    ).decode()
    return scalars, text


def test_every_tracker_gets_the_scalars_config_and_final_knn_and_a_resume_continues(
    offline, image_folder
):
    from mlflow.tracking import MlflowClient

    run = offline / "run"
    first = build_config(
        TINY, {"data": {"path": str(image_folder)}, "train": {"max_steps": 2, "loggers": ALL}}
    )
    assert first.train.loggers == tuple(ALL)
    pretrain(first, run)
    ids = json.loads((run / TRACKERS_FILE).read_text())
    # resumed with the kNN at the end: the same W&B and MLflow runs go on
    resumed = build_config(
        TINY,
        {
            "data": {"path": str(image_folder)},
            "train": {"max_steps": 4, "loggers": ALL},
            "eval": {"data": str(image_folder)},
        },
    )
    pretrain(resumed, run, resume=True)
    assert json.loads((run / TRACKERS_FILE).read_text()) == ids
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records}
    assert sorted(losses) == [1, 2, 3, 4]
    knn = json.loads((run / "knn.json").read_text())
    trained = knn["trained"]["top1"]

    scalars, config_text = tensorboard_logged(run)
    assert scalars["pretrain/loss"] == pytest.approx(losses)
    assert scalars["final/knn/trained/top1"] == {4: pytest.approx(trained)}
    assert "batch_size: 8" in config_text

    client = MlflowClient(offline.joinpath("mlruns").as_uri())
    mlflow_run = client.get_run(ids["mlflow"]["run_id"])
    history = client.get_metric_history(mlflow_run.info.run_id, "pretrain/loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    assert mlflow_run.data.params["train.batch_size"] == "8"
    assert mlflow_run.data.metrics["final/knn/trained/top1"] == pytest.approx(trained)
    assert mlflow_run.data.metrics["final/knn/random_init/top1"] == pytest.approx(
        knn["random_init"]["top1"]
    )
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "run"
    assert len(client.search_runs([mlflow_run.info.experiment_id])) == 1

    history, config, summary, files = wandb_logged(offline / "wandb", ids["wandb"]["id"])
    assert history["pretrain/loss"] == pytest.approx(losses)
    assert config["train"]["batch_size"] == 8
    assert summary["final/knn/trained/top1"] == pytest.approx(trained)
    assert len(files) == 4  # each run and its final results: one W&B run id


def test_final_values_are_the_numbers_of_the_summary():
    summary = {
        "steps": 4,
        "final_loss": float("nan"),
        "checkpoint": "run/checkpoints/latest.pt",
        "knn": {
            "trained": {"top1": 50.0, "top5": 90.0, "protocol": {"k": 200}},
            "checkpoint": {"step": 4, "sha256": "ab"},
        },
    }
    assert final_values(summary) == {
        "final/steps": 4.0,
        "final/knn/trained/top1": 50.0,
        "final/knn/trained/top5": 90.0,
    }


def test_an_unknown_logger_is_one_line_naming_the_valid_ones(capsys):
    with pytest.raises(UserError, match="unknown logger 'comet'.*tensorboard, wandb, mlflow"):
        build_config(TINY, {"train": {"loggers": ["tensorboard", "comet"]}})
    with pytest.raises(UserError, match="more than once"):
        build_config(TINY, {"train": {"loggers": ["wandb", "wandb"]}})
    assert main(["pretrain", "--logger", "wandb,comet", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown logger 'comet'" in err and "tensorboard, wandb, mlflow" in err
    assert err.count("\n") == 1
    assert main(["pretrain", "--logger", "none", "--print-config"]) == 0
    assert "loggers: []" in capsys.readouterr().out


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_missing_tracker_package_stops_before_the_run_folder(
    package, image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, package, None)  # import fails: ModuleNotFoundError
    out = tmp_path / "run"
    argv = ["pretrain", "--data", str(image_folder), "--out", str(out), "--logger", package]
    assert main([*argv, "--max-steps", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{package} is needed to log to" in err and 'pip install "simclr-kit[trackers]"' in err
    assert err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(UserError, match=r"simclr-kit\[trackers\]"):
        MetricsLog(tmp_path, loggers=[package])
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_failing_tracker_warns_once_and_logging_goes_on(offline, monkeypatch, caplog):
    def unreachable(self, step, values):
        raise ConnectionError("server unreachable\ndetails")

    monkeypatch.setattr(MlflowTracker, "_log_metrics", unreachable)
    (offline / "run").mkdir()
    log = MetricsLog(offline / "run", loggers=["mlflow"])
    with caplog.at_level(logging.WARNING, logger="simclr"):
        for step in (1, 2, 3):
            log.write({"step": step, "loss": 1.0})
    log.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "server unreachable" in warnings[0]
    assert "logging step 1 failed" in warnings[0]
    assert len((offline / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_run_stopped_by_ctrl_c_ends_killed_and_a_new_log_continues_it(offline):
    from mlflow.tracking import MlflowClient

    run = offline / "run"
    run.mkdir()
    log = MetricsLog(run, loggers=["mlflow"], config={"train": {"batch_size": 8}})
    with pytest.raises(KeyboardInterrupt):
        try:
            log.write({"step": 1, "loss": 2.0})
            raise KeyboardInterrupt
        finally:
            log.close()
    run_id = json.loads((run / TRACKERS_FILE).read_text())["mlflow"]["run_id"]
    client = MlflowClient(offline.joinpath("mlruns").as_uri())
    assert client.get_run(run_id).info.status == "KILLED"
    log = MetricsLog(run, loggers=["mlflow"], config={"train": {"batch_size": 16}})
    log.write({"step": 2, "loss": 1.0})
    log.close()
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.params["train.batch_size"] == "8"  # MLflow params never change
    history = client.get_metric_history(run_id, "pretrain/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
