"""The lean install: optional packages are imported where used, and a missing one is one line
naming the ``pip install`` that brings it (see ``simclr.errors.require``)."""

import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from simclr.cli import main
from simclr.errors import DISTRIBUTION, UserError, require
from tests.conftest import write_image_folder
from tests.test_cli import TINY_FLAGS
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {
    "audio": ("soundfile", "librosa"),
    "text": ("tokenizers", "pandas"),
    "tables": ("pandas", "pyarrow"),
    "timeseries": ("aeon",),
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "shards": ("webdataset",),
    "umap": ("umap",),
    "trackers": ("wandb", "mlflow"),
    "timm": ("timm",),
    "explorer": ("plotly",),
    "tiff": ("tifffile",),
}
"""The modules each extra brings (their import names)."""


def _block(monkeypatch, *packages):
    """Make ``packages`` (and their already imported submodules) fail to import, as if absent."""
    for name in [m for m in sys.modules if m.partition(".")[0] in packages] + list(packages):
        monkeypatch.setitem(sys.modules, name, None)


def _missing_extra_error(capsys, argv, extra):
    """``argv`` exits 2 with one ``simclr: error:`` line, the last, naming the pip command."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("simclr: error:")]
    assert code == 2 and errors == err[-1:], err
    assert errors[0].endswith(f'is not installed: pip install "{DISTRIBUTION}[{extra}]"'), errors
    assert "Traceback" not in "\n".join(err)
    return errors[0]


def _write_wavs(folder: Path) -> Path:
    """Two classes of short 16-bit tones, written with the standard library only."""
    for label, freq in (("low", 220), ("high", 880)):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            t = np.arange(1600) / 8000
            samples = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
            with wave.open(str(folder / label / f"{i}.wav"), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(8000)
                out.writeframes(samples.tobytes())
    return folder


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "audio", "for nothing") is sys.modules["json"]
    _block(monkeypatch, "soundfile")
    with pytest.raises(UserError) as raised:
        require("soundfile", "audio", "to read audio files")
    assert str(raised.value) == (
        "soundfile is needed to read audio files but is not installed: "
        f'pip install "{DISTRIBUTION}[audio]"'
    )


def test_require_tells_a_broken_package_from_a_missing_one(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"brokenpkg is needed to test but cannot be imported \("):
        require("brokenpkg", "audio", "to test")


def test_missing_audio_extra_on_the_command_line(tmp_path, capsys, monkeypatch):
    data = _write_wavs(tmp_path / "clips")
    _block(monkeypatch, *OPTIONAL["audio"])
    argv = ["pretrain", "--data", str(data), "--modality", "audio", "--out", str(tmp_path / "r")]
    _missing_extra_error(capsys, [*argv, *TINY_FLAGS], "audio")


def test_missing_text_extra_on_the_command_line(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i} of a small corpus about little\n" for i in range(40)))
    _block(monkeypatch, *OPTIONAL["text"])
    argv = ["pretrain", "--data", str(corpus), "--modality", "text", "--out", str(tmp_path / "r")]
    line = _missing_extra_error(capsys, [*argv, *TINY_FLAGS], "text")
    assert line.startswith("simclr: error: tokenizers is needed")


def test_missing_tables_extra_on_the_command_line(tmp_path, capsys, monkeypatch):
    table = tmp_path / "table.csv"
    table.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(20)))
    _block(monkeypatch, *OPTIONAL["tables"])
    argv = ["pretrain", "--data", str(table), "--modality", "tabular", "--out", str(tmp_path / "r")]
    _missing_extra_error(capsys, [*argv, *TINY_FLAGS], "tables")


def test_missing_timeseries_extra_on_the_command_line(tmp_path, capsys, monkeypatch):
    series = tmp_path / "Toy_TRAIN.ts"
    series.write_text("@problemName Toy\n@classLabel true a b\n@data\n1,2,3,4:a\n4,3,2,1:b\n")
    _block(monkeypatch, *OPTIONAL["timeseries"])
    argv = ["pretrain", "--data", str(series), "--modality", "timeseries"]
    _missing_extra_error(capsys, [*argv, "--out", str(tmp_path / "r"), *TINY_FLAGS], "timeseries")


def test_missing_shards_extra_on_the_command_line(tmp_path, capsys, monkeypatch):
    images = write_image_folder(tmp_path / "images", classes=2, per_class=2)
    _block(monkeypatch, *OPTIONAL["shards"])
    _missing_extra_error(capsys, ["shards", str(images), str(tmp_path / "shards")], "shards")
    assert not (tmp_path / "shards").exists()


def test_missing_tiff_extra_on_the_command_line(tmp_path, capsys, monkeypatch):
    from tests.deep_images import write_tiff_folder

    stacks = write_tiff_folder(tmp_path / "stacks", channels=5, per_class=4)
    _block(monkeypatch, *OPTIONAL["tiff"])
    argv = ["pretrain", "--data", str(stacks), "--out", str(tmp_path / "r")]
    line = _missing_extra_error(capsys, [*argv, *TINY_FLAGS], "tiff")
    assert line.startswith("simclr: error: tifffile is needed to read multi-channel")


def test_missing_export_extra_on_the_command_line(tmp_path, capsys, monkeypatch):
    from simclr.config import build_config
    from simclr.train import pretrain

    images = write_image_folder(tmp_path / "images", classes=2, per_class=4)
    cfg = build_config(TINY, {"data": {"path": str(images)}, "train": {"max_steps": 1}})
    pretrain(cfg, tmp_path / "run")
    capsys.readouterr()
    _block(monkeypatch, *OPTIONAL["export"])
    out = tmp_path / "exported"
    argv = ["export", str(tmp_path / "run"), "--out", str(out)]
    line = _missing_extra_error(capsys, argv, "export")
    assert line.startswith("simclr: error: onnx is needed to export ONNX")
    assert not out.exists()  # checked before anything is written


def test_import_and_help_need_no_optional_package():
    """In a fresh interpreter where every optional package is absent (as in a lean install)."""
    blocked = sorted({m for modules in OPTIONAL.values() for m in modules} | {"numba"})
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import simclr, simclr.cli\n"
        "for argv in (['--help'], ['pretrain', '--help'], ['demo', '--help']):\n"
        "    try:\n"
        "        simclr.cli.main(argv)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, (argv, done.code)\n"
        "loaded = [m for m in sys.modules if m.partition('.')[0] in "
        f"{blocked!r} and sys.modules[m] is not None]\n"
        "print('loaded:', loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "usage: simclr" in done.stdout and "pretrain" in done.stdout
    assert done.stdout.rstrip().endswith("loaded: []"), done.stdout


def test_extras_match_the_package_metadata():
    """Every extra named in a require(...) call, and each extra above, is declared; all has all."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    extras = project["optional-dependencies"]
    used = set()
    for path in (ROOT / "src" / "simclr").rglob("*.py"):
        used |= set(re.findall(r'require\(\s*"[\w.]+",\s*"(\w+)"', path.read_text()))
    assert used and used <= set(extras), used - set(extras)
    assert set(OPTIONAL) <= set(extras)
    (everything,) = extras["all"]
    named = set(re.fullmatch(rf"{DISTRIBUTION}\[([\w,]+)\]", everything).group(1).split(","))
    assert named == set(extras) - {"all", "dev"}
