"""The explorer page: its pieces, the file it writes, and the page in headless Chromium.

The browser test needs ``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them) and skips without them. It keeps a screenshot of
the page, with a search typed and a preview shown, at ``.artifacts/explorer.png`` in the
repository root (git ignores it).
"""

import base64
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr import explorer
from simclr.cli import main
from simclr.errors import DISTRIBUTION, UserError
from simclr.evaluate.features import Features, dataset_features, load_encoder
from simclr.modalities import modality_for

from .conftest import pretrained_tiny_run
from .modalities.test_contract import MAKERS

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)
DATA_URI = "data:image/png;base64,"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step run on 3 classes of 10 images (16 px), and its image folder."""
    return pretrained_tiny_run(tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="module")
def page(run, tmp_path_factory):
    """The explorer page of the run's images, written by ``simclr map --html``."""
    run_dir, folder = run
    out = tmp_path_factory.mktemp("page") / "explorer.html"
    assert main(["map", str(run_dir), "--data", str(folder), "--html", str(out)]) == 0
    return out


def _png_size(uri: str) -> tuple[int, int]:
    assert uri.startswith(DATA_URI)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(DATA_URI) :]))).size


def _figure_of(text: str) -> tuple[list, dict]:
    """The traces and layout that the page hands to ``Plotly.newPlot``."""
    decoder = json.JSONDecoder()
    start = text.index("Plotly.newPlot(")
    start = text.index("[", text.index('"simclr-map"', start))
    data, end = decoder.raw_decode(text, start)
    layout, _ = decoder.raw_decode(text, text.index("{", end))
    return data, layout


def test_image_thumbnails_shrink_never_grow():
    big = explorer.image_thumbnails(torch.rand(2, 3, 96, 64), px=48)
    assert [_png_size(u) for u in big] == [(32, 48), (32, 48)]  # (width, height), aspect kept
    (small,) = explorer.image_thumbnails(torch.rand(1, 1, 16, 16), px=48)
    assert _png_size(small) == (16, 16)
    (five,) = explorer.image_thumbnails(torch.rand(1, 5, 16, 16), px=48)  # multispectral
    assert _png_size(five) == (16, 16)


def test_spectrogram_and_sparkline_thumbnails():
    specs = explorer.spectrogram_thumbnails(torch.randn(3, 1, 64, 200) * 20, px=32)
    assert len(specs) == 3 and _png_size(specs[0]) == (64, 20)  # 64 x 200 into 32 x 64
    series = torch.stack([torch.sin(torch.linspace(0, 6, 500)), torch.linspace(-1, 1, 500)])
    lines = explorer.sparkline_thumbnails(torch.stack([series, -series]), px=32)
    assert len(lines) == 2 and _png_size(lines[1]) == (96, 32)
    pixels = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(lines[0][len(DATA_URI) :]))).convert("L")
    )
    assert (pixels < 200).any() and (pixels == 255).mean() > 0.5  # lines on a white ground


def test_table_rows_are_decoded():
    columns = [
        {"name": "size", "kind": "numeric", "mean": 10.0, "std": 2.0, "fill": 10.0},
        {"name": "colour", "kind": "categorical", "categories": ["blue", "red"]},
    ]
    rows = explorer.table_rows(torch.tensor([[1.0, 2.0], [-0.5, 0.0]]), columns)
    assert rows == ["size = 12\ncolour = red", "size = 9\ncolour = ?"]
    wide = explorer.table_rows(torch.zeros(1, 20), [])
    assert wide[0].endswith("(+4 more columns)") and wide[0].startswith("x0 = 0")


def test_short_names_drop_the_shared_folder():
    names = ["/data/imgs/a/1.png", "/data/imgs/b/2.png"]
    assert explorer.short_names(names) == ["a/1.png", "b/2.png"]
    assert explorer.short_names(["digits-3", "digits-4"]) == ["digits-3", "digits-4"]
    assert explorer.short_names(["/x/1.png"]) == ["/x/1.png"]


@pytest.mark.parametrize("name", ["image", "audio", "timeseries", "text", "tabular"])
def test_every_modality_previews_its_items(name, tmp_path):
    cfg, spec = MAKERS[name](tmp_path)
    unfitted = modality_for(cfg)
    items, fitted = unfitted.open(spec, split="train")
    index = torch.tensor([3, 0, 1])
    previews = explorer.item_previews(unfitted.with_fitted(fitted), items, index, px=24)
    assert len(previews.values) == 3 and all(previews.values)
    if name in ("image", "audio", "timeseries"):
        assert previews.kind == "image" and previews.display_px > 0
        assert all(v.startswith(DATA_URI) and max(_png_size(v)) <= 72 for v in previews.values)
    else:
        assert previews.kind == "text"
    if name == "text":
        assert previews.values[1] == explorer.short_text(items.texts[0])
    if name == "tabular":
        assert all(" = " in v for v in previews.values)
    if name == "image":  # the thumbnails are of the items asked for, in that order
        again = explorer.item_previews(unfitted, items, index[[1]], px=24)
        assert again.values == previews.values[1:2]


