import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from simclr import viz
from simclr.augment.views import SimCLRViews
from simclr.checkpoint import WriteFailed
from simclr.config import AugmentConfig, build_config
from simclr.data.datasets import array_dataset, scan_folder
from simclr.errors import UserError
from simclr.evaluate.features import Features
from simclr.train import pretrain
from tests.conftest import files_capped_at, write_image_folder
from tests.deep_images import write_tiff_folder
from tests.test_train import TINY

AUG = AugmentConfig(size=16, jitter_strength=0.5, blur_p=0.5)


def png_size(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.height, image.width


def views_size(rows):  # (0.75 + rows x 1.4) x (1.1 + 3 x 1.4) inches at 100 dpi
    return round(100 * (0.75 + 1.4 * rows)), 530


@pytest.fixture
def record_views(monkeypatch):
    shapes = []

    class Recording(SimCLRViews):
        def forward(self, images):
            shapes.append(tuple(images.shape))
            return super().forward(images)

    monkeypatch.setattr(viz, "SimCLRViews", Recording)
    return shapes


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz")
    folder = write_image_folder(root / "images")
    cfg = build_config(
        TINY,
        {"data": {"path": str(folder)}, "train": {"max_steps": 4}, "eval": {"data": str(folder)}},
    )
    run = root / "run"
    pretrain(cfg, run)
    for name, weights, top1 in (
        ("latest", "trained", 55.0),
        ("latest-random-init", "random init", 30.0),
    ):
        result = {"top1": top1, "top5": 100.0, "checkpoint": {"step": 3, "weights": weights}}
        (run / f"knn-{name}.json").write_text(json.dumps(result))
    return run


def test_subsample_is_deterministic_and_stratified():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [-1] * 100)[torch.randperm(200)]
    picked = viz.subsample(labels, 20, seed=3)
    assert torch.equal(picked, viz.subsample(labels, 20, seed=3))
    assert not torch.equal(picked, viz.subsample(labels, 20, seed=4))
    assert len(picked) == 20 and len(set(picked.tolist())) == 20
    assert torch.equal(picked, picked.sort().values)
    counts = {c: int((labels[picked] == c).sum()) for c in (-1, 0, 1, 2)}
    assert counts == {-1: 10, 0: 5, 1: 3, 2: 2}


def test_subsample_keeps_everything_when_small():
    assert torch.equal(viz.subsample(torch.zeros(7, dtype=torch.long), 10), torch.arange(7))
    with pytest.raises(UserError):
        viz.subsample(torch.zeros(7, dtype=torch.long), 0)


def test_draw_views_of_in_memory_images(tmp_path, record_views):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    data = array_dataset(images, np.arange(12) % 3, classes=["cat", "dog", "owl"], size=16)
    out = viz.draw_views(data, AUG, tmp_path / "sub" / "views.png", num_images=4, seed=1)
    assert out == tmp_path / "sub" / "views.png"
    assert png_size(out) == views_size(4)
    assert record_views == [(4, 3, 16, 16)]  # the batched in-memory path of training
    again = viz.draw_views(data, AUG, tmp_path / "again.png", num_images=4, seed=1)
    other = viz.draw_views(data, AUG, tmp_path / "other.png", num_images=4, seed=2)
    assert again.read_bytes() == out.read_bytes()
    assert other.read_bytes() != out.read_bytes()


def test_draw_views_of_files_cuts_crops_like_the_loader(tmp_path, record_views):
    root = write_image_folder(tmp_path / "files", classes=2, per_class=2, size=40)
    (root / "class_0" / "broken.png").write_bytes(b"not an image")
    data = scan_folder(root)
    assert len(data) == 5
    out = viz.draw_views(data, AUG, tmp_path / "views.png", num_images=5)
    assert png_size(out) == views_size(4)  # the unreadable file is skipped
    assert record_views == [(4, 2, 3, 16, 16)]  # two crops per image, as TwoCrops cuts them


