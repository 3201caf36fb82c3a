"""Text: reading, tokenizer, batched token views, the Transformer, detection and the CLI."""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from simclr.config import TextConfig, build_config
from simclr.errors import UserError
from simclr.modalities import detect_modality, modality_for
from simclr.modalities.text import TextItems, TextModality
from simclr.modalities.text.encoder import TextTransformer
from simclr.modalities.text.reading import read_corpus, split_file
from simclr.modalities.text.tokenizer import PAD_ID, decode, encode, load_tokenizer
from simclr.modalities.text.views import (
    TokenViews,
    apply_token_views,
    sample_token_view_params,
)

TOPICS = {
    "sport": "the team won the match after a late goal in the final minutes of the game",
    "money": "shares fell as the bank reported lower profits and investors sold their stock",
    "space": "the rocket carried a new satellite into orbit for the space agency mission",
}


def corpus_rows(per_class: int = 12) -> list[dict[str, object]]:
    """Labelled news-like rows: each class has its own vocabulary."""
    rows = []
    for i in range(per_class):
        for label, sentence in TOPICS.items():
            words = sentence.split()
            rotated = " ".join(words[i % len(words) :] + words[: i % len(words)])
            rows.append({"label": label, "title": f"{label} news {i}", "body": rotated})
    return rows


@pytest.fixture
def news_csv(tmp_path: Path) -> Path:
    path = tmp_path / "news.csv"
    pd.DataFrame(corpus_rows()).to_csv(path, index=False)
    return path


def text_config(path: Path | str, **text: object) -> object:
    sizes = {"vocab_size": 300, "max_length": 24, "dim": 16, "layers": 1, "heads": 2}
    return build_config(
        {
            "data": {"path": str(path), "modality": "text"},
            "model": {"backbone": "transformer", "head": "v2", "head_out_dim": 8},
            "text": {**sizes, **text},
        }
    )


def open_both(path: Path, **text: object) -> tuple[TextItems, TextItems, dict]:
    modality = modality_for(text_config(path, **text))
    train, fitted = modality.open(str(path), split="train")
    test, _ = modality.with_fitted(fitted).open(str(path), split="test")
    assert isinstance(train, TextItems) and isinstance(test, TextItems)
    return train, test, fitted


# ---------------------------------------------------------------- reading


def test_csv_is_split_into_disjoint_parts_with_shared_classes(news_csv):
    train, test, fitted = open_both(news_csv)
    assert len(train) + len(test) == 36 and len(test) == round(0.2 * 36)
    assert not set(train.names) & set(test.names)
    assert train.classes == test.classes == ["money", "space", "sport"] == fitted["classes"]
    json.dumps(fitted)  # primitives only: it goes into checkpoints
    # Text = every string column but the label, joined with ". "; label from "label".
    row = pd.read_csv(news_csv).iloc[int(train.names[0].split(":")[1]) - 1]
    assert train.texts[0] == f"{row.title}. {row.body}"
    assert train.classes[int(train.labels[0])] == row.label
    assert train.inputs.dtype == torch.long and train.inputs.shape == (len(train), 24)


def test_split_is_reproducible(news_csv):
    first, _, _ = open_both(news_csv)
    again, _, _ = open_both(news_csv)
    assert first.names == again.names and torch.equal(first.inputs, again.inputs)


def test_columns_can_be_chosen(news_csv):
    train, _, _ = open_both(news_csv, text_columns=["body"], label_column="title")
    assert all(text in {r["body"] for r in corpus_rows()} for text in train.texts)
    assert len(train.classes) == 36  # every title is its own class here


def test_folder_with_train_and_test_files(tmp_path):
    rows = corpus_rows()
    folder = tmp_path / "corpus"
    folder.mkdir()
    with gzip.open(folder / "train.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:30])
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[30:]))
    train, test, _ = open_both(folder)
    assert (len(train), len(test)) == (30, 6)
    assert train.names[0] == "train.jsonl.gz:1" and test.names[0] == "test.jsonl:1"
    assert test.classes == train.classes


