import json

import pytest
import yaml

from simclr.cli import main

TINY_FLAGS = [
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--workers",
    "0",
    "--backbone",
    "resnet18",
    "--set",
    "model.width=0.0625",
    "--set",
    "model.stem=cifar",
    "--set",
    "augment.size=16",
    "--set",
    "train.progress=false",
]


def _one_line_error(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("simclr: error:") and words in err[0], err[0]
    assert "Traceback" not in err[0]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--data", "/nonexistent/folder"], "does not exist"),
        (["--backbone", "vgg99"], "unknown backbone"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--temperature", "0"], "temperature"),
        (["--temperature", "-1"], "temperature"),
        (["--batch-size", "1"], "batch_size"),
        (["--set", "train.no_such_key=3"], "no_such_key"),
        (["--set", "nonsense"], "section.key=value"),
        (["--batch-size", "lots"], "invalid int value"),
        (["--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, image_folder, tmp_path, extra, words):
    argv = [
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(tmp_path / "r"),
        *TINY_FLAGS,
        *extra,
    ]
    _one_line_error(capsys, argv, words)


def test_existing_run_and_resume_without_out(capsys, image_folder, tmp_path):
    argv = [
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(tmp_path / "r"),
        "--max-steps",
        "1",
        *TINY_FLAGS,
    ]
    assert main(argv) == 0
    capsys.readouterr()
    _one_line_error(capsys, argv, "already holds a run")
    _one_line_error(
        capsys, ["pretrain", "--data", str(image_folder), "--resume"], "--resume needs --out"
    )


def test_folder_without_images(capsys, tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    _one_line_error(
        capsys,
        ["pretrain", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")],
        "no images",
    )


def test_bad_yaml_config(capsys, image_folder, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train: [unclosed\n")
    _one_line_error(
        capsys, ["pretrain", "--data", str(image_folder), "--config", str(config)], "not valid YAML"
    )
    _one_line_error(
        capsys, ["pretrain", "--config", str(tmp_path / "missing.yaml")], "cannot read config"
    )


def test_print_config_resolves_every_layer(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train: {batch_size: 64, seed: 5}\n")
    argv = [
        "pretrain",
        "--recipe",
        "cpu-small",
        "--config",
        str(config),
        "--batch-size",
        "32",
        "--print-config",
    ]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["batch_size"] == 32 and printed["train"]["seed"] == 5
    assert printed["model"]["width"] == 0.25


def test_pretrain_then_knn(capsys, image_folder, tmp_path):
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(run),
        "--max-steps",
        "2",
        *TINY_FLAGS,
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2
    assert (
        main(
            [
                "knn",
                str(run),
                "--train-data",
                str(image_folder),
                "--test-data",
                str(image_folder),
                "--k",
                "5",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["protocol"]["k"] == 5 and len(result["checkpoint"]["sha256"]) == 64
    assert (run / "knn-latest.json").exists()
    assert (
        main(
            [
                "knn",
                str(run / "checkpoints" / "latest.pt"),
                "--train-data",
                str(image_folder),
                "--test-data",
                str(image_folder),
                "--random-init",
            ]
        )
        == 0
    )
    baseline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert baseline["checkpoint"]["weights"] == "random init"


def test_knn_errors(capsys, image_folder, tmp_path):
    _one_line_error(
        capsys,
        ["knn", str(tmp_path / "none.pt"), "--train-data", "x", "--test-data", "y"],
        "does not exist",
    )
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    _one_line_error(
        capsys,
        ["knn", str(tmp_path / "junk.pt"), "--train-data", "x", "--test-data", "y"],
        "cannot read checkpoint",
    )


def test_demo_runs_quickly(capsys, tmp_path):
    assert (
        main(["demo", "--out", str(tmp_path / "demo"), "--max-time", "4", "--device", "cpu"]) == 0
    )
    out = capsys.readouterr().out
    assert "random-init encoder" in out and "SimCLR-trained encoder" in out


@pytest.mark.parametrize(
    ("flags", "modality", "backbone"),
    [
        (["--data", "sklearn:wine"], "tabular", "mlp"),  # detected from the data
        (["--modality", "audio"], "audio", "audio-cnn"),  # named: that modality's recipe
        (["--data", "digits"], "image", "resnet50"),  # images keep the plain defaults
        (["--data", "sklearn:wine", "--recipe", "cpu-small"], "tabular", "resnet18"),
    ],
)
def test_a_modality_starts_from_its_recipe_unless_one_is_named(capsys, flags, modality, backbone):
    assert main(["pretrain", *flags, "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["modality"] == modality  # printed resolved, never "auto"
    assert cfg["model"]["backbone"] == backbone


def test_a_modality_without_its_encoder_is_one_line(capsys, tmp_path):
    code = main(
        ["pretrain", "--data", "sklearn:wine", "--recipe", "cpu-small", "--out", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a tabular encoder" in err[0], err