def test_draw_views_of_multichannel_files_shows_three_channels(tmp_path, record_views):
    root = write_tiff_folder(tmp_path / "tiffs", channels=5, classes=2, per_class=2, size=24)
    out = viz.draw_views(scan_folder(root), AUG, tmp_path / "views.png", num_images=4)
    assert png_size(out) == views_size(4)
    assert record_views == [(4, 2, 5, 16, 16)]  # the views keep all five channels


def test_draw_views_rejects_no_rows(tmp_path):
    data = array_dataset(np.zeros((4, 16, 16), dtype=np.uint8), size=16)
    with pytest.raises(UserError, match="num_images must be at least 1"):
        viz.draw_views(data, AUG, tmp_path / "v.png", num_images=0)
    with pytest.raises(UserError, match="max_points must be at least 1"):
        viz.subsample(torch.zeros(4, dtype=torch.long), 0)


def test_plot_run_draws_curves_and_knn(tiny_run, tmp_path):
    out = viz.plot_run(tiny_run)
    assert out == tiny_run / "curves.png"
    assert png_size(out) == (700, 1600)
    assert png_size(viz.plot_run(tiny_run, tmp_path / "c.png", dpi=50)) == (350, 800)


def test_plot_run_knn_points_at_checkpoint_steps(tiny_run):
    points, baseline = viz._knn_points(
        tiny_run, np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.5, 4.0])
    )
    knn = json.loads((tiny_run / "knn.json").read_text())
    assert (4.0, 4.0, knn["trained"]["top1"], "knn.json") in points
    assert (3.0, 3.5, 55.0, "knn-latest.json") in points
    assert len(points) == 2 and baseline == knn["random_init"]["top1"]


def test_plot_run_with_resumed_log_and_no_knn(tmp_path):
    records = [
        {"step": s, "loss": 5.0 - s / 10, "lr": 0.1, "elapsed_s": float(s)}
        for s in (1, 2, 3, 2, 3, 4)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n{torn")
    assert png_size(viz.plot_run(tmp_path)) == (700, 1600)


def test_plot_run_without_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="metrics.jsonl"):
        viz.plot_run(tmp_path)


def clusters(n_per_class=20, classes=3, dim=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=generator)
    return Features(features, labels, torch.arange(len(labels)))


def test_embed_2d_keeps_clusters_apart():
    features = clusters()
    coords, positions, protocol = viz.embed_2d(features, seed=0)
    assert coords.shape == (60, 2) and torch.equal(positions, torch.arange(60))
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    labels = features.labels.numpy()
    assert (labels[distances.argmin(1)] == labels).all()  # 1-NN in the map = own class
    assert protocol["num_points"] == 60 and protocol["init"] == "pca"


def test_draw_map_writes_png_with_protocol(tmp_path):
    out = viz.draw_map(clusters(), tmp_path / "map.png", class_names=["a", "b", "c"], max_points=45)
    assert png_size(out) == (800, 1000)
    with Image.open(out) as image:
        protocol = json.loads(image.info["Description"])
    assert protocol["num_points"] == 45 and protocol["num_total"] == 60


def test_a_failed_picture_write_keeps_the_previous_picture(tmp_path):
    out = tmp_path / "map.png"
    out.write_bytes(b"previous picture")
    with files_capped_at(4096), pytest.raises(WriteFailed) as caught:
        viz.draw_map(clusters(), out)  # a PNG of some 50 KB
    assert str(caught.value).startswith(f"cannot write {out}: File too large")
    assert out.read_bytes() == b"previous picture"
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]  # no temporary left


def test_draw_map_of_unlabelled_features(tmp_path):
    features = clusters()
    features.labels[:] = -1
    assert png_size(viz.draw_map(features, tmp_path / "map.png")) == (800, 1000)


def test_draw_map_method_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown map method"):
        viz.draw_map(clusters(), tmp_path / "m.png", method="pca")
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap now raises ImportError
    with pytest.raises(UserError, match="umap-learn"):
        viz.draw_map(clusters(), tmp_path / "m.png", method="umap")