def test_figure_has_one_point_per_item_in_each_colouring():
    coords = np.random.default_rng(0).normal(size=(7, 2))
    labels = np.array([0, 0, 1, 1, 2, -1, 2])
    clusters = np.array([1, 1, 0, 0, 0, 1, 0])
    previews = explorer.Previews("text", [f"item {i}" for i in range(7)])
    names = [f"n{i}" for i in range(7)]
    fig = explorer.explorer_figure(
        coords, names, labels, clusters, previews, class_names=["a", "b", "c"], color="cluster"
    )
    by_label = [t for t in fig.data if not t.visible]
    by_cluster = [t for t in fig.data if t.visible]
    assert [t.name for t in by_label] == ["unlabelled", "a", "b", "c"]
    assert [t.name for t in by_cluster] == ["cluster 0", "cluster 1"]
    for group in (by_label, by_cluster):
        assert sorted(row[0] for t in group for row in t.customdata) == list(range(7))
    assert fig.layout.meta["previews"] == previews.values
    assert fig.layout.updatemenus[0].active == 1
    with pytest.raises(ValueError, match="one entry per point"):
        explorer.explorer_figure(coords, names[:3], labels, clusters, previews)


def test_page_is_self_contained(page):
    text = page.read_text()
    assert 0 < page.stat().st_size < 8_000_000
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)  # plotly.js is inline, nothing fetched
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']https?:", text)
    assert "Plotly.newPlot" in text and re.search(r"plotly\.js v\d", text)
    data, layout = _figure_of(text)
    uris = layout["meta"]["previews"]
    assert len(uris) == 30 and all(max(_png_size(u)) == 16 for u in uris)  # 16 px images
    shown = [t for t in data if t["visible"]]
    assert [t["name"] for t in shown] == ["class_0", "class_1", "class_2"]
    assert sorted(row[0] for t in shown for row in t["customdata"]) == list(range(30))
    assert len(data) == 6 and layout["meta"]["protocol"]["num_points"] == 30  # + 3 clusters
    assert 'id="simclr-search"' in text and "plotly_hover" in text


