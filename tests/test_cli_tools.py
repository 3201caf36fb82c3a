"""The checkpoint commands end to end on a tiny run: JSON out, files written, one-line errors."""

import json

import numpy as np
import pytest

from simclr.cli import main

from .conftest import pretrained_tiny_run, write_image_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return pretrained_tiny_run(tmp_path_factory.mktemp("tools"))


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _error_line(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("simclr: error:") and words in err[0], err


def test_linear_cluster_and_knn_carry_protocol_and_checkpoint(run, capsys):
    run_dir, folder = run
    data = ["--train-data", str(folder), "--test-data", str(folder)]
    assert main(["linear", str(run_dir), *data]) == 0
    linear = _last_json(capsys)
    assert 0 <= linear["top1"] <= 100 and linear["protocol"]["features"]["checkpoint_sha256"]
    assert linear["checkpoint"]["weights"] == "trained"
    assert main(["cluster", str(run_dir), "--data", str(folder)]) == 0
    clustered = _last_json(capsys)
    assert {"nmi", "ari", "accuracy"} <= set(clustered) and "assignment" not in clustered
    assert (run_dir / "cluster-latest.json").exists()
    assert main(["knn", str(run_dir), *data, "--random-init"]) == 0
    assert _last_json(capsys)["checkpoint"]["weights"] == "random init"


def test_finetune_writes_the_subset(run, capsys):
    run_dir, folder = run
    argv = [
        "finetune",
        str(run_dir),
        "--train-data",
        str(folder),
        "--test-data",
        str(folder),
        "--label-fraction",
        "0.5",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
    ]
    assert main(argv) == 0
    result = _last_json(capsys)
    listing = (run_dir / "finetune-0.5-subset.txt").read_text().splitlines()
    assert len(listing) == 15 and result["subset_file"].endswith("subset.txt")
    sgd = result["protocol"]
    assert (sgd["name"], sgd["optimizer"], sgd["keep_projection_layers"]) == ("sgd", "sgd", 0)
    assert sgd["peak_lr"] == pytest.approx(0.05 * 8 / 256)

    assert main([*argv, "--protocol", "simclrv2"]) == 0
    v2 = _last_json(capsys)["protocol"]
    assert (v2["name"], v2["optimizer"], v2["keep_projection_layers"]) == ("simclrv2", "lars", 1)
    assert v2["weight_decay"] == 0.0 and v2["peak_lr"] == pytest.approx(0.005 * 8**0.5)
    assert v2["lr_scaling"].startswith("sqrt") and "no LARS" in v2["classifier_optimisation"]


def test_finetune_then_distill(run, capsys, tmp_path, monkeypatch):
    # fp32: under bf16 autocast (what ``auto`` picks on a CPU with AVX-512 BF16) the timm
    # student below, whose last stage sees 1x1 maps of 8 images, now and then overflowed to NaN
    monkeypatch.setattr("simclr.evaluate.classifier.resolve_precision", lambda *_: "fp32")
    run_dir, folder = run
    data = ["--train-data", str(folder), "--test-data", str(folder)]
    small = ["--epochs", "1", "--batch-size", "8", "--workers", "0"]
    assert main(["finetune", str(run_dir), *data, "--label-fraction", "0.5", *small]) == 0
    teacher = run_dir / "finetune-0.5-latest.pt"
    assert _last_json(capsys)["classifier_checkpoint"] == str(teacher)
    out = tmp_path / "distilled"
    argv = ["distill", str(teacher), "--data", str(folder), "--test-data", str(folder), *small]
    argv += ["--out", str(out), "--no-progress", "--checkpoint-every", "2"]
    assert main(argv) == 0
    result = _last_json(capsys)
    assert 0 <= result["student"]["top1"] <= 100 and 0 <= result["teacher"]["top1"] <= 100
    assert result["student"]["init"] == "random (from scratch)" and result["steps"] == 3
    assert result["teacher_checkpoint"]["sha256"] and result["protocol"]["label_weight"] == 0.0
    assert json.loads((out / "distill.json").read_text())["steps"] == 3
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()] == [3]  # last
    # The student's checkpoint is a teacher in turn; the same folder again needs --resume.
    assert main(["distill", str(out / "checkpoints" / "latest.pt"), "--data", str(folder),
                 *small, "--out", str(tmp_path / "again"), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    _error_line(capsys, argv, "--resume")
    assert main([*argv, "--resume"]) == 0 and _last_json(capsys)["steps"] == 3
    assert main([*argv, "--out", str(tmp_path / "wide"), "--student-width", "0.125"]) == 0
    wider = _last_json(capsys)["student"]
    assert wider["width"] == 0.125 and wider["parameters"] > result["student"]["parameters"]
    # a timm student of a width-0.0625 ResNet teacher drops the ResNet-only width and stem
    timm = [*argv, "--out", str(tmp_path / "timm"), "--student-backbone", "timm:test_resnet"]
    pytest.importorskip("timm")
    assert main(timm) == 0
    assert _last_json(capsys)["student"]["backbone"] == "timm:test_resnet"
    _error_line(capsys, [*timm, "--student-width", "0.5"], "--student-width applies to")
    # A pretraining checkpoint is not a teacher; the finetune output is replaced, not refused.
    _error_line(capsys, ["distill", str(run_dir), "--data", str(folder)], "not a classifier")
    assert main(["finetune", str(run_dir), *data, "--label-fraction", "0.5", *small]) == 0


def test_embed_neighbors_export(run, capsys, tmp_path):
    run_dir, folder = run
    out = tmp_path / "emb.npy"
    assert main(["embed", str(run_dir), "--data", str(folder), "--out", str(out)]) == 0
    assert np.load(out).shape[0] == 30 and _last_json(capsys)["num_items"] == 30
    query = folder / "class_1" / "4.png"
    assert (
        main(
            ["neighbors", str(run_dir), "--embeddings", str(out), "--query", str(query), "--k", "3"]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].endswith(str(query))
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "encoder.safetensors").exists()


def test_pictures(run, capsys, tmp_path):
    run_dir, folder = run
    assert (
        main(
            ["views", "--data", str(folder), "--out", str(tmp_path / "v.png"), "--num-images", "3"]
        )
        == 0
    )
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    assert main(["map", str(run_dir), "--data", str(folder), "--out", str(tmp_path / "m.png")]) == 0
    for name in ("v.png", "c.png", "m.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_user_errors(run, capsys, tmp_path):
    run_dir, folder = run
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(flat / f"{i}.png")
    _error_line(
        capsys,
        ["linear", str(run_dir), "--train-data", str(flat), "--test-data", str(folder)],
        "no labels",
    )
    _error_line(capsys, ["cluster", str(run_dir), "--data", str(flat)], "--k")
    _error_line(
        capsys,
        ["linear", str(tmp_path / "none"), "--train-data", "x", "--test-data", "y"],
        "does not exist",
    )
    _error_line(capsys, ["embed", str(run_dir), "--data", str(tmp_path / "missing")], "")
    _error_line(
        capsys,
        [
            "finetune",
            str(run_dir),
            "--train-data",
            str(folder),
            "--test-data",
            str(folder),
            "--label-fraction",
            "0",
        ],
        "fraction",
    )
    _error_line(capsys, ["plot", str(tmp_path)], "metrics")
    _error_line(
        capsys,
        ["knn", str(run_dir), "--train-data", str(folder), "--test-data", str(folder), "--k", "0"],
        "at least 1",
    )
    _error_line(
        capsys,
        [
            "finetune",
            str(run_dir),
            "--train-data",
            str(folder),
            "--test-data",
            str(folder),
            "--label-fraction",
            "0.5",
            "--lr",
            "-1",
        ],
        "must be > 0",
    )
    two_classes = write_image_folder(tmp_path / "two", classes=2, per_class=4)
    _error_line(
        capsys,
        ["knn", str(run_dir), "--train-data", str(folder), "--test-data", str(two_classes)],
        "different classes",
    )
    (tmp_path / "file.txt").write_text("x")
    _error_line(
        capsys,
        [
            "knn",
            str(run_dir),
            "--train-data",
            str(folder),
            "--test-data",
            str(folder),
            "--out",
            str(tmp_path / "file.txt" / "knn.json"),
        ],
        "file.txt",
    )