def test_test_label_unknown_to_training_is_an_error(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rows = corpus_rows()
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    pd.DataFrame([{**rows[0], "label": "weather"}]).to_csv(folder / "test.csv", index=False)
    modality = modality_for(text_config(folder))
    _, fitted = modality.open(str(folder), split="train")
    modality = modality.with_fitted(fitted)
    with pytest.raises(UserError, match="'weather' is not a training class"):
        modality.open(str(folder), split="test")


def test_plain_text_is_one_unlabelled_item_per_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(list(TOPICS.values()) * 4) + "\n\n  \n")
    corpus = read_corpus(path, TextConfig())
    assert corpus.labels is None and len(corpus.texts) == 12
    train, test, fitted = open_both(path)
    assert not train.has_labels and bool((train.labels == -1).all()) and fitted["classes"] == []


def test_bad_jsonl_lines_are_skipped_with_one_warning_each(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    good = [json.dumps(r) for r in corpus_rows(2)]
    path.write_text("\n".join([good[0], "{not json", "[1, 2]", *good[1:], '{"label": "x"}']))
    with caplog.at_level(logging.WARNING, logger="simclr"):
        corpus = read_corpus(path, TextConfig())
    assert len(corpus.texts) == len(good)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "line 2: not JSON" in messages[0] and "line 3: not a JSON object" in messages[1]
    assert "no text" in messages[2]


def test_bad_csv_rows_and_missing_labels_are_skipped(tmp_path, caplog):
    path = tmp_path / "rows.csv"
    path.write_text(
        "label,text\na,first text\nb,second,with,extra,fields\n,no label here\nb,last text\n"
    )
    with caplog.at_level(logging.WARNING, logger="simclr"):
        corpus = read_corpus(path, TextConfig())
    assert corpus.texts == ["first text", "last text"] and corpus.labels == ["a", "b"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "Skipping line 3: expected 2 fields, saw 5" in messages[0]
    assert "rows.csv:2: no value in label column 'label'" in messages[1]


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("empty.csv", "", "empty file"),
        ("header.csv", "label,text\n", "no rows"),
        ("numbers.csv", "label,x\n1,2\n", "no column of strings"),
        ("quote.csv", 'label,text\na,"never closed\n', "malformed CSV"),
        ("blank.txt", "\n  \n", "every line is empty"),
        ("junk.jsonl", "nothing\n", "no JSON records"),
        ("latin.txt", b"caf\xe9\n", "not UTF-8"),
        ("fake.csv.gz", "not gzip", "cannot read"),
    ],
)
def test_malformed_files_are_user_errors(tmp_path, name, content, words):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(UserError, match=words):
        read_corpus(path, TextConfig())


def test_missing_named_column_and_bad_paths(news_csv, tmp_path):
    with pytest.raises(UserError, match="no label column 'topic'"):
        read_corpus(news_csv, TextConfig(label_column="topic"))
    with pytest.raises(UserError, match="no column 'summary'"):
        read_corpus(news_csv, TextConfig(text_columns=("summary",)))
    with pytest.raises(UserError, match="no such file"):
        split_file(str(tmp_path / "missing.csv"), "train")
    (tmp_path / "notes.md").write_text("words")
    with pytest.raises(UserError, match="not a text corpus"):
        split_file(str(tmp_path / "notes.md"), "train")
    with pytest.raises(UserError, match=r"exactly one test"):
        split_file(str(tmp_path), "test")


