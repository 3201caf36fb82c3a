"""The tabular modality: readers, fitted columns, SCARF views, the MLP, detection and the CLI."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from simclr.config import Config, build_config
from simclr.errors import UserError
from simclr.modalities import detect_modality, modality_type
from simclr.modalities.tabular import TableItems, TabularModality
from simclr.modalities.tabular.columns import UNKNOWN_CODE
from simclr.modalities.tabular.encoder import TabularMLP
from simclr.modalities.tabular.views import (
    ScarfViews,
    corrupted_count,
    sample_scarf,
    scarf_corrupt,
)

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "test")


def config(path: str | Path = "sklearn:wine", **tabular: object) -> Config:
    return build_config(
        {
            "data": {"modality": "tabular", "path": str(path)},
            "model": {"backbone": "mlp", "head": "v2"},
            "train": {"batch_size": 16},
            "tabular": {"hidden_dim": 32, "layers": 2, **tabular},
        }
    )


def modality(path: str | Path = "sklearn:wine", **tabular: object) -> TabularModality:
    return TabularModality(config(path, **tabular))


def open_items(
    spec: str | Path, split: str = "train", fitted: dict | None = None, **tabular: object
) -> tuple[TableItems, dict]:
    m = modality(spec, **tabular)
    items, fitted = (m if fitted is None else m.with_fitted(fitted)).open(str(spec), split=split)
    assert isinstance(items, TableItems)
    return items, fitted


def mixed_frame(rows: int = 40, seed: int = 0) -> pd.DataFrame:
    """Numbers (one with gaps), a few colours, a boolean and a string label."""
    rng = np.random.default_rng(seed)
    size = rng.normal(10.0, 3.0, rows)
    size[[1, 3]] = np.nan
    return pd.DataFrame(
        {
            "size": size,
            "count": rng.integers(0, 5, rows),
            "colour": rng.choice(["red", "green", "blue"], rows),
            "flag": rng.random(rows) < 0.5,
            "label": rng.choice(["cat", "dog"], rows),
        }
    )


def batch(rows: int = 6, width: int = 5, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --- views


def test_views_keep_the_rows_shape_and_dtype_and_corrupt_them() -> None:
    x = batch(8, 10)
    for dtype in (torch.float32, torch.float64):
        v1, v2 = ScarfViews(0.5, seed=1)(x.to(dtype), torch.full((8,), 10))
        assert v1.shape == v2.shape == x.shape and v1.dtype == v2.dtype == dtype
        assert not torch.equal(v1, x.to(dtype))


def test_sampled_parameters_respect_the_corruption_fraction() -> None:
    generator = torch.Generator().manual_seed(0)
    for width, corruption in ((13, 0.6), (64, 0.3), (4, 0.0), (5, 0.99)):
        params = sample_scarf(50, width, 7, corruption, generator, torch.device("cpu"))
        assert params.mask.dtype == torch.bool and params.donors.dtype == torch.long
        assert (params.mask.sum(1) == round(corruption * width)).all()
        assert params.donors.min() >= 0 and params.donors.max() < 7
    assert corrupted_count(13, 0.6) == 8 and corrupted_count(3, 0.99) == 3
    # every subset is possible: over many rows each feature is corrupted sometimes
    params = sample_scarf(400, 10, 5, 0.3, generator, torch.device("cpu"))
    assert (params.mask.float().mean(0) - 0.3).abs().max() < 0.1


def test_corruption_replaces_only_masked_cells_with_the_same_column_of_the_donor() -> None:
    x = batch(6, 5)
    params = sample_scarf(6, 5, 6, 0.6, torch.Generator().manual_seed(2), torch.device("cpu"))
    view = scarf_corrupt(x, x, params)
    for i in range(6):
        for j in range(5):
            expected = x[params.donors[i, j], j] if params.mask[i, j] else x[i, j]
            assert view[i, j] == expected
    # hence every value of a column of the view is a value of that column of the batch
    for j in range(5):
        assert set(view[:, j].tolist()) <= set(x[:, j].tolist())


def test_batched_views_equal_one_row_at_a_time() -> None:
    x = batch(7, 9)
    views = ScarfViews(0.5, seed=5)
    params = views.sample(x)
    batched = scarf_corrupt(x, x, params)
    for i in range(7):
        one = type(params)(params.mask[i : i + 1], params.donors[i : i + 1])
        assert torch.equal(scarf_corrupt(x[i : i + 1], x, one), batched[i : i + 1])
    # and forward is sample + corrupt, twice
    views.manual_seed(5)
    again = ScarfViews(0.5, seed=5)
    first, second = again.sample(x), again.sample(x)
    v1, v2 = views(x, torch.full((7,), 9))
    assert torch.equal(v1, scarf_corrupt(x, x, first))
    assert torch.equal(v2, scarf_corrupt(x, x, second))


def test_zero_corruption_is_the_identity() -> None:
    x = batch(5, 4)
    v1, v2 = ScarfViews(0.0)(x, torch.full((5,), 4))
    assert torch.equal(v1, x) and torch.equal(v2, x)
    with pytest.raises(ValueError):
        ScarfViews(1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_views_run_on_the_inputs_device() -> None:
    x = batch(8, 6).cuda()
    v1, v2 = ScarfViews(0.5)(x, torch.full((8,), 6, device="cuda"))
    assert v1.device == v2.device == x.device


# --- reading and the fitted columns


def test_sklearn_tables_are_split_and_standardised_like_sklearn() -> None:
    train, fitted = open_items("sklearn:wine")
    test, _ = open_items("sklearn:wine", "test", fitted)
    assert train.inputs.shape == (142, 13) and test.inputs.shape == (36, 13)
    assert train.classes == test.classes == ["class_0", "class_1", "class_2"]
    assert set(train.names).isdisjoint(test.names) and len(set(train.names + test.names)) == 178
    assert (train.lengths == 13).all() and train.has_labels and test.has_labels
    # an independent reference: scikit-learn's scaler fitted on the same training rows
    from sklearn.datasets import load_wine

    x = load_wine().data
    rows = [int(name.rsplit(":", 1)[1]) for name in train.names]
    test_rows = [int(name.rsplit(":", 1)[1]) for name in test.names]
    scaler = StandardScaler().fit(x[rows])
    np.testing.assert_allclose(train.inputs.numpy(), scaler.transform(x[rows]), atol=1e-5)
    np.testing.assert_allclose(test.inputs.numpy(), scaler.transform(x[test_rows]), atol=1e-5)
    assert load_wine().target[rows].tolist() == train.labels.tolist()
    digits, _ = open_items("sklearn:digits")
    assert digits.inputs.shape[1] == 64 and len(digits.classes) == 10
    json.dumps(fitted)  # primitives only


def test_mixed_csv_numbers_categories_missing_values_and_labels(tmp_path: Path) -> None:
    frame = mixed_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    train, fitted = open_items(tmp_path / "t.csv")
    kinds = {c["name"]: c["kind"] for c in fitted["columns"]}
    assert kinds == {
        "size": "numeric",
        "count": "numeric",
        "colour": "categorical",
        "flag": "numeric",
    }
    assert fitted["label_column"] == "label" and train.classes == ["cat", "dog"]
    rows = frame.iloc[[int(n.rsplit(":", 1)[1]) for n in train.names]]
    size = rows["size"]
    column = next(c for c in fitted["columns"] if c["name"] == "size")
    assert column["fill"] == pytest.approx(size.median())
    assert column["mean"] == pytest.approx(size.mean())
    assert column["std"] == pytest.approx(size.std(ddof=0))
    expected = (size.fillna(size.median()) - size.mean()) / size.std(ddof=0)
    np.testing.assert_allclose(train.inputs[:, 0].numpy(), expected.to_numpy(), atol=1e-5)
    colour = next(c for c in fitted["columns"] if c["name"] == "colour")
    assert colour["categories"] == ["blue", "green", "red"]
    codes = rows["colour"].map({"blue": 1, "green": 2, "red": 3}).to_numpy()
    assert train.inputs[:, 2].tolist() == codes.tolist()
    assert train.labels.tolist() == (rows["label"] == "dog").astype(int).tolist()


def test_unseen_category_and_unparseable_numbers_at_evaluation(tmp_path: Path, caplog) -> None:
    mixed_frame().to_csv(tmp_path / "train.csv", index=False)
    later = mixed_frame(4, seed=1)
    later["colour"] = ["purple", "red", None, "blue"]
    later["size"] = later["size"].astype(object)
    later.loc[0, "size"] = "?"
    later.to_csv(tmp_path / "test.csv", index=False)
    train, fitted = open_items(tmp_path)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        test, _ = open_items(tmp_path, "test", fitted)
    assert "1 cell(s) are not finite numbers" in caplog.text
    assert test.inputs[:, 2].tolist() == [UNKNOWN_CODE, 3, UNKNOWN_CODE, 1]
    size = fitted["columns"][0]
    assert test.inputs[0, 0].item() == pytest.approx((size["fill"] - size["mean"]) / size["std"])
    assert len(train) == 40 and len(test) == 4  # a folder: one file per split, no resplit


def test_mostly_numeric_strings_are_numbers_and_wide_strings_are_left_out(
    tmp_path: Path, caplog
) -> None:
    frame = mixed_frame(30)
    frame["reading"] = [str(v) for v in range(29)] + ["?"]
    frame["id"] = [f"id-{i}" for i in range(30)]
    frame.to_csv(tmp_path / "t.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        _, fitted = open_items(tmp_path / "t.csv", max_categories=10)
    kinds = {c["name"]: c["kind"] for c in fitted["columns"]}
    assert kinds["reading"] == "numeric" and "id" not in kinds
    assert "column 'id' left out" in caplog.text


def test_parquet_and_gzipped_csv_read_like_csv(tmp_path: Path) -> None:
    frame = mixed_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    with gzip.open(tmp_path / "t.csv.gz", "wt") as f:
        frame.to_csv(f, index=False)
    reference, _ = open_items(tmp_path / "t.csv")
    for name in ("t.parquet", "t.csv.gz"):
        items, _ = open_items(tmp_path / name)
        torch.testing.assert_close(items.inputs, reference.inputs)
        assert torch.equal(items.labels, reference.labels)


def test_label_column_choice_and_unlabelled_tables(tmp_path: Path, caplog) -> None:
    frame = mixed_frame().rename(columns={"label": "animal"})
    frame.to_csv(tmp_path / "t.csv", index=False)
    items, fitted = open_items(tmp_path / "t.csv")
    assert fitted["label_column"] is None and not items.has_labels
    assert "animal" in [c["name"] for c in fitted["columns"]]
    items, fitted = open_items(tmp_path / "t.csv", label_column="animal")
    assert items.classes == ["cat", "dog"] and items.has_labels
    frame.loc[[0, 1, 2, 3, 4], "animal"] = None  # some rows without a label: -1, and a warning
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        both = [open_items(tmp_path / "gaps.csv", s, label_column="animal")[0] for s in SPLITS]
    assert sum(int((part.labels == -1).sum()) for part in both) == 5
    assert "have no label" in caplog.text
    with pytest.raises(UserError, match="not a column"):
        open_items(tmp_path / "t.csv", label_column="species")


def test_malformed_rows_are_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    lines = ["a,b,target", "1,2,x", "3,4,y", "5,6,7,8", "7,8,x", "9,10,y"]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        items, _ = open_items(tmp_path / "t.csv", split="train")
        test, _ = open_items(tmp_path / "t.csv", split="test")
    assert len(items) + len(test) == 4
    assert "skipping a row with 4 fields" in caplog.text


def test_empty_or_malformed_inputs_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b,target\n")
    (tmp_path / "labels.csv").write_text("target\n1\n2\n3\n")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    pd.DataFrame({"when": pd.to_datetime(["2020-01-01"] * 3), "target": [1, 2, 3]}).to_parquet(
        tmp_path / "dates.parquet"
    )
    (tmp_path / "split").mkdir()
    mixed_frame().to_csv(tmp_path / "split" / "train.csv", index=False)
    cases = {
        "empty.csv": "is empty",
        "header.csv": "has no rows",
        "labels.csv": "no numeric or categorical feature",
        "bad.parquet": "cannot read table",
        "dates.parquet": "no numeric or categorical feature",
        "missing.csv": "does not exist",
        "t.json": "not a table",
    }
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            open_items(tmp_path / name)
    with pytest.raises(UserError, match="without a test table"):
        open_items(tmp_path / "split", "test")
    with pytest.raises(UserError, match="unknown table"):
        open_items("sklearn:titanic")
    (tmp_path / "one.csv").write_text("a,target\n1,x\n")
    with pytest.raises(UserError, match="too few"):
        open_items(tmp_path / "one.csv")


def test_evaluation_data_must_match_the_training_table(tmp_path: Path) -> None:
    mixed_frame().to_csv(tmp_path / "train.csv", index=False)
    _, fitted = open_items(tmp_path / "train.csv")
    mixed_frame().drop(columns="colour").to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(UserError, match="lacks the training column"):
        open_items(tmp_path / "other.csv", fitted=fitted)
    strange = mixed_frame()
    strange.loc[0, "label"] = "bird"
    strange.to_csv(tmp_path / "strange.csv", index=False)
    with pytest.raises(UserError, match="not one of the training classes"):
        open_items(tmp_path / "strange.csv", "train", fitted)
    with pytest.raises(UserError, match="not a table's"):
        open_items(tmp_path / "train.csv", fitted={"length": 100})


# --- encoder, model and pictures


def test_mlp_shapes_embeddings_and_unknown_codes() -> None:
    encoder = TabularMLP([0, 3, 0, 2], hidden_dim=16, layers=3, embedding_dim=2)
    assert [e.num_embeddings for e in encoder.embeddings] == [4, 3]
    rows = torch.tensor([[0.5, 1.0, -1.0, 2.0], [0.1, 3.0, 0.0, 0.0], [1.0, 0.0, 2.0, 1.0]])
    encoder.eval()
    out = encoder(rows)
    assert out.shape == (3, 16) and (out >= 0).all()  # ReLU features
    changed = rows.clone()
    changed[0, 1] = 2.0  # another category changes the row's features
    assert not torch.allclose(encoder(changed)[0], out[0])
    numeric_only = TabularMLP([0, 0], hidden_dim=8, layers=1, batch_norm=False)
    assert numeric_only(torch.randn(5, 2)).shape == (5, 8)
    with pytest.raises(ValueError):
        TabularMLP([], hidden_dim=8)


def test_mlp_trains_its_embeddings() -> None:
    encoder = TabularMLP([2, 0], hidden_dim=8, layers=2)
    encoder(torch.tensor([[1.0, 0.3], [2.0, -0.3], [0.0, 1.0]])).sum().backward()
    assert encoder.embeddings[0].weight.grad is not None
    assert encoder.embeddings[0].weight.grad.abs().sum() > 0


def test_model_views_and_input_fit_together(tmp_path: Path) -> None:
    mixed_frame().to_csv(tmp_path / "t.csv", index=False)
    tabular = modality(tmp_path / "t.csv")
    items, fitted = tabular.open(str(tmp_path / "t.csv"), split="train")
    tabular = tabular.with_fitted(fitted)
    model = tabular.build_model()
    (inputs, lengths), _ = next(tabular.train_batches(items, batch_size=16, seed=0, epoch=0))
    views = tabular.views(seed=0)
    v1, v2 = views(inputs, lengths)
    assert model(torch.cat([v1, v2])).shape == (32, 128)
    model.eval()
    batches = list(tabular.eval_batches(items, batch_size=10))
    features = torch.cat([model.backbone(tabular.model_input(b, "cpu")) for b, _, _ in batches])
    assert features.shape == (len(items), 32)
    assert torch.equal(tabular.model_input(batches[0][0], "cpu"), items.inputs[:10])


def test_draw_views_writes_a_png(tmp_path: Path) -> None:
    tabular = modality()
    items, _ = tabular.open("sklearn:wine", split="train")
    out = tabular.draw_views(items, tmp_path / "views.png", num_items=5, seed=0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    part = items.subset(torch.tensor([4, 0]))
    assert isinstance(part, TableItems) and part.columns == items.columns
    assert part.names == [items.names[4], items.names[0]]
    assert torch.equal(part.inputs, items.inputs[[4, 0]])


# --- detection, baseline and the command line


def test_detection(tmp_path: Path) -> None:
    detect = modality_type("tabular").detect
    mixed_frame().to_csv(tmp_path / "table.csv", index=False)
    mixed_frame().to_parquet(tmp_path / "table.parquet")
    texts = pd.DataFrame({"text": ["a sentence long enough to be a text, not a category"] * 4})
    texts.assign(label=[0, 1, 0, 1]).to_csv(tmp_path / "texts.csv", index=False)
    (tmp_path / "split").mkdir()
    mixed_frame().to_csv(tmp_path / "split" / "train.csv", index=False)
    (tmp_path / "notes.txt").write_text("hello")
    assert detect("sklearn:wine") and detect("sklearn:digits")
    assert detect(str(tmp_path / "table.csv")) and detect(str(tmp_path / "table.parquet"))
    assert detect(str(tmp_path / "split"))
    assert not detect(str(tmp_path / "texts.csv"))
    assert not detect(str(tmp_path / "notes.txt")) and not detect(str(tmp_path / "missing.csv"))
    assert not detect("digits") and not detect(str(tmp_path))
    # among every registered modality, tables are only tables
    assert detect_modality(str(tmp_path / "table.csv")) == "tabular"
    assert detect_modality("sklearn:wine") == "tabular" and detect_modality("digits") == "image"


def test_baseline_scores_the_raw_features(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the scripts import their neighbours
    module = importlib.import_module("baseline_tabular")
    train, fitted = open_items("sklearn:iris")
    test, _ = open_items("sklearn:iris", "test", fitted)
    scores = module.baseline(train, test, config("sklearn:iris"))
    assert set(scores) == {"knn_top1", "linear_top1"}
    assert scores["knn_top1"] > 80 and scores["linear_top1"] > 80  # iris is easy
    raw = module.raw_features(
        TableItems(
            torch.tensor([[0.5, 2.0], [1.5, 0.0]]),
            torch.zeros(2, dtype=torch.long),
            ["a"],
            ["r0", "r1"],
            [
                {"name": "x", "kind": "numeric", "mean": 0.0, "std": 1.0, "fill": 0.0},
                {"name": "c", "kind": "categorical", "categories": ["u", "v"]},
            ],
        )
    )
    assert raw.tolist() == [[0.5, 0.0, 0.0, 1.0], [1.5, 1.0, 0.0, 0.0]]


def test_cli_rejects_bad_tables_with_exit_code_2(tmp_path: Path, capsys) -> None:
    from simclr.cli import main

    (tmp_path / "empty.csv").write_text("")
    code = main(
        [
            "pretrain",
            "--data",
            str(tmp_path / "empty.csv"),
            "--recipe",
            "tabular-small",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    assert "is empty" in capsys.readouterr().err


def test_pretrain_then_knn_end_to_end(tmp_path: Path) -> None:
    from simclr.cli import main

    mixed_frame(80).to_csv(tmp_path / "table.csv", index=False)
    run = tmp_path / "run"
    data = str(tmp_path / "table.csv")
    common = ["--set", "tabular.hidden_dim=16", "--set", "tabular.layers=2"]
    argv = ["pretrain", "--data", data, "--recipe", "tabular-small", "--out", str(run)]
    argv += ["--max-steps", "3", "--batch-size", "16", "--device", "cpu", *common]
    assert main(argv) == 0
    assert main(["knn", str(run), "--train-data", data, "--test-data", data]) == 0


def test_a_model_fitted_on_unlabelled_rows_evaluates_labelled_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    features.to_csv(tmp_path / "unlabelled.csv", index=False)
    features.assign(target=["x", "y"] * 20).to_csv(tmp_path / "labelled.csv", index=False)
    m = modality(tmp_path / "unlabelled.csv")
    _, fitted = m.open(str(tmp_path / "unlabelled.csv"), split="train")
    assert fitted["label_column"] is None
    labelled, _ = m.with_fitted(fitted).open(str(tmp_path / "labelled.csv"), split="test")
    assert labelled.has_labels and labelled.classes == ["x", "y"]
    assert labelled.inputs.shape[1] == 3  # the label is not read as a feature
