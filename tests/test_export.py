import csv
import dataclasses
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.config import build_config
from simclr.errors import UserError
from simclr.evaluate.features import Encoder, load_encoder
from simclr.export import (
    embed,
    export_encoder,
    load_exported_encoder,
    nearest_neighbors,
    neighbors,
)
from simclr.train import pretrain
from tests.conftest import write_image_folder
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


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_exported_forms_give_the_backbone_features(trained, tmp_path):
    encoder, _ = trained
    out = tmp_path / "exported"
    result = export_encoder(encoder, out)
    assert sorted(os.listdir(out)) == [
        "config.json",
        "encoder.onnx",
        "encoder.pt",
        "encoder.safetensors",
    ]
    assert all(diff < 1e-4 for diff in result["max_abs_diff"].values())
    config = json.loads((out / "config.json").read_text())
    assert config["input"]["shape"] == ["batch", 3, 16, 16] and config["input"]["range"] == [0, 1]
    assert config["backbone"] == {"name": "resnet18", "width": 0.0625, "stem": "cifar"}
    reloaded = load_exported_encoder(out)
    scripted = torch.jit.load(str(out / "encoder.pt"))
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
            forms = {"safetensors": reloaded(x), "torchscript": scripted(x)}
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
    export_encoder(encoder, tmp_path / "ts", formats=("torchscript",))
    with pytest.raises(UserError, match="safetensors"):
        load_exported_encoder(tmp_path / "ts")


def test_onnx_falls_back_to_the_torchscript_exporter(trained, tmp_path, monkeypatch):
    encoder, _ = trained
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the dynamo exporter cannot run
    result = export_encoder(encoder, tmp_path, formats=("onnx",))
    assert "dynamo=False" in result["config"]["onnx"]["exporter"]
    assert result["max_abs_diff"]["onnx"] < 1e-4  # checked at another batch size than exported


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
    with pytest.raises(UserError, match="pip install pyarrow"):
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
