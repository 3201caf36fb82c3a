"""The time-series modality: readers, batched views, the 1-D ResNet, detection and the CLI."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import zscore

from simclr.config import TimeSeriesConfig, build_config
from simclr.errors import UserError
from simclr.modalities import detect_modality, modality_type
from simclr.modalities.timeseries import TimeSeriesModality
from simclr.modalities.timeseries.encoder import ResNet1d
from simclr.modalities.timeseries.reading import shipped_datasets
from simclr.modalities.timeseries.views import (
    Normalization,
    SeriesViews,
    apply_view,
    channel_statistics,
    evaluation_input,
    permute_segments,
    resample,
    sample_view_params,
    smooth_curve,
    standardize,
    warped_grid,
)

CFG = TimeSeriesConfig()
SERIES = Normalization("series")
IDENTITY = replace(
    CFG,
    jitter_sigma=0.0,
    scaling_sigma=0.0,
    magnitude_warp_sigma=0.0,
    time_warp_sigma=0.0,
    crop_scale=(1.0, 1.0),
    permute_p=0.0,
)


def config(path: str | Path = "aeon:GunPoint", **timeseries: object) -> object:
    return build_config(
        {
            "data": {"modality": "timeseries", "path": str(path)},
            "model": {"backbone": "resnet1d", "head": "v2", "width": 0.125},
            "timeseries": timeseries,
        }
    )


def modality(path: str | Path = "aeon:GunPoint", **timeseries: object) -> TimeSeriesModality:
    return TimeSeriesModality(config(path, **timeseries))  # type: ignore[arg-type]


def padded_batch(seed: int = 0, channels: int = 2, lengths: tuple[int, ...] = (30, 17, 9, 30)):
    """Random series zero-padded to the longest, with their lengths."""
    g = torch.Generator().manual_seed(seed)
    t_max = max(lengths)
    x = torch.randn(len(lengths), channels, t_max, generator=g).cumsum(-1)
    for i, n in enumerate(lengths):
        x[i, :, n:] = 0
    return x, torch.tensor(lengths)


def write_ts(path: Path, rows: list[list[list[float]]], labels: list[str]) -> Path:
    """A .ts file of (possibly multivariate, unequal-length) series with class labels."""
    channels = len(rows[0])
    equal = len({len(r[0]) for r in rows}) == 1
    header = [
        "@problemName Tiny",
        "@timeStamps false",
        "@missing false",
        f"@univariate {'true' if channels == 1 else 'false'}",
        f"@dimensions {channels}",
        f"@equalLength {'true' if equal else 'false'}",
        f"@classLabel true {' '.join(sorted(set(labels)))}",
        "@data",
    ]
    lines = [
        ":".join(",".join(f"{v:.6f}" for v in channel) for channel in row) + f":{label}"
        for row, label in zip(rows, labels, strict=True)
    ]
    path.write_text("\n".join(header + lines) + "\n")
    return path


def ts_rows(n: int, channels: int, lengths: list[int], seed: int = 0) -> list[list[list[float]]]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(channels, lengths[i % len(lengths)])).tolist() for i in range(n)]


# ---------------------------------------------------------------- view operations


def test_resample_matches_numpy_interp_on_each_valid_part() -> None:
    x, lengths = padded_batch()
    x[1, :, 17:] = 1e6  # padding is never read
    grid = torch.rand(4, 11, generator=torch.Generator().manual_seed(1))
    out = resample(x, lengths, grid)
    assert out.shape == (4, 2, 11)
    for i, n in enumerate(lengths.tolist()):
        for c in range(2):
            expected = np.interp(grid[i].numpy() * (n - 1), np.arange(n), x[i, c, :n].numpy())
            np.testing.assert_allclose(out[i, c].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_evaluation_input_is_interpolation_then_zscore() -> None:
    x, lengths = padded_batch()
    out = evaluation_input(x, lengths, 25, SERIES)
    for i, n in enumerate(lengths.tolist()):
        for c in range(2):
            stretched = np.interp(np.linspace(0, n - 1, 25), np.arange(n), x[i, c, :n].numpy())
            np.testing.assert_allclose(out[i, c].numpy(), zscore(stretched), atol=1e-4)
    raw = evaluation_input(x, lengths, 30, Normalization("none"))
    torch.testing.assert_close(raw[0], x[0])  # full length, no normalisation: unchanged


def test_standardize_matches_scipy_and_maps_constants_to_zero() -> None:
    x, _ = padded_batch()
    np.testing.assert_allclose(standardize(x).numpy(), zscore(x.numpy(), axis=-1), atol=1e-5)
    assert torch.equal(standardize(torch.full((2, 3, 7), 4.5)), torch.zeros(2, 3, 7))


def test_channel_statistics_cover_only_valid_steps() -> None:
    x, lengths = padded_batch(channels=3)
    x[:, 2] = 5.0  # a constant channel: std 1, so it is only centred
    mean, std = channel_statistics(x, lengths)
    steps = np.concatenate([x[i, :, :n].numpy() for i, n in enumerate(lengths.tolist())], axis=1)
    np.testing.assert_allclose(mean, steps.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(std[:2], steps[:2].std(axis=1), rtol=1e-5)
    assert mean[2] == pytest.approx(5.0) and std[2] == 1.0
    dataset = Normalization("dataset", tuple(mean), tuple(std))
    out = evaluation_input(x, lengths, 30, dataset)
    expected = (x[0] - torch.tensor(mean)[:, None]) / torch.tensor(std)[:, None]
    torch.testing.assert_close(out[0], expected.float(), atol=1e-5, rtol=1e-5)


def test_smooth_curve_passes_through_the_knots() -> None:
    knots = torch.rand(3, 2, 6, generator=torch.Generator().manual_seed(0)) + 0.5
    curve = smooth_curve(knots, 26)  # 25 intervals = 5 knot intervals x 5: knots on steps
    assert curve.shape == (3, 2, 26)
    torch.testing.assert_close(curve[..., ::5], knots)
    torch.testing.assert_close(smooth_curve(torch.full((4, 6), 1.3), 50), torch.full((4, 50), 1.3))


def test_warped_grid_rises_from_window_start_to_window_end() -> None:
    g = torch.Generator().manual_seed(2)
    start, width = torch.rand(5, generator=g) * 0.3, torch.rand(5, generator=g) * 0.5 + 0.2
    knots = (torch.randn(5, 6, generator=g) * 0.4 + 1).clamp_min(0.05)
    grid = warped_grid(start, width, knots, 40)
    torch.testing.assert_close(grid[:, 0], start)
    torch.testing.assert_close(grid[:, -1], start + width)
    assert (grid.diff(dim=1) > 0).all()
    straight = warped_grid(start, width, torch.ones(5, 6), 40)  # no warp: evenly spaced
    expected = start[:, None] + width[:, None] * torch.linspace(0, 1, 40)
    torch.testing.assert_close(straight, expected)


def test_permute_segments_matches_numpy_concatenation() -> None:
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    bounds = torch.tensor([[0, 3, 7, 10, 10], [0, 10, 10, 10, 10]])
    order = torch.tensor([[2, 0, 1, 3], [0, 1, 2, 3]])
    out = permute_segments(x, bounds, order)
    for i in range(2):
        pieces = [x[i, :, bounds[i, j] : bounds[i, j + 1]].numpy() for j in order[i].tolist()]
        np.testing.assert_array_equal(out[i].numpy(), np.concatenate(pieces, axis=1))
    assert torch.equal(out[1], x[1])


def test_sampled_parameters_stay_in_their_ranges() -> None:
    cfg = replace(CFG, crop_scale=(0.3, 0.8), permute_p=0.7, permute_max_segments=4)
    g = torch.Generator().manual_seed(0)
    p = sample_view_params(2000, 3, 50, cfg, g)
    assert ((p.crop_width >= 0.3) & (p.crop_width <= 0.8)).all()
    assert (p.crop_start >= 0).all() and (p.crop_start + p.crop_width <= 1 + 1e-6).all()
    assert p.time_knots.shape == (2000, cfg.warp_knots + 2) and (p.time_knots > 0).all()
    assert p.magnitude_knots.shape == (2000, 3, cfg.warp_knots + 2)
    assert p.scale.shape == (2000, 3) and p.noise.shape == (2000, 3, 50)
    assert abs(float(p.noise.std()) - cfg.jitter_sigma) < 0.002
    assert abs(float(p.scale.std()) - cfg.scaling_sigma) < 0.01
    assert (p.bounds[:, 0] == 0).all() and (p.bounds[:, -1] == 50).all()
    assert (p.bounds.diff(dim=1) >= 0).all()
    segments = (p.bounds.diff(dim=1) > 0).sum(dim=1)
    assert segments.min() == 1 and segments.max() == 4
    assert abs(float((segments > 1).float().mean()) - 0.7) < 0.05  # permute_p
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(2000, -1))
    never = sample_view_params(50, 1, 20, replace(CFG, permute_p=0.0), g)
    assert torch.equal(never.order, torch.arange(CFG.permute_max_segments).expand(50, -1))
    assert ((never.bounds.diff(dim=1) > 0).sum(dim=1) == 1).all()
    short = sample_view_params(10, 1, 3, replace(CFG, permute_p=1.0, permute_max_segments=6), g)
    assert (short.bounds[:, -1] == 3).all() and (short.bounds.diff(dim=1) >= 0).all()


def test_views_are_resampled_to_the_length_in_the_input_dtype() -> None:
    x, lengths = padded_batch()
    views = SeriesViews(CFG, length=24, seed=0)
    v1, v2 = views(x, lengths)
    assert v1.shape == v2.shape == (4, 2, 24)
    assert v1.dtype == v2.dtype == torch.float32 and v1.device == x.device
    d1, d2 = SeriesViews(CFG, length=24, seed=0)(x.double(), lengths)
    assert d1.dtype == torch.float64
    torch.testing.assert_close(d1.float(), v1, atol=1e-4, rtol=1e-4)


def test_batched_views_equal_one_item_at_a_time() -> None:
    x, lengths = padded_batch(channels=3)
    cfg = replace(CFG, permute_p=1.0)
    params = sample_view_params(4, 3, 20, cfg, torch.Generator().manual_seed(0))
    batched = apply_view(x, lengths, params, SERIES)
    for i in range(4):
        alone = apply_view(
            x[i : i + 1, :, : int(lengths[i])],  # without padding
            lengths[i : i + 1],
            params.select(slice(i, i + 1)),
            SERIES,
        )
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_identity_recipe_gives_the_evaluation_input() -> None:
    x, lengths = padded_batch()
    v1, v2 = SeriesViews(IDENTITY, length=24, seed=0)(x, lengths)
    expected = evaluation_input(x, lengths, 24, SERIES)
    torch.testing.assert_close(v1, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v2, expected, atol=1e-5, rtol=1e-5)
    dataset = Normalization("dataset", (1.0, -2.0), (2.0, 0.5))
    v1, _ = SeriesViews(IDENTITY, length=24, normalize=dataset, seed=0)(x, lengths)
    torch.testing.assert_close(v1, evaluation_input(x, lengths, 24, dataset), atol=1e-5, rtol=1e-5)


def test_each_augmentation_changes_the_view_alone() -> None:
    x, lengths = padded_batch()
    base = SeriesViews(IDENTITY, length=24, seed=0)(x, lengths)[0]
    for change in (
        {"jitter_sigma": 0.1},
        {"scaling_sigma": 0.3},
        {"magnitude_warp_sigma": 0.3},
        {"time_warp_sigma": 0.3},
        {"crop_scale": (0.4, 0.6)},
        {"permute_p": 1.0},
    ):
        view = SeriesViews(replace(IDENTITY, **change), length=24, seed=0)(x, lengths)[0]
        assert not torch.allclose(view, base, atol=1e-3), change
    # scaling multiplies each channel of each item by one factor
    scaled = SeriesViews(replace(IDENTITY, scaling_sigma=0.3), length=24, seed=0)(x, lengths)[0]
    ratio = scaled / base
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio), atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_run_on_the_inputs_device() -> None:
    x, lengths = padded_batch()
    v1, _ = SeriesViews(CFG, length=24, seed=0)(x.cuda(), lengths.cuda())
    assert v1.device.type == "cuda" and v1.shape == (4, 2, 24)


# ---------------------------------------------------------------- the encoder


def test_resnet1d_shapes_widths_and_lengths() -> None:
    encoder = ResNet1d(3, width=0.25)
    assert encoder.out_dim == 32
    for length in (1, 7, 64):
        assert encoder(torch.randn(5, 3, length)).shape == (5, 32)
    assert ResNet1d(1).out_dim == 128
    convs = [m for m in ResNet1d(1).modules() if isinstance(m, torch.nn.Conv1d)]
    assert [c.kernel_size[0] for c in convs if c.kernel_size[0] > 1] == [8, 5, 3] * 3
    assert [c.out_channels for c in convs if c.kernel_size[0] == 8] == [64, 128, 128]
    block = ResNet1d(2).blocks[0]
    assert block(torch.randn(2, 2, 13)).shape == (2, 64, 13)  # "same" padding keeps the length


def test_resnet1d_is_length_independent_after_pooling() -> None:
    torch.manual_seed(0)
    encoder = ResNet1d(1, width=0.25).eval()
    x = torch.randn(2, 1, 40)
    h = encoder(x)
    loss = encoder.train()(x).sum()
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert h.shape == (2, 32) and torch.isfinite(h).all()


# ---------------------------------------------------------------- reading


@pytest.fixture(scope="module")
def vowels() -> tuple[TimeSeriesModality, object, object, dict]:
    """JapaneseVowels (12 channels, 7-29 steps) opened once, normalised with its statistics."""
    m = modality("aeon:JapaneseVowels", normalize="dataset")
    train, fitted = m.open("aeon:JapaneseVowels", split="train")
    m = m.with_fitted(fitted)
    test, fitted_again = m.open("aeon:JapaneseVowels", split="test")
    assert fitted == fitted_again
    return m, train, test, fitted


def test_aeon_dataset_with_official_split_and_unequal_lengths(vowels) -> None:
    _, train, test, fitted = vowels
    assert train.inputs.shape == (270, 12, 26) and len(test) == 370
    assert train.inputs.dtype == torch.float32
    assert int(train.lengths.min()) == 7 and int(test.lengths.max()) == 29
    assert (fitted["channels"], fitted["length"], len(fitted["mean"]), len(fitted["std"])) == (
        12,
        26,
        12,
        12,
    )
    json.dumps(fitted)  # primitives only
    assert train.classes == test.classes == [str(c) for c in range(1, 10)]
    shortest = int(train.lengths.argmin())
    assert (train.inputs[shortest, :, 7:] == 0).all()  # zero padding after the valid part
    assert (train.inputs[shortest, :, :7] != 0).any()


def test_unknown_aeon_name_lists_shipped_ones_and_never_downloads(monkeypatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    import aeon.datasets._data_loaders as loaders

    monkeypatch.setattr(loaders, "_download_all_zenodo_files", no_download)
    with pytest.raises(UserError, match="not a classification dataset shipped.*GunPoint"):
        modality().open("aeon:FordA", split="train")
    with pytest.raises(UserError, match="shipped"):  # aeon ships it, but as regression
        modality().open("aeon:Covid3Month", split="train")
    assert {"GunPoint", "JapaneseVowels", "OSULeaf"} <= set(shipped_datasets())
    assert "Covid3Month" not in shipped_datasets()


def test_ts_file_and_folder_of_splits(tmp_path: Path) -> None:
    rows = ts_rows(6, 2, [12, 9, 5])
    path = write_ts(tmp_path / "one.ts", rows, ["a", "b"] * 3)
    items, fitted = modality(path).open(str(path), split="test")  # one file: split ignored
    assert items.inputs.shape == (6, 2, 12) and items.lengths.tolist() == [12, 9, 5] * 2
    assert items.classes == ["a", "b"] and items.labels.tolist() == [0, 1] * 3
    np.testing.assert_allclose(items.inputs[1, :, :9].numpy(), np.array(rows[1]), atol=1e-5)
    assert (fitted["channels"], fitted["length"]) == (2, 12)

    folder = tmp_path / "pair"
    folder.mkdir()
    write_ts(folder / "Tiny_TRAIN.ts", ts_rows(4, 1, [10]), ["1", "2", "1", "2"])
    write_ts(folder / "Tiny_TEST.ts", ts_rows(3, 1, [8], seed=1), ["1", "2", "2"])
    m = modality(folder)
    train, fitted = m.open(str(folder), split="train")
    test, _ = m.with_fitted(fitted).open(str(folder), split="test")
    assert len(train) == 4 and len(test) == 3 and test.inputs.shape[-1] == 8
    (folder / "Tiny_TEST.ts").unlink()
    with pytest.raises(UserError, match="no \\*_TEST.ts"):
        m.open(str(folder), split="test")


def test_malformed_or_missing_inputs_are_user_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ts"
    bad.write_text("@problemName X\n@classLabel true a b\n@data\n1,2,x:a\n")
    header_only = write_ts(tmp_path / "empty.ts", ts_rows(1, 1, [4]), ["a"])
    header_only.write_text(header_only.read_text().split("@data")[0] + "@data\n")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 5), dtype=np.float32))
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 4)))
    np.savez(tmp_path / "lab.npz", series=np.zeros((3, 4)), labels=np.zeros(2))
    np.save(tmp_path / "nan.npy", np.full((3, 5), np.nan))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    cases = {
        "bad.ts": "not a valid .ts file|cannot read",
        "empty.ts": "no readable series|not a valid",
        "cube.npy": "must hold series",
        "text.npy": "series must be numbers",
        "other.npz": "no array named 'series'",
        "lab.npz": "one label per series",
        "nan.npy": "no readable series",
        "junk.npy": "cannot read",
        "missing.npy": "does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            modality().open(str(tmp_path / name), split="train")
    with pytest.raises(UserError, match="unknown split"):
        modality().open("aeon:GunPoint", split="validation")


def test_arrays_split_and_unreadable_series_skipped(tmp_path: Path, caplog) -> None:
    series = np.random.default_rng(0).normal(size=(20, 3, 16)).astype(np.float32)
    series[4, :, 10:] = np.nan  # NaN padding: 10 valid steps
    series[7] = np.nan  # nothing valid: skipped
    series[9, 1, 3] = np.nan  # missing value inside: skipped
    labels = np.array(["up", "down"] * 10)
    np.savez(tmp_path / "s.npz", series=series, labels=labels)
    m = modality(tmp_path / "s.npz")
    with caplog.at_level(logging.WARNING, logger="simclr"):
        train, fitted = m.open(str(tmp_path / "s.npz"), split="train")
        test, _ = m.with_fitted(fitted).open(str(tmp_path / "s.npz"), split="test")
    skipped = [r.getMessage() for r in caplog.records if "skipping series" in r.getMessage()]
    assert len(skipped) == 2 and any("s.npz#7" in s for s in skipped)
    names = set(train.names) | set(test.names)
    assert not set(train.names) & set(test.names)
    assert names == {f"s.npz#{i}" for i in range(20)} - {"s.npz#7", "s.npz#9"}
    assert len(test) in (3, 4)  # test_fraction 0.2 of 20, less a skipped one
    if "s.npz#4" in train.names:
        assert int(train.lengths[train.names.index("s.npz#4")]) == 10
    assert train.classes == ["down", "up"] and (fitted["channels"], fitted["length"]) == (3, 16)

    np.save(tmp_path / "uni.npy", series[:, 0].astype(np.float64))  # [N, T]: one channel
    items, fitted = modality(tmp_path / "uni.npy").open(str(tmp_path / "uni.npy"), split="train")
    assert items.inputs.shape[1] == 1 and not items.has_labels and items.classes == []


def test_fitted_state_length_cap_and_channel_check(tmp_path: Path) -> None:
    m = modality("aeon:GunPoint", max_length=64)
    train, fitted = m.open("aeon:GunPoint", split="train")
    assert (fitted["channels"], fitted["length"]) == (1, 64)
    m = m.with_fitted(fitted)
    assert m.model_input((train.inputs[:5], train.lengths[:5]), "cpu").shape == (5, 1, 64)
    assert (
        modality("aeon:GunPoint", length=40).open("aeon:GunPoint", split="train")[1]["length"] == 40
    )
    assert modality("aeon:GunPoint").open("aeon:GunPoint", split="train")[1]["length"] == 150
    with pytest.raises(UserError, match="has 6 channel\\(s\\) but the model was trained on 1"):
        m.open("aeon:BasicMotions", split="test")
    with pytest.raises(UserError, match="not a time-series one"):
        m.with_fitted({"vocab": "x"}).build_model()


def test_model_views_and_input_fit_together() -> None:
    m = modality("aeon:BasicMotions")
    train, fitted = m.open("aeon:BasicMotions", split="train")
    m = m.with_fitted(fitted)
    model = m.build_model()
    views = m.views(0)
    v1, v2 = views(train.inputs[:8], train.lengths[:8])
    assert v1.shape == (8, 6, 100)
    assert model(torch.cat([v1, v2])).shape == (16, 128)
    batch, labels, index = next(m.eval_batches(train, batch_size=8))
    x = m.model_input(batch, "cpu")
    assert model.eval().backbone(x).shape == (8, 16)  # width 0.125 of 128
    assert "resampled to 100 steps" in m.preprocessing()


def test_dataset_normalization_uses_the_training_statistics(vowels) -> None:
    m, train, test, fitted = vowels
    x = m.model_input((train.inputs, train.lengths), "cpu")
    # resampling keeps roughly the statistics of the training steps
    assert x.mean(dim=(0, 2)).abs().max() < 0.2 and (x.std(dim=(0, 2)) - 1).abs().max() < 0.2
    y = m.model_input((test.inputs[:3], test.lengths[:3]), "cpu")
    raw = evaluation_input(test.inputs[:3], test.lengths[:3], 26, Normalization("none"))
    mean, std = torch.tensor(fitted["mean"]), torch.tensor(fitted["std"])
    expected = (raw - mean[:, None].float()) / std[:, None].float()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert "training set's mean and std" in m.preprocessing()


def test_draw_views_writes_a_png(tmp_path: Path, vowels) -> None:
    m, train, _, _ = vowels
    out = m.draw_views(train, tmp_path / "views.png", num_items=3, seed=0)
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        assert picture.size == (1120, 525)  # (1.6 + 3 x 3.2) x (0.75 + 3 x 1.5) in at 100 dpi


# ---------------------------------------------------------------- detection


def test_detection(tmp_path: Path) -> None:
    detect = modality_type("timeseries").detect
    np.save(tmp_path / "float.npy", np.zeros((4, 10), dtype=np.float32))
    np.save(tmp_path / "images.npy", np.zeros((4, 8, 8, 3), dtype=np.uint8))
    np.savez(tmp_path / "s.npz", series=np.zeros((4, 2, 10)))
    np.savez(tmp_path / "i.npz", images=np.zeros((4, 8, 8, 3), dtype=np.uint8))
    write_ts(tmp_path / "x.ts", ts_rows(2, 1, [5]), ["a", "b"])
    folder = tmp_path / "pair"
    folder.mkdir()
    write_ts(folder / "X_TRAIN.ts", ts_rows(2, 1, [5]), ["a", "b"])
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    assert detect("aeon:GunPoint") and detect(str(folder))
    for name in ("float.npy", "s.npz", "x.ts"):
        assert detect(str(tmp_path / name)), name
    for name in ("images.npy", "i.npz", "table.csv", "missing.npy"):
        assert not detect(str(tmp_path / name)), name
    assert not detect("digits")
    assert detect_modality("aeon:GunPoint") == "timeseries"
    assert detect_modality(str(tmp_path / "s.npz")) == "timeseries"


# ---------------------------------------------------------------- the command line


def write_waves(path: Path, n: int = 32) -> Path:
    """Two classes of noisy 2-channel waves (sines and saw teeth), 20-32 steps (NaN padded)."""
    rng = np.random.default_rng(0)
    series = np.full((n, 2, 32), np.nan, dtype=np.float32)
    labels = []
    for i in range(n):
        length = int(rng.integers(20, 33))
        t = np.linspace(0, 4 * np.pi, length)
        wave = np.sin(t) if i % 2 else (t % np.pi) / np.pi
        series[i, :, :length] = wave + 0.1 * rng.normal(size=(2, length))
        labels.append("sine" if i % 2 else "saw")
    np.savez(path, series=series, labels=np.array(labels))
    return path


def test_cli_bad_series_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simclr.cli import main

    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 5), dtype=np.float32))
    for data, message in (
        ("aeon:NoSuchSet", "not a classification dataset shipped with aeon"),
        (str(tmp_path / "cube.npy"), "must hold series"),
    ):
        args = ["pretrain", "--data", data, "--modality", "timeseries"]
        code = main([*args, "--out", str(tmp_path / "run"), "--max-steps", "1"])
        assert code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_cli_pretrain_knn_linear_and_views(tmp_path: Path, capsys) -> None:
    from simclr.cli import main

    data = str(write_waves(tmp_path / "waves.npz"))
    run = tmp_path / "run"
    overrides = ["model.width=0.125", "train.batch_size=8", "train.log_every=1"]
    sets = [item for text in overrides for item in ("--set", text)]
    code = main(
        ["pretrain", "--data", data, "--out", str(run), "--max-steps", "3", "--device", "cpu"]
        + sets
    )
    assert code == 0  # the modality is detected (a series npz) and timeseries-small applies
    capsys.readouterr()
    assert main(["knn", str(run), "--train-data", data, "--test-data", data]) == 0
    knn = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= knn["top1"] <= 100 and "resampled to 32 steps" in knn["protocol"]["preprocessing"]
    assert main(["linear", str(run), "--train-data", data, "--test-data", data]) == 0
    out = tmp_path / "views.png"
    assert main(["views", "--data", data, "--out", str(out), "--num-images", "2"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_baseline_beats_chance_on_separable_waves(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from baseline_timeseries import baseline

    data = write_waves(tmp_path / "waves.npz", n=60)
    m = modality(data)
    train, fitted = m.open(str(data), split="train")
    test, _ = m.with_fitted(fitted).open(str(data), split="test")
    scores = baseline(train, test, m.cfg)
    assert set(scores) == {"1nn_euclidean_top1", "knn_top1", "linear_top1"}
    assert scores["1nn_euclidean_top1"] >= 90


def test_every_split_of_an_array_numbers_classes_like_the_training_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10 + [2])  # class 2: a single series, which lands in one split
    np.savez(tmp_path / "s.npz", series=rng.normal(size=(21, 12)), labels=labels)
    m = modality(tmp_path / "s.npz")
    train, fitted = m.open(str(tmp_path / "s.npz"), split="train")
    test, _ = m.with_fitted(fitted).open(str(tmp_path / "s.npz"), split="test")
    assert test.classes == train.classes == fitted["classes"]
    assert set(test.labels.tolist()) <= set(range(len(train.classes)))
