"""The audio modality: reader, log-mel spectrogram, batched views, encoder, detection and CLI."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from simclr.config import AudioConfig, Config, build_config
from simclr.data.items import TensorItems
from simclr.errors import UserError
from simclr.modalities import detect_modality, modality_for
from simclr.modalities.audio import AudioModality
from simclr.modalities.audio.encoder import AudioCNN
from simclr.modalities.audio.reading import read_audio_folder
from simclr.modalities.audio.spectrogram import POWER_FLOOR, LogMel
from simclr.modalities.audio.views import (
    AudioViews,
    add_noise,
    apply_gain,
    apply_view,
    band_mask,
    centre_start,
    circular_shift,
    crop,
    crop_samples,
    evaluation_input,
    mask_spectrogram,
)

RATE = 8000
CFG = AudioConfig(sample_rate=RATE, crop_seconds=0.25, n_mels=16, window_ms=25.0, hop_ms=10.0)
SIZE = crop_samples(CFG)  # 2000 samples
IDENTITY = replace(
    CFG, gain_db=(0.0, 0.0), noise_p=0.0, shift_fraction=0.0, time_masks=0, freq_masks=0
)


def tone(seconds: float, freq: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A sine with a little noise, float32."""
    t = np.arange(round(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.01
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_clips(root: Path, per_class: int = 3) -> Path:
    """Classes ``high`` and ``low`` of tones of different lengths (0.1 s to 0.4 s) at 8 kHz."""
    for name, freq in (("low", 300.0), ("high", 1500.0)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            sf.write(root / name / f"{i}.wav", tone(0.1 + 0.15 * i, freq, seed=i), RATE)
    return root


def config(path: str | Path = "unused", **audio: object) -> Config:
    return build_config(
        {
            "data": {"modality": "audio", "path": str(path)},
            "model": {"backbone": "audio-cnn", "width": 0.125, "head": "v2"},
            "audio": {"sample_rate": RATE, "crop_seconds": 0.25, "n_mels": 16, **audio},
        }
    )


def padded(lengths: tuple[int, ...] = (2600, 900, 2000, 3100), seed: int = 0):
    """Random waveforms zero-padded to the longest, with their lengths."""
    g = torch.Generator().manual_seed(seed)
    waves = torch.randn(len(lengths), max(lengths), generator=g) * 0.1
    for i, n in enumerate(lengths):
        waves[i, n:] = 0
    return waves, torch.tensor(lengths)


# reading ------------------------------------------------------------------------------------


def test_reader_labels_lengths_and_padding(tmp_path: Path) -> None:
    items = read_audio_folder(
        str(write_clips(tmp_path)), split="train", sample_rate=RATE, max_seconds=30
    )
    assert items.classes == ["high", "low"]
    assert items.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert items.lengths.tolist() == [800, 2000, 3200] * 2
    assert items.inputs.shape == (6, 3200) and items.inputs.dtype == torch.float32
    expected, _ = sf.read(tmp_path / "low" / "1.wav", dtype="float32")
    torch.testing.assert_close(items.inputs[4, :2000], torch.from_numpy(expected))
    assert not items.inputs[4, 2000:].any()  # zero after the clip's end
    assert items.names[0].endswith("high/0.wav")


def test_reader_mixes_to_mono_and_resamples(tmp_path: Path) -> None:
    left, right = tone(0.3, 440, rate=16000), tone(0.3, 880, rate=16000, seed=1)
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "stereo.flac", np.stack([left, right], axis=1), 16000)
    items = read_audio_folder(str(tmp_path), split="train", sample_rate=RATE, max_seconds=30)
    # the FLAC is stored at 16 bits: compare with what soundfile decodes
    decoded, _ = sf.read(tmp_path / "a" / "stereo.flac", dtype="float32")
    expected = resample_poly(decoded.mean(axis=1), 1, 2).astype(np.float32)
    assert items.lengths.tolist() == [2400]
    np.testing.assert_allclose(items.inputs[0].numpy(), expected, atol=1e-6)


def test_reader_cuts_long_files_to_max_seconds(tmp_path: Path) -> None:
    sf.write(tmp_path / "long.wav", tone(1.0, 440), RATE)
    items = read_audio_folder(str(tmp_path), split="train", sample_rate=RATE, max_seconds=0.5)
    assert items.lengths.tolist() == [4000]


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    sf.write(tmp_path / "one.wav", tone(0.2, 440), RATE)
    sf.write(tmp_path / "two.ogg", tone(0.2, 880), RATE)
    items = read_audio_folder(str(tmp_path), split="train", sample_rate=RATE, max_seconds=30)
    assert items.labels.tolist() == [-1, -1] and items.classes == [] and not items.has_labels


def test_train_and_test_subfolders_are_the_splits(tmp_path: Path) -> None:
    write_clips(tmp_path / "train", per_class=3)
    write_clips(tmp_path / "test", per_class=1)
    spec = str(tmp_path)
    train = read_audio_folder(spec, split="train", sample_rate=RATE, max_seconds=30)
    test = read_audio_folder(spec, split="test", sample_rate=RATE, max_seconds=30)
    assert (len(train), len(test)) == (6, 2)
    assert train.classes == test.classes == ["high", "low"]
    with pytest.raises(UserError, match="unknown split"):
        read_audio_folder(spec, split="valid", sample_rate=RATE, max_seconds=30)


def test_unreadable_and_empty_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_clips(tmp_path)
    (tmp_path / "low" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(tmp_path / "high" / "silent.wav", np.zeros(0, dtype=np.float32), RATE)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        items = read_audio_folder(str(tmp_path), split="train", sample_rate=RATE, max_seconds=30)
    assert len(items) == 6
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3  # one per file, then the count
    assert any("broken.wav" in m for m in warned) and any("silent.wav" in m for m in warned)
    assert warned[-1].startswith("skipped 2 unreadable audio file(s) of 8")


def test_missing_empty_or_unreadable_data_is_a_user_error(tmp_path: Path) -> None:
    def read(path: Path) -> TensorItems:
        return read_audio_folder(str(path), split="train", sample_rate=RATE, max_seconds=30)

    with pytest.raises(UserError, match="does not exist"):
        read(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no audio files"):
        read(tmp_path / "empty")
    sf.write(tmp_path / "clip.wav", tone(0.1, 440), RATE)
    with pytest.raises(UserError, match="is a file"):
        read(tmp_path / "clip.wav")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 1 audio files"):
        read(tmp_path / "bad")


def test_detection(tmp_path: Path) -> None:
    audio = write_clips(tmp_path / "audio")
    assert AudioModality.detect(str(audio))
    assert detect_modality(str(audio)) == "audio"
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "table.csv").write_text("a,b\n1,2\n")
    assert not AudioModality.detect(str(tmp_path / "csv"))
    assert not AudioModality.detect(str(tmp_path / "csv" / "table.csv"))
    assert not AudioModality.detect(str(tmp_path / "nowhere"))
    assert not AudioModality.detect("digits")


# the spectrogram ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "n_mels", "window_ms", "hop_ms"),
    [(8000, 40, 25, 10), (16000, 64, 32, 8), (22050, 20, 20, 5)],
)
def test_log_mel_matches_librosa(rate: int, n_mels: int, window_ms: float, hop_ms: float) -> None:
    import librosa

    spec = LogMel(rate, n_mels, window_ms, hop_ms)
    rng = np.random.default_rng(0)
    waves = (rng.standard_normal((2, 3001)) * np.array([[0.1], [0.001]])).astype(np.float32)
    waves[1, 2000:] = 0  # a silent tail reaches the floor
    ours = spec(torch.from_numpy(waves)).numpy()
    assert ours.shape == (2, n_mels, spec.frames(3001)) and ours.dtype == np.float32
    for row, wave in enumerate(waves):
        power = librosa.feature.melspectrogram(
            y=wave,
            sr=rate,
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.win_length,
            window="hann",
            center=True,
            pad_mode="constant",
            n_mels=n_mels,
            power=2.0,
        )
        reference = librosa.power_to_db(power, ref=1.0, amin=POWER_FLOOR, top_db=None)
        np.testing.assert_allclose(ours[row], reference, atol=2e-3, rtol=1e-4)
    assert ours.min() == pytest.approx(-100.0)  # the floor, as librosa's amin


def test_log_mel_refuses_empty_mel_bands() -> None:
    with pytest.raises(UserError, match="n_mels=128 is too many"):
        LogMel(8000, 128, 10, 5)


# view operations ----------------------------------------------------------------------------


def test_crop_takes_the_window_and_pads_with_zeros() -> None:
    waves, lengths = padded((10, 4))
    out = crop(waves, lengths, torch.tensor([3, -2]), 6)
    torch.testing.assert_close(out[0], waves[0, 3:9])
    torch.testing.assert_close(out[1], torch.cat([torch.zeros(2), waves[1, :4]]))
    tail = crop(waves, lengths, torch.tensor([7, 2]), 6)  # past the end: zeros, not padding data
    torch.testing.assert_close(tail[0], torch.cat([waves[0, 7:10], torch.zeros(3)]))
    torch.testing.assert_close(tail[1], torch.cat([waves[1, 2:4], torch.zeros(4)]))


def test_centre_start() -> None:
    assert centre_start(torch.tensor([10, 7, 3]), 5).tolist() == [2, 1, -1]


def test_gain_scales_by_decibels() -> None:
    waves, _ = padded()
    out = apply_gain(waves, torch.tensor([0.0, 20.0, -20.0, 6.0]))
    torch.testing.assert_close(out[:3], waves[:3] * torch.tensor([[1.0], [10.0], [0.1]]))
    torch.testing.assert_close(out[3], waves[3] * 10**0.3)


def test_noise_reaches_the_requested_snr() -> None:
    waves, _ = padded((3000, 3000, 3000))
    waves[2] = 0  # silent: no noise (the SNR is undefined)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(3, 3000, generator=g)
    noise /= noise.pow(2).mean(dim=1, keepdim=True).sqrt()  # unit power exactly
    snr = torch.tensor([10.0, 30.0, 10.0])
    out = add_noise(waves, noise, snr, torch.tensor([True, True, True]))
    added = out - waves
    measured = 10 * torch.log10(waves.pow(2).mean(1)[:2] / added.pow(2).mean(1)[:2])
    torch.testing.assert_close(measured, snr[:2], atol=1e-3, rtol=0)
    assert not added[2].any()
    off = add_noise(waves, noise, snr, torch.tensor([False, True, False]))
    torch.testing.assert_close(off[0], waves[0])


def test_circular_shift_is_roll_per_row() -> None:
    waves, _ = padded((50, 50, 50))
    shifts = torch.tensor([3, -7, 0])
    out = circular_shift(waves, shifts)
    for row, s in enumerate(shifts.tolist()):
        torch.testing.assert_close(out[row], torch.roll(waves[row], s))


def test_spectrogram_masks_fill_bands_with_the_mean() -> None:
    spec = torch.randn(2, 6, 10)
    time_masks = torch.tensor([[[2, 3], [8, 0]], [[0, 0], [0, 0]]])  # row 1: width 0, no mask
    freq_masks = torch.tensor([[[5, 1]], [[0, 0]]])
    out = mask_spectrogram(spec, time_masks, freq_masks)
    masked = torch.zeros(6, 10, dtype=torch.bool)
    masked[:, 2:5] = True
    masked[5, :] = True
    assert (out[0][masked] == spec[0].mean()).all()
    torch.testing.assert_close(out[0][~masked], spec[0][~masked])
    torch.testing.assert_close(out[1], spec[1])
    assert band_mask(time_masks, 10)[0].nonzero().flatten().tolist() == [2, 3, 4]


# the view generator -------------------------------------------------------------------------


def test_views_shape_dtype_and_device() -> None:
    waves, lengths = padded()
    frames = LogMel.from_config(CFG).frames(SIZE)
    for dtype in (torch.float32, torch.float64):
        v1, v2 = AudioViews(CFG, seed=0)(waves.to(dtype), lengths)
        for v in (v1, v2):
            assert v.shape == (4, 1, CFG.n_mels, frames)
            assert v.dtype == dtype and v.device == waves.device
            assert torch.isfinite(v).all()


def test_forward_applies_the_sampled_parameters() -> None:
    waves, lengths = padded()
    v1, v2 = AudioViews(CFG, seed=5)(waves, lengths)
    views = AudioViews(CFG, seed=5)
    both = torch.cat([lengths, lengths])
    params = views.sample_params(both)
    expected = apply_view(torch.cat([waves, waves]), both, params, views.log_mel, SIZE)
    torch.testing.assert_close(torch.cat([v1, v2]), expected)


def test_batched_views_equal_one_clip_at_a_time() -> None:
    waves, lengths = padded()
    views = AudioViews(CFG, seed=7)
    params = views.sample_params(lengths)
    batched = apply_view(waves, lengths, params, views.log_mel, SIZE)
    for i in range(len(waves)):
        one = slice(i, i + 1)
        single = apply_view(waves[one], lengths[one], params.select(one), views.log_mel, SIZE)
        torch.testing.assert_close(batched[one], single, atol=1e-4, rtol=1e-5)


def test_view_parameters_respect_their_ranges() -> None:
    cfg = replace(
        CFG,
        gain_db=(-3.0, 9.0),
        noise_p=0.3,
        noise_snr_db=(10.0, 20.0),
        shift_fraction=0.05,
        time_masks=3,
        time_mask_fraction=0.2,
        freq_masks=2,
        freq_mask_fraction=0.25,
    )
    views = AudioViews(cfg, seed=0)
    lengths = torch.tensor([SIZE - 10, SIZE, SIZE + 10] * 1000)
    p = views.sample_params(lengths)
    # a short clip lands anywhere in the window, a long one is cut anywhere, both ends reached
    assert set(p.start[0::3].tolist()) == set(range(-10, 1))
    assert (p.start[1::3] == 0).all()
    assert set(p.start[2::3].tolist()) == set(range(0, 11))
    assert p.gain_db.min() >= -3 and p.gain_db.max() < 9
    assert p.snr_db.min() >= 10 and p.snr_db.max() < 20
    assert 0.25 < p.noise_on.float().mean() < 0.35
    assert p.shift.abs().max() == int(0.05 * SIZE)
    frames = views.log_mel.frames(SIZE)
    for masks, size, fraction in ((p.time_masks, frames, 0.2), (p.freq_masks, 16, 0.25)):
        first, width = masks[..., 0], masks[..., 1]
        assert width.min() == 0 and width.max() == int(fraction * size)
        assert first.min() >= 0 and (first + width).max() <= size
    assert p.noise.shape == (3000, SIZE)


def test_identity_recipe_gives_the_evaluation_input() -> None:
    waves, lengths = padded((SIZE, SIZE))
    v1, v2 = AudioViews(IDENTITY, seed=0)(waves, lengths)
    expected = evaluation_input(waves, lengths, LogMel.from_config(IDENTITY), SIZE)
    torch.testing.assert_close(v1, expected)
    torch.testing.assert_close(v2, expected)


# evaluation input, encoder and the modality -------------------------------------------------


def test_model_input_centres_every_clip(tmp_path: Path) -> None:
    modality = AudioModality(config(tmp_path))
    waves, lengths = padded((4000, 1000))
    x = modality.model_input((waves, lengths), "cpu")
    spec = LogMel.from_config(CFG)
    assert x.shape == (2, 1, 16, spec.frames(SIZE))
    torch.testing.assert_close(x[0, 0], spec(waves[0:1, 1000:3000])[0])
    centred = torch.cat([torch.zeros(500), waves[1, :1000], torch.zeros(500)])
    torch.testing.assert_close(x[1, 0], spec(centred[None])[0])


def test_encoder_shapes_and_variable_sizes() -> None:
    encoder = AudioCNN(width=0.125)
    assert encoder.feature_dim == 64
    for n_mels, frames in ((16, 26), (40, 101), (4, 3)):
        assert encoder(torch.randn(3, 1, n_mels, frames)).shape == (3, 64)
    assert AudioCNN(width=0.5).feature_dim == 256


def test_encoder_features_are_standardised_over_the_batch() -> None:
    encoder = AudioCNN(width=0.125).train()
    h = encoder(torch.randn(32, 1, 16, 26) * 20 - 50)  # dB-like input
    torch.testing.assert_close(h.mean(dim=0), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(h.var(dim=0, unbiased=False), torch.ones(64), atol=1e-2, rtol=0)


def test_every_encoder_parameter_learns_from_the_views(tmp_path: Path) -> None:
    modality = AudioModality(config(tmp_path))
    model = modality.build_model()
    waves, lengths = padded()
    v1, v2 = modality.views(0)(waves, lengths)
    z = model(torch.cat([v1, v2]))
    assert z.shape == (8, 128)
    z.sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_padded_batches_preprocessing_and_picture(tmp_path: Path) -> None:
    root = write_clips(tmp_path / "data")
    modality = modality_for(config(root))
    items, _ = modality.open(str(root), split="train")
    assert isinstance(items, TensorItems) and len(items) == 6
    (batch, labels, index), *_ = modality.eval_batches(items, batch_size=4)
    assert batch[0].shape == (4, 3200) and labels.tolist() == [0, 0, 0, 1]
    assert "8000 Hz" in modality.preprocessing() and "0.25 s" in modality.preprocessing()
    from PIL import Image

    out = modality.draw_views(items, tmp_path / "views.png", num_items=4, seed=0)
    with Image.open(out) as picture:
        assert picture.size == (1090, 590)  # (1.3 + 3 x 3.2) x (0.7 + 4 x 1.3) inches at 100 dpi


# the command line ---------------------------------------------------------------------------


def test_cli_bad_audio_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simclr.cli import main

    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.wav").write_bytes(b"garbage")
    code = main(
        [
            "pretrain",
            "--data",
            str(tmp_path / "bad"),
            "--modality",
            "audio",
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
        ]
    )
    assert code == 2
    assert "could be read" in capsys.readouterr().err


def test_cli_pretrain_then_knn(tmp_path: Path) -> None:
    from simclr.cli import main

    data = write_clips(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    overrides = [
        "--set",
        "audio.crop_seconds=0.25",
        "--set",
        "model.width=0.125",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.log_every=1",
    ]
    code = main(
        [
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(run),
            "--max-steps",
            "3",
            "--device",
            "cpu",
            *overrides,
        ]
    )
    assert code == 0
    assert main(["knn", str(run), "--train-data", str(data), "--test-data", str(data)]) == 0


# real data ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_fsdd_arrangement_and_mfcc_baseline(tmp_path: Path) -> None:
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    from baseline_audio import FSDD_ARCHIVE, baseline, prepare_fsdd

    if not FSDD_ARCHIVE.exists():
        pytest.skip(f"{FSDD_ARCHIVE} is not here")
    root = prepare_fsdd(FSDD_ARCHIVE, tmp_path / "fsdd")
    cfg = build_config({"data": {"path": str(root)}}, {"audio": {"sample_rate": 8000}})
    modality = modality_for(cfg)
    train, fitted = modality.open(str(root), split="train")
    test, _ = modality.with_fitted(fitted).open(str(root), split="test")
    assert isinstance(train, TensorItems) and isinstance(test, TensorItems)
    assert (len(train), len(test)) == (2700, 300)
    assert train.classes == test.classes == [str(d) for d in range(10)]
    assert not set(map(Path, train.names)) & set(map(Path, test.names))
    accuracies = baseline(train, test, replace(cfg, audio=replace(cfg.audio, n_mels=40)))
    assert accuracies["knn_top1"] > 90 and accuracies["linear_top1"] > 90
