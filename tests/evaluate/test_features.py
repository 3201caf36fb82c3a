import os
import subprocess
import sys
import time

import pytest
import torch

from simclr.checkpoint import save_checkpoint
from simclr.config import build_config
from simclr.errors import UserError
from simclr.evaluate.features import dataset_features, extract_features, load_encoder
from simclr.modalities.image import image_modality
from simclr.train import pretrain

from ..test_train import TINY


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from ..conftest import write_image_folder

    root = tmp_path_factory.mktemp("features")
    folder = write_image_folder(root / "images")
    cfg = build_config(TINY, {"data": {"path": str(folder)}, "train": {"max_steps": 2}})
    pretrain(cfg, root / "run")
    return root / "run", folder


def test_load_encoder_trained_and_random(tiny_run):
    run, _ = tiny_run
    trained = load_encoder(run)
    fresh = load_encoder(run, random_init=True)
    assert trained.info["weights"] == "trained" and fresh.info["weights"] == "random init"
    assert trained.info["step"] == 2 and len(trained.info["sha256"]) == 64
    assert not trained.model.training
    differs = [
        not torch.equal(a, b)
        for a, b in zip(
            trained.model.state_dict().values(), fresh.model.state_dict().values(), strict=True
        )
    ]
    assert any(differs)


def test_features_match_a_direct_forward_and_are_cached(tiny_run):
    run, folder = tiny_run
    encoder = load_encoder(run)
    features, dataset, protocol = dataset_features(encoder, str(folder), split="train")
    with torch.no_grad():
        x = dataset.images.float() / 255
        expected = encoder.model.eval().backbone(x)
    torch.testing.assert_close(features.features, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(features.labels, dataset.labels) and protocol["split"] == "train"
    assert protocol["checkpoint_sha256"] == encoder.info["sha256"]
    cached = list((run / "features").iterdir())
    assert len(cached) == 1
    again, _, _ = dataset_features(encoder, str(folder), split="train")
    torch.testing.assert_close(again.features, features.features)
    projection, _, _ = dataset_features(encoder, str(folder), split="train", layer="projection")
    assert projection.features.shape[1] == 128 and len(list((run / "features").iterdir())) == 2


def test_extract_features_restores_training_mode(tiny_run):
    run, folder = tiny_run
    encoder = load_encoder(run)
    backbone = encoder.model.backbone.train()
    _, dataset, _ = dataset_features(encoder, str(folder), split="train", cache=False)
    extract_features(backbone, dataset, modality=image_modality(16, num_workers=0))
    assert backbone.training


def test_bad_inputs(tiny_run, tmp_path):
    run, _ = tiny_run
    with pytest.raises(UserError, match="unknown layer"):
        dataset_features(load_encoder(run), "digits", split="test", layer="middle")
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    state["config"]["model"]["width"] = 0.125
    save_checkpoint(state, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="do not fit"):
        load_encoder(tmp_path / "mismatch.pt")


def test_checkpoints_from_before_modalities_load_as_images_without_their_data(tiny_run, tmp_path):
    from simclr.checkpoint import load_checkpoint

    run, _ = tiny_run
    state = load_checkpoint(run)
    del state["config"]["data"]["modality"]  # saved before the key existed
    state["config"]["data"]["path"] = str(tmp_path / "moved-away")
    state.pop("fitted")
    save_checkpoint(state, tmp_path / "old.pt")
    old = load_encoder(tmp_path / "old.pt")
    assert old.config.data.modality == "image" and old.fitted == {}
    assert old.modality().name == "image"


def test_stale_cache_temporaries_go_and_those_of_a_running_evaluation_stay(
    tiny_run, tmp_path, monkeypatch
):
    run, folder = tiny_run
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache, user_cache = run / "features", tmp_path / "xdg" / "simclr" / "features"
    killed = 4_194_305  # above Linux's largest pid_max: no process has this id
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    hour_ago = time.time() - 3600
    stale = [cache / f".{'1' * 20}.pt.tmp{killed}", user_cache / f".{'2' * 20}.pt.tmp{killed}"]
    running = [  # an evaluation writing its cache right now, here or on another machine
        cache / f".{'3' * 20}.pt.tmp{other.pid}",
        cache / f".{'4' * 20}.pt.tmp{killed}",
    ]
    try:
        for path in stale + running:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half a cache file")
        for path in [*stale, running[0]]:
            os.utime(path, (hour_ago, hour_ago))
        dataset_features(load_encoder(run), str(folder), split="train", num_workers=0)
        assert not any(path.exists() for path in stale)
        assert all(path.exists() for path in running)
    finally:
        other.kill()
        other.wait()
        for path in running:
            path.unlink(missing_ok=True)