def test_too_few_texts_to_split(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a single line of text\n")
    with pytest.raises(UserError, match="too few"):
        modality_for(text_config(path)).open(str(path), split="train")


# ---------------------------------------------------------------- detection


def test_detection(tmp_path, news_csv):
    assert TextModality.detect(str(news_csv)) and detect_modality(str(news_csv)) == "text"
    table = tmp_path / "table.csv"
    pd.DataFrame({"label": ["a", "b"], "x": [1.0, 2.0], "c": ["u", "v"]}).to_csv(table)
    assert not TextModality.detect(str(table))
    words, numbers = tmp_path / "words.txt", tmp_path / "series.txt"
    words.write_text("some words here\n")
    numbers.write_text("1 0.5 0.25\n2, 0.1, -3e-2\n")
    assert TextModality.detect(str(words)) and not TextModality.detect(str(numbers))
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "hello"}\n')
    assert TextModality.detect(str(jsonl))
    folder = tmp_path / "folder"
    folder.mkdir()
    assert not TextModality.detect(str(folder))
    (folder / "train.jsonl").write_text('{"text": "hello"}\n')
    assert TextModality.detect(str(folder))
    assert not TextModality.detect(str(tmp_path / "nothing.jsonl"))
    # no other modality claims them
    for spec in (news_csv, words, jsonl, folder):
        assert detect_modality(str(spec)) == "text"


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_roundtrip_padding_and_truncation(news_csv):
    train, _, fitted = open_both(news_csv, lowercase=False)
    tokenizer = load_tokenizer(fitted["tokenizer"])
    assert tokenizer.token_to_id("<pad>") == PAD_ID == 0
    assert 257 <= tokenizer.get_vocab_size() <= 300
    ids, lengths = encode(tokenizer, ["a b", train.texts[0], "x " * 100], 24)
    assert ids.dtype == torch.long and ids.shape == (3, 24)
    assert lengths[2] == 24 and 0 < lengths[0] < lengths[1]
    valid = torch.arange(24) < lengths[:, None]
    assert bool((ids[~valid] == PAD_ID).all()) and bool((ids[valid] != PAD_ID).all())
    assert decode(tokenizer, ids[:1]) == ["a b"]
    assert decode(tokenizer, encode(tokenizer, [train.texts[0]], 200)[0]) == [train.texts[0]]
    # Bytes never seen in training still encode (byte-level), and decode exactly.
    assert decode(tokenizer, encode(tokenizer, ["naïve ☃"], 24)[0]) == ["naïve ☃"]


def test_lowercase_option(news_csv):
    _, _, fitted = open_both(news_csv)
    tokenizer = load_tokenizer(fitted["tokenizer"])
    assert decode(tokenizer, encode(tokenizer, ["Sport NEWS"], 8)[0]) == ["sport news"]


# ---------------------------------------------------------------- views


