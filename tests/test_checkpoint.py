import os

import pytest
import torch

from simclr.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from simclr.errors import UserError


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
