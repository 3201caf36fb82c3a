import errno
import os
import subprocess
import sys
import time

import pytest
import torch

from simclr.checkpoint import (
    WriteFailed,
    load_checkpoint,
    remove_stale_temporaries,
    remove_temporaries,
    resolve_checkpoint,
    save_checkpoint,
    write_atomic_via_path,
)
from simclr.errors import UserError

NO_SUCH_PROCESS = 4_194_305
"""A process id above Linux's largest possible ``pid_max`` (2**22): no process has it."""


def _state():
    return {"model": {"w": torch.arange(4.0)}, "config": {"train": {"seed": 0}}, "step": 3}


def test_round_trip(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "checkpoints" / "latest.pt")
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["step"] == 3 and loaded["schema"] == 1
    assert load_checkpoint(tmp_path)["step"] == 3  # a run folder resolves to its latest
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_overwrite_is_atomic_rename(tmp_path, monkeypatch):
    path = save_checkpoint(_state(), tmp_path / "latest.pt")
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append((a, b)) or real_replace(a, b))
    save_checkpoint({**_state(), "step": 4}, path)
    assert len(calls) == 1 and str(calls[0][1]) == str(path)
    assert load_checkpoint(path)["step"] == 4


def test_truncated_file_is_a_user_error(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "latest.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Payload(), "config": {}}, path)
    with pytest.raises(UserError, match="refused to load .* pickled code-bearing objects"):
        load_checkpoint(path)


def test_foreign_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a simclr checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nothing")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "text.pt")


def _two_files(path, model=b"new model", data=b"new data"):
    """Write ``path`` and ``path.data`` as the ONNX exporter does for large weights."""
    path.with_name(path.name + ".data").write_bytes(data)
    path.write_bytes(model)


def test_write_atomic_via_path_moves_every_file_written_into_place(tmp_path):
    target = tmp_path / "out" / "model.onnx"
    seen = []
    write_atomic_via_path(target, lambda tmp: seen.append(tmp) or _two_files(tmp))
    assert seen[0].name == "model.onnx" and seen[0].parent.name.startswith(".model.onnx.tmp")
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert target.read_bytes() == b"new model"
    assert (target.parent / "model.onnx.data").read_bytes() == b"new data"


@pytest.mark.parametrize("stage", ["write", "sync"])
def test_write_atomic_via_path_failure_is_one_line_and_replaces_nothing(
    tmp_path, monkeypatch, stage
):
    target = tmp_path / "model.onnx"
    _two_files(target, b"old model", b"old data")

    def save(tmp):
        tmp.with_name(tmp.name + ".data").write_bytes(b"new data")
        if stage == "write":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        tmp.write_bytes(b"new model")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if stage == "sync":
        monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteFailed) as caught:
        write_atomic_via_path(target, save)
    assert str(caught.value) == (
        f"cannot write {target}: No space left on device (the file there, if any, is unchanged)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert target.read_bytes() == b"old model"
    assert (tmp_path / "model.onnx.data").read_bytes() == b"old data"


@pytest.mark.skipif(os.name == "nt", reason="process ids are only told apart by age there")
def test_only_stale_temporaries_are_removed_from_a_shared_folder(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = time.time()
        ages = {  # name -> seconds since its last modification
            f".a.pt.tmp{NO_SUCH_PROCESS}": 3600,  # a killed writer's: stale
            f".b.pt.tmp{NO_SUCH_PROCESS}": 60,  # young: maybe another machine's write
            f".c.pt.tmp{sleeper.pid}": 3600,  # a live process's
            f".d.pt.tmp{os.getpid()}": 0,  # this process's
            f".e.pt.tmp{sleeper.pid}": 2 * 86400,  # untouched for two days: the id was reused
            "f.pt": 2 * 86400,  # not a temporary
            ".g.pt.tmp": 2 * 86400,  # not a temporary either
        }
        for name, age in ages.items():
            (tmp_path / name).write_bytes(b"partial")
            os.utime(tmp_path / name, (now - age, now - age))
        staging = tmp_path / f".h.onnx.tmp{NO_SUCH_PROCESS}"  # write_atomic_via_path's folder
        staging.mkdir()
        (staging / "h.onnx").write_bytes(b"partial")
        for entry in (staging / "h.onnx", staging):
            os.utime(entry, (now - 3600, now - 3600))
        removed = remove_stale_temporaries(tmp_path, now=now)
        assert sorted(p.name for p in removed) == sorted(
            [f".a.pt.tmp{NO_SUCH_PROCESS}", f".e.pt.tmp{sleeper.pid}", staging.name]
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f".b.pt.tmp{NO_SUCH_PROCESS}", f".c.pt.tmp{sleeper.pid}", f".d.pt.tmp{os.getpid()}"]
            + ["f.pt", ".g.pt.tmp"]
        )
        assert remove_stale_temporaries(tmp_path / "missing") == []
    finally:
        sleeper.kill()
        sleeper.wait()
    # in a folder no one else writes to (a locked run folder) every temporary goes
    assert len(remove_temporaries(tmp_path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".g.pt.tmp", "f.pt"]