def sequences(lengths: list[int], width: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct token ids 1..n per row (so positions can be traced), zero-padded."""
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.arange(1, n + 1)
    return ids, torch.tensor(lengths)


VIEW_CFG = TextConfig(word_dropout=0.2, span_deletion=0.25, shuffle_window=2)


def test_views_shape_dtype_device_and_no_empty_view():
    ids, lengths = sequences([20, 1, 2, 7, 13] * 20)
    first, second = TokenViews(VIEW_CFG, seed=0)(ids, lengths)
    for view in (first, second):
        assert view.shape == ids.shape and view.dtype == torch.long and view.device == ids.device
        n = (view != PAD_ID).sum(1)
        assert bool((n >= 1).all()) and bool((n <= lengths).all())
        # packed to the left: nothing after the first pad
        assert bool((view[:, 1:][view[:, :-1] == PAD_ID] == PAD_ID).all())


def test_parameter_ranges():
    lengths = torch.tensor([20, 7, 1, 3] * 500)
    params = sample_token_view_params(lengths, 20, VIEW_CFG, torch.Generator().manual_seed(0))
    assert bool((params.span_length <= torch.floor(lengths * 0.25)).all())
    assert bool((params.span_start >= 0).all())
    assert bool((params.span_start + params.span_length <= lengths).all())
    assert set(params.span_length[lengths == 20].tolist()) == {0, 1, 2, 3, 4, 5}
    assert float(params.survives.float().mean()) == pytest.approx(0.8, abs=0.01)
    assert float(params.jitter.min()) >= 0 and float(params.jitter.max()) < 3
    assert float(params.jitter.max()) > 2.9


def test_each_op_alone():
    ids, lengths = sequences([20] * 200)
    generator = torch.Generator().manual_seed(1)

    def run(cfg: TextConfig) -> tuple[torch.Tensor, torch.Tensor, object]:
        params = sample_token_view_params(lengths, 20, cfg, generator)
        views, n = apply_token_views(ids, lengths, params)
        return views, n, params

    nothing = TextConfig(word_dropout=0.0, span_deletion=0.0, shuffle_window=0)
    views, n, _ = run(nothing)
    assert torch.equal(views, ids) and torch.equal(n, lengths)

    # token dropout only: kept tokens stay in order, exactly the surviving ones
    views, n, params = run(replace(nothing, word_dropout=0.3))
    for row in range(5):
        kept = ids[row][params.survives[row]]
        assert torch.equal(views[row, : len(kept)], kept) or len(kept) == 0

    # span deletion only: one contiguous span of the drawn length is gone
    views, n, params = run(replace(nothing, span_deletion=0.5))
    for row in range(20):
        start, length = int(params.span_start[row]), int(params.span_length[row])
        expected = torch.cat([ids[row, :start], ids[row, start + length : 20]])
        assert torch.equal(views[row, : 20 - length], expected) and n[row] == 20 - length

    # shuffle only: a permutation where no token moves further than the window
    views, n, _ = run(replace(nothing, shuffle_window=3))
    assert torch.equal(views.sort(1).values, ids)
    moved = (views - 1 - torch.arange(20)).abs()
    assert int(moved.max()) == 3 and not torch.equal(views, ids)


def test_batched_equals_one_at_a_time():
    ids, lengths = sequences([20, 3, 1, 11, 16, 8])
    params = sample_token_view_params(lengths, 20, VIEW_CFG, torch.Generator().manual_seed(5))
    batched, batched_n = apply_token_views(ids, lengths, params)
    for row in range(len(ids)):
        single, single_n = apply_token_views(
            ids[row : row + 1], lengths[row : row + 1], params.row(row)
        )
        assert torch.equal(single[0], batched[row]) and single_n[0] == batched_n[row]


def test_view_keeps_a_token_when_everything_is_dropped():
    ids, lengths = sequences([5, 1, 4])
    params = sample_token_view_params(lengths, 20, VIEW_CFG, torch.Generator().manual_seed(0))
    params = replace(params, survives=torch.zeros_like(params.survives))
    views, n = apply_token_views(ids, lengths, params)
    assert n.tolist() == [1, 1, 1]
    for row in range(3):  # the first token outside the deleted span
        start, length = int(params.span_start[row]), int(params.span_length[row])
        assert int(views[row, 0]) == (1 if start > 0 else length + 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_views_and_encoder_stay_on_the_gpu():
    ids, lengths = sequences([20, 3, 1, 11])
    first, second = TokenViews(VIEW_CFG, seed=0)(ids.cuda(), lengths.cuda())
    assert first.device.type == "cuda" and first.dtype == torch.long
    assert bool(((first != PAD_ID).sum(1) >= 1).all())
    encoder = TextTransformer(50, 20, dim=16, layers=1, heads=2).cuda().eval()
    assert encoder(first).device.type == "cuda"


# ---------------------------------------------------------------- encoder


def test_encoder_shapes_and_padding_invariance():
    torch.manual_seed(0)
    encoder = TextTransformer(50, 24, dim=16, layers=2, heads=2, dropout=0.1).eval()
    ids, lengths = sequences([3, 16, 7, 1], width=16)
    with torch.no_grad():
        batch = encoder(ids)
        assert batch.shape == (4, 16) and bool(torch.isfinite(batch).all())
        for row, n in enumerate(lengths.tolist()):
            alone = encoder(ids[row : row + 1, :n])  # no padding at all
            assert torch.allclose(alone[0], batch[row], atol=1e-5)
        # more padding changes nothing
        wider = torch.cat([ids, torch.zeros(4, 8, dtype=torch.long)], dim=1)
        assert torch.allclose(encoder(wider), batch, atol=1e-6)
        assert bool(torch.isfinite(encoder(torch.zeros(2, 16, dtype=torch.long))).all())
    with pytest.raises(ValueError, match="at most 24"):
        encoder(torch.ones(1, 25, dtype=torch.long))


def test_encoder_dropout_differs_between_rows_in_train_mode():
    torch.manual_seed(0)
    encoder = TextTransformer(50, 16, dim=16, layers=1, heads=2, dropout=0.3).train()
    ids, _ = sequences([10, 10], width=16)
    out = encoder(ids)
    assert not torch.allclose(out[0], out[1])  # same text, different dropout noise
    out.sum().backward()
    assert encoder.tokens.weight.grad is not None


def test_build_model_views_and_model_input(news_csv):
    train, fitted = modality_for(text_config(news_csv)).open(str(news_csv), split="train")
    modality = modality_for(text_config(news_csv), fitted)
    model = modality.build_model()
    batch, _, _ = next(modality.eval_batches(train, batch_size=8))
    x = modality.model_input(batch, "cpu")
    assert torch.equal(x, train.inputs[:8])
    assert model.backbone(x).shape == (8, 16)
    v1, v2 = modality.views(0)(*batch)
    assert model(torch.cat([v1, v2])).shape == (16, 8)
    # the embedding covers the fitted vocabulary, which may be smaller than text.vocab_size
    assert (
        model.backbone.tokens.num_embeddings == load_tokenizer(fitted["tokenizer"]).get_vocab_size()
    )


def test_view_listing(news_csv, tmp_path):
    modality = modality_for(text_config(news_csv))
    train, _ = modality.open(str(news_csv), split="train")
    path = modality.draw_views(train, tmp_path / "out" / "views.png", num_items=3, seed=0)
    assert path == tmp_path / "out" / "views.txt"
    text = path.read_text()
    assert text.count("view 1 (") == 3 and text.count("view 2 (") == 3
    assert train.texts[0] in text and train.names[2] in text


# ---------------------------------------------------------------- command line

TINY = [
    "--set",
    "text.vocab_size=300",
    "--set",
    "text.max_length=16",
    "--set",
    "text.dim=16",
    "--set",
    "text.layers=1",
    "--set",
    "text.heads=2",
    "--set",
    "train.progress=false",
]


def test_cli_pretrain_then_knn_linear_and_views(news_csv, tmp_path, capsys):
    from simclr.cli import main

    run = tmp_path / "run"
    argv = ["pretrain", "--data", str(news_csv), "--out", str(run), "--max-steps", "3"]
    assert main([*argv, "--batch-size", "8", "--device", "cpu", *TINY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    data = ["--train-data", str(news_csv), "--test-data", str(news_csv)]
    assert main(["knn", str(run), *data]) == 0
    knn = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= knn["top1"] <= 100 and knn["protocol"]["num_test"] == round(0.2 * 36)
    assert main(["linear", str(run), *data]) == 0
    assert "top1" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["views", "--data", str(news_csv), "--out", str(tmp_path / "v.png"), *TINY]) == 0
    assert (tmp_path / "v.txt").read_text().count("view 2 (") == 8


def test_cli_bad_text_input_exits_2(tmp_path, capsys):
    from simclr.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    argv = ["pretrain", "--data", str(empty), "--out", str(tmp_path / "r"), "--max-steps", "1"]
    assert main([*argv, "--device", "cpu", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("simclr: error:") and "no JSON records" in err[-1]
