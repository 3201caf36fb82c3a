import csv
import dataclasses
import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr import export as export_module
from simclr.checkpoint import WriteFailed
from simclr.cli import build_parser, main
from simclr.config import build_config
from simclr.errors import UserError
from simclr.evaluate.features import Encoder, load_encoder
from simclr.export import (
    CONFIG_FILE,
    EXPORT_FORMATS,
    ONNX_FILE,
    PT2_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    embed,
    export_encoder,
    load_exported_encoder,
    nearest_neighbors,
    neighbors,
)
from simclr.train import pretrain
from tests.conftest import files_capped_at, write_image_folder
from tests.test_train import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run (so batch norm has running statistics), then a corrupt file in its data."""
    root = tmp_path_factory.mktemp("export")
    folder = write_image_folder(root / "images", classes=3, per_class=4, size=16)
    pretrain(
        build_config(TINY, {"data": {"path": str(folder)}, "train": {"max_steps": 2}}), root / "run"
    )
    (folder / "class_1" / "corrupt.png").write_bytes(b"not an image at all")
    return load_encoder(root / "run"), folder


def _readable_files(folder):
    return [
        os.path.abspath(folder / c / name)
        for c in sorted(os.listdir(folder))
        for name in sorted(os.listdir(folder / c))
        if name != "corrupt.png"
    ]


@torch.no_grad()
def _reference_features(model, paths, layer):
    """Decode with PIL directly (not the package's reader); 16 px images need no resize."""
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    return model.forward_features(x) if layer == "backbone" else model(x)


def _with_in_memory(encoder, mode):
    cfg = encoder.config
    return Encoder(
        encoder.model,
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, in_memory=mode)),
        encoder.info,
        encoder.fitted,
    )


def test_exported_forms_give_the_backbone_features(trained, tmp_path):
    encoder, _ = trained
    out = tmp_path / "exported"
    result = export_encoder(encoder, out)
    assert sorted(os.listdir(out)) == [  # no TorchScript unless asked for
        "config.json",
        "encoder.onnx",
        "encoder.pt2",
        "encoder.safetensors",
    ]
    assert set(result["max_abs_diff"]) == {"safetensors", "pt2", "onnx"}
    assert all(diff is None or diff < 1e-4 for diff in result["max_abs_diff"].values())
    config = json.loads((out / "config.json").read_text())
    assert config["input"]["shape"] == ["batch", 3, 16, 16] and config["input"]["range"] == [0, 1]
    assert config["backbone"] == {
        "name": "resnet18", "width": 0.0625, "stem": "cifar", "args": {}, "in_channels": 3
    }  # fmt: skip
    assert config["pt2"]["dynamic_shapes"] == {"images": [0]}
    reloaded = load_exported_encoder(out)
    program = torch.export.load(out / PT2_FILE).module()
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(
        str(out / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    generator = torch.Generator().manual_seed(5)
    encoder.model.eval()
    for batch in (1, 5):
        x = torch.rand(batch, 3, 16, 16, generator=generator)
        with torch.no_grad():
            expected = encoder.model.forward_features(x)
            forms = {"safetensors": reloaded(x), "pt2": program(x)}
        forms["onnx"] = torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])
        assert expected.shape == (batch, config["feature_dim"])
        for name, got in forms.items():
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=name)


def test_export_rejects_bad_requests(trained, tmp_path):
    encoder, _ = trained
    with pytest.raises(UserError, match="unknown export format"):
        export_encoder(encoder, tmp_path, formats=("tflite",))
    with pytest.raises(UserError, match="config.json"):
        load_exported_encoder(tmp_path / "nothing")
    export_encoder(encoder, tmp_path / "pt2", formats=("pt2",))
    with pytest.raises(UserError, match="safetensors"):
        load_exported_encoder(tmp_path / "pt2")


def test_pt2_program_has_a_dynamic_batch_and_loads_without_warnings(trained, tmp_path, recwarn):
    encoder, _ = trained
    result = export_encoder(encoder, tmp_path, formats=("pt2",))
    assert sorted(os.listdir(tmp_path)) == [CONFIG_FILE, PT2_FILE]
    assert result["max_abs_diff"]["pt2"] < 1e-5  # checked at batches of 3 and 1 when written
    recwarn.clear()
    program = torch.export.load(tmp_path / PT2_FILE).module()
    generator = torch.Generator().manual_seed(7)
    for batch in (1, 4):  # neither is the batch of 2 it was captured with
        x = torch.rand(batch, 3, 16, 16, generator=generator)
        with torch.no_grad():
            expected = encoder.model.forward_features(x)
            got = program(x)
        assert got.shape == expected.shape == (batch, result["feature_dim"])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not [w for w in recwarn if issubclass(w.category, (FutureWarning, DeprecationWarning))]