def test_page_options_and_errors(run, tmp_path, capsys, monkeypatch):
    run_dir, folder = run
    data = ["map", str(run_dir), "--data", str(folder)]
    assert main([*data, "--html", str(tmp_path), "--color", "cluster", "--k", "4"]) == 0
    traces, layout = _figure_of((tmp_path / "map-tsne.html").read_text())
    assert [t["name"] for t in traces if t["visible"]] == [f"cluster {i}" for i in range(4)]
    assert layout["legend"]["title"]["text"] == "k-means cluster (k=4)"
    capsys.readouterr()
    for argv, words in (
        ([*data, "--html", str(tmp_path / "a.html"), "--out", str(tmp_path / "a.png")], "not both"),
        ([*data, "--html", str(tmp_path / "a.txt")], "an .html file"),
        ([*data, "--k", "3"], "add --html"),
        ([*data, "--html", str(tmp_path / "a.html"), "--k", "99"], "k must be between"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    monkeypatch.setitem(sys.modules, "plotly", None)
    assert main([*data, "--html", str(tmp_path / "b.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f'is not installed: pip install "{DISTRIBUTION}[explorer]"'), err
    assert not (tmp_path / "b.html").exists()


def test_write_explorer_python_api(run, tmp_path):
    run_dir, folder = run
    encoder = load_encoder(run_dir)
    features, items, _ = dataset_features(encoder, str(folder), split="test", cache=False)
    modality = encoder.modality(0)
    out = explorer.write_explorer(
        features, items, modality, tmp_path / "x" / "m.html", max_points=12
    )
    _, layout = _figure_of(out.read_text())
    assert out == tmp_path / "x" / "m.html" and len(layout["meta"]["previews"]) == 12
    # unlabelled: the page opens coloured by cluster, k at most the number of points
    unlabelled = Features(features.features, torch.full_like(features.labels, -1), features.index)
    explorer.write_explorer(unlabelled, items, modality, out, max_points=6)
    traces, layout = _figure_of(out.read_text())
    assert [t["name"] for t in traces if not t["visible"]] == ["unlabelled"]
    assert layout["legend"]["title"]["text"] == "k-means cluster (k=6)"
    with pytest.raises(UserError, match="unknown colouring"):
        explorer.write_explorer(features, items, modality, out, color="size")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by selenium through Debian's chromedriver."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _points(driver):
    """The drawn markers of the visible traces (plotly draws each as an SVG path)."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#simclr-map .scatterlayer .trace .points path")


def test_page_in_headless_chromium(page, browser, record_property):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(page.as_uri())
    wait.until(lambda d: len(_points(d)) > 0)
    assert len(_points(browser)) == 30  # one marker per item
    assert browser.find_element(By.ID, "simclr-preview").get_attribute("hidden") is not None

    # search: one file name highlights its point, the others are dimmed
    browser.find_element(By.ID, "simclr-search").send_keys("class_1/4.png")
    wait.until(lambda d: d.find_element(By.ID, "simclr-matches").text == "1 matching")
    opacity = [float(p.value_of_css_property("opacity")) for p in _points(browser)]
    assert len(opacity) == 30 and sorted(opacity)[-2:] == [explorer.SEARCH_DIMMED_OPACITY, 1.0]
    match = _points(browser)[opacity.index(1.0)]

    # hover that point: the preview shows its thumbnail, a PNG data URI that decoded
    ActionChains(browser).move_to_element(match).perform()
    preview = browser.find_element(By.ID, "simclr-preview")
    wait.until(lambda d: preview.get_attribute("hidden") is None)
    thumb = browser.find_element(By.ID, "simclr-thumb")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", thumb) > 0)
    assert thumb.get_attribute("src").startswith(DATA_URI)
    assert thumb.is_displayed() and thumb.size["width"] > 0 and thumb.size["height"] > 0
    assert browser.find_element(By.ID, "simclr-caption").text == "class_1/4.png"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "explorer.png"
    assert browser.save_screenshot(str(shot))
    record_property("screenshot", str(shot))
    print(f"explorer screenshot: {shot}")

    # the dropdown switches to the k-means colouring: the same 30 points, 3 cluster traces
    browser.find_element(By.CSS_SELECTOR, "#simclr-map .updatemenu-header-group").click()
    choices = "#simclr-map .updatemenu-dropdown-button"
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, choices)) == 2)
    browser.find_elements(By.CSS_SELECTOR, choices)[1].click()
    wait.until(lambda d: "cluster" in d.find_element(By.CSS_SELECTOR, ".legendtitletext").text)
    assert len(_points(browser)) == 30
    legend = browser.find_elements(By.CSS_SELECTOR, "#simclr-map .legend .traces")
    assert [e.text for e in legend] == ["cluster 0", "cluster 1", "cluster 2"]


@pytest.mark.parametrize("name", ["text", "tabular"])
def test_text_previews_in_headless_chromium(name, browser, tmp_path):
    """Texts and table rows show as plain text, even text that looks like markup."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cfg, spec = MAKERS[name](tmp_path)
    unfitted = modality_for(cfg)
    items, fitted = unfitted.open(spec, split="train")
    modality = unfitted.with_fitted(fitted)
    # an item whose name is in no other name: the search highlights it alone
    item = next(i for i, a in enumerate(items.names) if sum(a in b for b in items.names) == 1)
    if name == "text":
        items.texts[item] = "</script><b>not bold</b> & " + items.texts[item]
    n = len(items)
    vectors = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    features = Features(vectors, items.labels, torch.arange(n))
    out = explorer.write_explorer(features, items, modality, tmp_path / "page.html")
    expected = explorer.item_previews(modality, items, torch.tensor([item])).values[0]

    wait = WebDriverWait(browser, 30)
    browser.get(out.as_uri())
    wait.until(lambda d: len(_points(d)) == n)
    browser.find_element(By.ID, "simclr-search").send_keys(items.names[item])
    wait.until(lambda d: d.find_element(By.ID, "simclr-matches").text == "1 matching")
    opacity = [float(p.value_of_css_property("opacity")) for p in _points(browser)]
    ActionChains(browser).move_to_element(_points(browser)[opacity.index(1.0)]).perform()
    caption = browser.find_element(By.ID, "simclr-caption")
    wait.until(lambda d: caption.is_displayed() and caption.text == items.names[item])
    shown = browser.find_element(By.ID, "simclr-text")
    assert shown.get_attribute("textContent") == expected and shown.is_displayed()
    assert not browser.find_elements(By.ID, "simclr-thumb")  # no picture for text
