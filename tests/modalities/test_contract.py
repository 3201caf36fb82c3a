"""The contract every registered modality keeps, checked on a tiny dataset of each.

The test runs for every name in :func:`simclr.modalities.modality_names` (and the toy modality
of ``toy.py``, registered from outside the package); a modality registered without a maker in
:data:`MAKERS` fails with a message saying so.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from simclr.config import Config, build_config, recipe_overrides
from simclr.data.items import Items
from simclr.data.loading import epoch_batches
from simclr.errors import UserError
from simclr.losses import NTXentLoss, nt_xent
from simclr.micro_batch import micro_batch_step
from simclr.modalities import detect_modality, modality_for, modality_names, modality_type
from simclr.modalities.base import Fitted, Modality
from simclr.models.simclr import SimCLR
from tests.conftest import write_image_folder
from tests.modalities.conftest import registered_toy
from tests.modalities.test_audio import write_clips
from tests.modalities.test_tabular import mixed_frame
from tests.modalities.test_text import corpus_rows
from tests.modalities.test_timeseries import write_waves
from tests.modalities.toy import write_toy
from tests.test_micro_batch import TEMPERATURE, ghost_reference

BATCH = 4

Maker = Callable[[Path], tuple[Config, str]]


def image_data(folder: Path) -> tuple[Config, str]:
    spec = str(write_image_folder(folder / "images", classes=2, per_class=5, size=16))
    cfg = build_config(
        recipe_overrides("cpu-small"),
        {"data": {"path": spec, "num_workers": 0}, "augment": {"size": 16}},
        {"model": {"width": 0.125}},
    )
    return cfg, spec


def audio_data(folder: Path) -> tuple[Config, str]:
    spec = str(write_clips(folder / "clips", per_class=4))
    cfg = build_config(
        recipe_overrides("audio-small"),
        {"data": {"path": spec}, "model": {"width": 0.125}},
        {"audio": {"sample_rate": 8000, "crop_seconds": 0.25, "n_mels": 16}},
    )
    return cfg, spec


def timeseries_data(folder: Path) -> tuple[Config, str]:
    spec = str(write_waves(folder / "waves.npz", n=20))
    cfg = build_config(
        recipe_overrides("timeseries-small"), {"data": {"path": spec}, "model": {"width": 0.125}}
    )
    return cfg, spec


def text_data(folder: Path) -> tuple[Config, str]:
    spec = folder / "news.csv"
    pd.DataFrame(corpus_rows(per_class=5)).to_csv(spec, index=False)
    sizes = {"vocab_size": 300, "max_length": 24, "dim": 16, "layers": 1, "heads": 2}
    cfg = build_config(recipe_overrides("text-small"), {"data": {"path": str(spec)}, "text": sizes})
    return cfg, str(spec)


def tabular_data(folder: Path) -> tuple[Config, str]:
    spec = folder / "table.csv"
    mixed_frame(30).to_csv(spec, index=False)
    cfg = build_config(
        recipe_overrides("tabular-small"),
        {"data": {"path": str(spec)}, "tabular": {"hidden_dim": 16, "layers": 2}},
    )
    return cfg, str(spec)


def toy_data(folder: Path) -> tuple[Config, str]:
    spec = str(write_toy(folder / "vectors.toy.npz", n=20))
    return build_config(recipe_overrides("toy-small"), {"data": {"path": spec}}), spec


MAKERS: dict[str, Maker] = {
    "image": image_data,
    "audio": audio_data,
    "timeseries": timeseries_data,
    "text": text_data,
    "tabular": tabular_data,
    "toy": toy_data,
}
"""A tiny labelled dataset (at least 8 training items, 2 classes) and its config, by modality."""

NAMES = tuple(dict.fromkeys((*modality_names(), "toy")))


@dataclass
class Opened:
    """One modality and its tiny dataset, opened once for the tests of this module."""

    name: str
    cfg: Config
    spec: str
    unfitted: Modality
    train: Items
    fitted: Fitted
    modality: Modality
    """Bound to ``fitted``."""
    test: Items
    test_fitted: Fitted


@pytest.fixture(scope="module", params=NAMES)
def opened(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    name = request.param
    if name not in MAKERS:
        pytest.fail(
            f"modality {name!r} is registered but tests/modalities/test_contract.py has no "
            "maker of a tiny dataset for it in MAKERS"
        )
    toy = registered_toy() if name == "toy" else contextlib.nullcontext()
    with toy:
        cfg, spec = MAKERS[name](tmp_path_factory.mktemp(name))
        unfitted = modality_for(cfg)
        train, fitted = unfitted.open(spec, split="train")
        modality = unfitted.with_fitted(fitted)
        test, test_fitted = modality.open(spec, split="test")
        yield Opened(name, cfg, spec, unfitted, train, fitted, modality, test, test_fitted)


def first_train_batch(c: Opened, seed: int = 0) -> tuple[torch.Tensor, ...]:
    (batch, skipped), *_ = c.modality.train_batches(c.train, batch_size=BATCH, seed=seed, epoch=0)
    assert skipped == 0
    return batch


def test_the_modality_detects_its_data(opened: Opened) -> None:
    assert modality_type(opened.name).detect(opened.spec)
    assert detect_modality(opened.spec) == opened.name


def test_open_returns_items_and_json_fitted_without_side_effects(opened: Opened) -> None:
    assert isinstance(opened.train, Items) and len(opened.train) >= 2 * BATCH
    assert opened.train.has_labels
    assert json.loads(json.dumps(opened.fitted)) == opened.fitted  # primitives only
    assert opened.unfitted.fitted is None  # opening fits nothing into the modality
    again, fitted = opened.unfitted.open(opened.spec, split="train")
    assert fitted == opened.fitted and again.names == opened.train.names


def test_the_fitted_modality_opens_the_test_split_with_the_same_classes(opened: Opened) -> None:
    m = opened.modality
    assert type(m) is type(opened.unfitted) and m.cfg is opened.unfitted.cfg
    assert m.fitted == opened.fitted
    assert opened.test_fitted == opened.fitted  # applied, not fitted again
    assert len(opened.test) > 0 and opened.test.classes == opened.train.classes
    rebuilt = modality_for(opened.cfg, opened.fitted)
    assert type(rebuilt) is type(m) and rebuilt.fitted == opened.fitted


def test_build_model_needs_the_fitted_preprocessing_only_where_there_is_one(
    opened: Opened,
) -> None:
    if opened.unfitted.fits_preprocessing:
        with pytest.raises(RuntimeError, match=r"modality_for\(cfg, fitted\)"):
            opened.unfitted.build_model()
    else:
        assert isinstance(opened.unfitted.build_model(), SimCLR)
        assert isinstance(opened.unfitted.with_fitted({}).build_model(), SimCLR)


def test_the_encoder_embeds_the_evaluation_input(opened: Opened) -> None:
    m = opened.modality
    torch.manual_seed(0)
    model = m.build_model().eval()
    assert isinstance(model, SimCLR)
    batch, labels, index = next(m.eval_batches(opened.test, batch_size=BATCH))
    with torch.no_grad():
        h = model.forward_features(m.model_input(batch, "cpu"))
    assert h.shape == (len(index), model.feature_dim) and torch.isfinite(h).all()
    assert isinstance(m.preprocessing(), str) and m.preprocessing()


def test_views_follow_the_seed(opened: Opened) -> None:
    m = opened.modality
    batch = first_train_batch(opened)
    v1, v2 = m.views(1)(*batch)
    assert v1.shape == v2.shape and v1.shape[0] == batch[0].shape[0] == BATCH
    assert v1.dtype == v2.dtype and not torch.equal(v1, v2)  # two independent draws
    w1, w2 = m.views(1)(*batch)
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert not torch.equal(m.views(2)(*batch)[0], v1)
    views = m.views(5)
    views(*batch)
    views.manual_seed(1)  # restarts the stream
    assert torch.equal(views(*batch)[0], v1)


def test_batches_cover_the_data_in_order(opened: Opened) -> None:
    m, train = opened.modality, opened.train
    index = torch.cat([i for _, _, i in m.eval_batches(train, batch_size=BATCH)])
    assert torch.equal(index, torch.arange(len(train)))
    labels = torch.cat([y for _, y, _ in m.eval_batches(train, batch_size=BATCH)])
    assert torch.equal(labels, train.labels)
    shards = [m.eval_batches(train, batch_size=BATCH, shard=(part, 2)) for part in (0, 1)]
    shared = torch.cat([i for shard in shards for _, _, i in shard])
    assert sorted(shared.tolist()) == list(range(len(train)))
    batches = list(m.train_batches(train, batch_size=BATCH, seed=3, epoch=1))
    assert len(batches) == len(epoch_batches(len(train), BATCH, seed=3, epoch=1))
    assert all(batch[0].shape[0] == BATCH and skipped == 0 for batch, skipped in batches)
    resumed = list(m.train_batches(train, batch_size=BATCH, seed=3, epoch=1, start=1))
    assert len(resumed) == len(batches) - 1
    assert all(torch.equal(a, b) for a, b in zip(resumed[0][0], batches[1][0], strict=True))


def test_one_optimisation_step_on_the_views(opened: Opened) -> None:
    m = opened.modality
    torch.manual_seed(0)
    model = m.build_model().train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    v1, v2 = m.views(0)(*first_train_batch(opened))
    z1, z2 = model(torch.cat([v1, v2])).chunk(2)
    loss = nt_xent(z1, z2, opened.cfg.train.temperature, gather=False)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert any(changed)


def test_a_micro_batched_step_equals_its_ghost_batches_in_one_graph(opened: Opened) -> None:
    # shape-agnostic: each modality's views (4-D spectrograms, 3-D series, token ids, rows);
    # float64, since batch norm of 2 rows leaves gradients that are mostly float32 rounding
    m = opened.modality
    torch.manual_seed(0)
    model = m.build_model().double().train()
    reference = copy.deepcopy(model)
    v1, v2 = (
        v.double() if v.is_floating_point() else v for v in m.views(0)(*first_train_batch(opened))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    torch.manual_seed(1)  # the same dropout masks in both
    loss, _ = micro_batch_step(
        model, v1, v2, NTXentLoss(TEMPERATURE), optimizer, scaler, micro_batch_size=BATCH // 2
    )
    torch.manual_seed(1)
    expected_loss, expected = ghost_reference(reference, v1, v2, BATCH // 2)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-10, msg=name)


def test_draw_views_writes_a_file(opened: Opened, tmp_path: Path) -> None:
    out = opened.modality.draw_views(opened.train, tmp_path / "views.png", num_items=2, seed=0)
    assert out.is_file() and out.stat().st_size > 0


def test_a_wrong_backbone_is_refused(opened: Opened) -> None:
    if not modality_type(opened.name).backbones:
        pytest.skip(f"{opened.name} names no backbones")
    cfg = build_config(_plain(opened.cfg), {"model": {"backbone": "no-such-net"}})
    refused = rf"'no-such-net' is not a {opened.name} encoder|unknown backbone 'no-such-net'"
    with pytest.raises(UserError, match=refused):
        modality_for(cfg, opened.fitted).build_model()


def _plain(cfg: Config) -> dict[str, Any]:
    from simclr.config import to_dict

    return to_dict(cfg)