def test_torchscript_only_on_request_as_torch_deprecates_it(trained, tmp_path):
    encoder, _ = trained
    result = export_encoder(encoder, tmp_path, formats=("torchscript",))
    assert result["max_abs_diff"]["torchscript"] < 1e-4
    with pytest.warns(FutureWarning, match="deprecated"):  # why it is not a default format
        scripted = torch.jit.load(str(tmp_path / TORCHSCRIPT_FILE))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            scripted(x), encoder.model.forward_features(x), atol=1e-4, rtol=0
        )


def test_cli_export_writes_the_pt2_program_and_takes_formats(trained, tmp_path, capsys):
    encoder, _ = trained
    out = tmp_path / "default"
    assert main(["export", encoder.info["path"], "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(printed["files"]) == ["onnx", "pt2", "safetensors"]
    assert sorted(os.listdir(out)) == [CONFIG_FILE, ONNX_FILE, PT2_FILE, WEIGHTS_FILE]
    some = tmp_path / "some"
    argv = ["export", encoder.info["path"], "--out", str(some)]
    assert main([*argv, "--format", "pt2", "--format", "torchscript"]) == 0
    assert sorted(os.listdir(some)) == [CONFIG_FILE, TORCHSCRIPT_FILE, PT2_FILE]
    assert main([*argv, "--format", "tflite"]) == 2
    assert "pt2" in capsys.readouterr().err  # the choices are listed
    export_parser = build_parser()._subparsers._group_actions[0].choices["export"]
    (format_flag,) = [a for a in export_parser._actions if a.dest == "formats"]
    assert tuple(format_flag.choices) == EXPORT_FORMATS


EXTERNAL = [
    ("timm:test_vit", {"img_size": 32}),  # timm's 0.3M-parameter test ViT, built for 32 px
    ("tv:mobilenet_v3_small", {}),  # its classifier's last Linear dropped: 1024-d pre-logits
]


@pytest.mark.parametrize(("backbone", "args"), EXTERNAL)
def test_timm_and_torchvision_backbones_pretrain_evaluate_and_export(
    backbone, args, tmp_path, capsys
):
    if backbone.startswith("timm:"):
        pytest.importorskip("timm", reason="timm backbones need timm (the timm extra)")
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=4, size=32)
    model = {"backbone": backbone, "width": 1, "stem": "imagenet", "backbone_args": args}
    overrides = {"model": model, "augment": {"size": 32}, "data": {"path": str(folder)}}
    pretrain(build_config(TINY, overrides, {"train": {"max_steps": 2}}), tmp_path / "run")
    data = ["--train-data", str(folder), "--test-data", str(folder)]
    assert main(["knn", str(tmp_path / "run"), *data, "--workers", "0"]) == 0
    knn = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= knn["top1"] <= 100
    encoder = load_encoder(tmp_path / "run")
    embedded = embed(encoder, str(folder), tmp_path / "emb.npy", num_workers=0, cache=False)
    result = export_encoder(encoder, tmp_path / "exported", formats=("safetensors", "pt2"))
    dim = result["feature_dim"]
    assert embedded["dim"] == dim == encoder.model.feature_dim
    arch = {"name": backbone, "width": 1.0, "stem": "imagenet", "args": args, "in_channels": 3}
    assert result["config"]["backbone"] == arch  # what load_exported_encoder rebuilds
    reloaded = load_exported_encoder(tmp_path / "exported")
    program = torch.export.load(tmp_path / "exported" / PT2_FILE).module()
    for batch in (1, 3):
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = encoder.model.forward_features(x)
            assert expected.shape == (batch, dim)
            torch.testing.assert_close(reloaded(x), expected, atol=0, rtol=0)
            torch.testing.assert_close(program(x), expected, atol=1e-5, rtol=0)


def test_onnx_falls_back_to_the_torchscript_exporter(trained, tmp_path, monkeypatch):
    encoder, _ = trained
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the dynamo exporter cannot run
    result = export_encoder(encoder, tmp_path, formats=("onnx",))
    assert "dynamo=False" in result["config"]["onnx"]["exporter"]
    assert result["max_abs_diff"]["onnx"] < 1e-4  # checked at another batch size than exported


# --- a failed write leaves the previous file intact (issue 17) -------------------------------

EXPORT_FILES = {
    "safetensors": WEIGHTS_FILE,
    "pt2": PT2_FILE,
    "torchscript": TORCHSCRIPT_FILE,
    "onnx": ONNX_FILE,
}


def _full_disk_at_sync(monkeypatch, *, only=""):
    """``os.fsync`` fails with ENOSPC (for files whose name holds ``only``), as NFS reports it."""
    real_fsync = os.fsync

    def fsync(fd):
        if only in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell the file being synced")
    monkeypatch.setattr(os, "fsync", fsync)


def _previous_export(out):
    """A previous export in ``out``: every file with content that no export writes."""
    out.mkdir()
    for name in (CONFIG_FILE, *EXPORT_FILES.values()):
        (out / name).write_bytes(f"previous {name}\n".encode())
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize("failure", ["write", "sync"])
@pytest.mark.parametrize("fmt", list(EXPORT_FILES))
def test_a_failed_export_write_keeps_the_previous_file(
    trained, tmp_path, monkeypatch, fmt, failure
):
    encoder, _ = trained
    out = tmp_path / "exported"
    before = _previous_export(out)
    target = out / EXPORT_FILES[fmt]
    if failure == "write":
        reason = "File too large"
        with files_capped_at(32 * 1024), pytest.raises(WriteFailed) as caught:
            export_encoder(encoder, out, formats=(fmt,))  # every file is over 100 KiB
    else:
        reason = "No space left on device"
        _full_disk_at_sync(monkeypatch)
        with pytest.raises(WriteFailed) as caught:
            export_encoder(encoder, out, formats=(fmt,))
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: {reason}") and "\n" not in message
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # byte for byte, config.json too, and no temporary left


def test_a_failed_export_is_one_line_on_the_command_line(trained, tmp_path, capsys):
    encoder, _ = trained
    out = tmp_path / "exported"
    before = _previous_export(out)
    with files_capped_at(32 * 1024):
        code = main(["export", encoder.info["path"], "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    errors = [line for line in err if line.startswith("simclr: error:")]
    assert errors == [err[-1]], err
    assert errors[0].startswith(f"simclr: error: cannot write {out / WEIGHTS_FILE}: File too large")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_onnx_with_external_weights_lands_whole(trained, tmp_path, monkeypatch):
    encoder, _ = trained
    monkeypatch.setattr(export_module, "_needs_external_data", lambda module: True)
    out = tmp_path / "exported"
    stale = out / f".{ONNX_FILE}.tmp4194305"  # a killed export's folder (no such process id)
    stale.mkdir(parents=True)
    (stale / ONNX_FILE).write_bytes(b"half a file")
    os.utime(stale, (0, 0))
    os.utime(stale / ONNX_FILE, (0, 0))
    result = export_encoder(encoder, out, formats=("onnx",))
    assert sorted(os.listdir(out)) == [CONFIG_FILE, ONNX_FILE, f"{ONNX_FILE}.data"]
    assert result["max_abs_diff"]["onnx"] is None or result["max_abs_diff"]["onnx"] < 1e-4
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(out / ONNX_FILE), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {f"{ONNX_FILE}.data"}  # the name beside it, not the temporary's


def test_a_failed_index_write_keeps_the_previous_index(trained, tmp_path, monkeypatch):
    encoder, folder = trained
    embedded = tmp_path / "emb.npy"
    index = tmp_path / "emb.index.csv"
    index.write_text("previous index\n")
    _full_disk_at_sync(monkeypatch, only=".emb.index.csv.tmp")
    with pytest.raises(WriteFailed, match=f"cannot write {index}: No space left on device"):
        embed(encoder, str(folder), embedded, num_workers=0, cache=False)
    assert index.read_text() == "previous index\n"
    assert sorted(os.listdir(tmp_path)) == ["emb.index.csv", "emb.npy"]  # no json: incomplete


@pytest.mark.parametrize(("in_memory", "layer"), [("auto", "backbone"), ("never", "projection")])
def test_embed_rows_align_with_index_despite_a_corrupt_file(trained, tmp_path, in_memory, layer):
    encoder, folder = _with_in_memory(trained[0], in_memory), trained[1]
    result = embed(encoder, str(folder), tmp_path / "emb", layer=layer, num_workers=0, cache=False)
    matrix = np.load(tmp_path / "emb.npy")
    with open(tmp_path / "emb.index.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected_paths = _readable_files(folder)
    assert matrix.dtype == np.float32 and matrix.shape[0] == len(rows) == 12
    assert [r["path"] for r in rows] == expected_paths
    assert [r["class"] for r in rows] == [
        os.path.basename(os.path.dirname(p)) for p in expected_paths
    ]
    assert [int(r["label"]) for r in rows] == [i // 4 for i in range(12)]
    expected = _reference_features(encoder.model.eval(), expected_paths, layer)
    torch.testing.assert_close(torch.from_numpy(matrix), expected, atol=1e-5, rtol=1e-4)
    metadata = json.loads((tmp_path / "emb.json").read_text())
    assert metadata == {**result, "files": metadata["files"]}
    assert metadata["protocol"]["layer"] == layer and metadata["dim"] == matrix.shape[1]
    assert metadata["protocol"]["checkpoint_sha256"] == encoder.info["sha256"]


def test_neighbors_of_an_embedded_image_start_with_itself(trained, tmp_path):
    encoder, folder = trained
    embed(encoder, str(folder), tmp_path / "emb.npy", num_workers=0)
    query = folder / "class_2" / "1.png"
    found = neighbors(encoder, query, tmp_path / "emb.npy", k=4)
    assert len(found) == 4 and found[0][0] == os.path.abspath(query)
    assert found[0][1] == pytest.approx(1.0, abs=1e-5) and found[1][1] < 1.0 - 1e-5
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    large = tmp_path / "large.png"  # another size goes through the evaluation resize
    Image.fromarray(np.full((40, 30, 3), 120, dtype=np.uint8)).save(large)
    assert len(neighbors(encoder, large, tmp_path / "emb.npy", k=50)) == 12


def test_parquet_index(trained, tmp_path, monkeypatch):
    encoder, folder = trained
    pytest.importorskip("pyarrow")
    embed(encoder, str(folder), tmp_path / "emb.npy", index_format="parquet", num_workers=0)
    assert (tmp_path / "emb.index.parquet").is_file()
    query = folder / "class_0" / "3.png"
    assert neighbors(encoder, query, tmp_path / "emb.npy", k=1)[0][0] == os.path.abspath(query)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(UserError, match=r'pip install "simclr-kit\[parquet\]"'):
        embed(encoder, str(folder), tmp_path / "other.npy", index_format="parquet")


def test_bad_inputs_are_user_errors(trained, tmp_path):
    encoder, folder = trained
    embedded = tmp_path / "emb.npy"
    with pytest.raises(UserError, match="folder"):
        embed(encoder, str(folder), tmp_path)
    with pytest.raises(UserError, match="index format"):
        embed(encoder, str(folder), embedded, index_format="xml")
    with pytest.raises(UserError, match="layer"):
        embed(encoder, str(folder), embedded, layer="head")
    with pytest.raises(UserError, match="do not exist"):
        neighbors(encoder, folder / "class_0" / "0.png", embedded)
    embed(encoder, str(folder), embedded, num_workers=0)
    with pytest.raises(UserError, match="cannot read query"):
        neighbors(encoder, folder / "class_1" / "corrupt.png", embedded)
    with pytest.raises(UserError, match="does not exist"):
        neighbors(encoder, folder / "missing.png", embedded)
    random_init = load_encoder(encoder.info["path"], random_init=True)
    with pytest.raises(UserError, match="embed again"):  # same file, other weights
        neighbors(random_init, folder / "class_0" / "0.png", embedded)
    metadata = json.loads((tmp_path / "emb.json").read_text())
    metadata["protocol"]["checkpoint_sha256"] = "0" * 64
    (tmp_path / "emb.json").write_text(json.dumps(metadata))
    with pytest.raises(UserError, match="embed again"):
        neighbors(encoder, folder / "class_0" / "0.png", embedded)
    (tmp_path / "emb.json").unlink()
    with pytest.raises(UserError, match="emb.json"):
        neighbors(encoder, folder / "class_0" / "0.png", embedded)


def test_nearest_neighbors_match_brute_force():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(50, 6, generator=g)
    queries = torch.randn(4, 6, generator=g)
    unit = embeddings.double() / embeddings.double().norm(dim=1, keepdim=True)
    similarity = (queries.double() / queries.double().norm(dim=1, keepdim=True) @ unit.T).numpy()
    expected_index = np.argsort(-similarity, axis=1)[:, :5]
    for data, chunk in ((embeddings, 7), (embeddings.numpy(), 1000)):
        index, sims = nearest_neighbors(data, queries, 5, chunk_size=chunk)
        assert index.tolist() == expected_index.tolist()
        np.testing.assert_allclose(
            sims.numpy(), np.take_along_axis(similarity, expected_index, 1), atol=1e-6
        )
    index, sims = nearest_neighbors(embeddings, queries[0], 100)
    assert index.shape == (50,) and index[0] == int(expected_index[0, 0])
    with pytest.raises(UserError, match="dimension"):
        nearest_neighbors(embeddings, torch.randn(3), 2)
    with pytest.raises(UserError, match="k must"):
        nearest_neighbors(embeddings, queries, 0)
