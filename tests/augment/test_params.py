"""Parameter sampling: shapes, ranges, probabilities and torchvision's crop semantics.

Frequencies are checked within 4 standard errors on 20000 draws (never flakes in practice;
the generator is seeded anyway, so the test is deterministic).
"""

import math

import pytest
import torch
import torchvision.transforms.v2 as T

from simclr.augment import sample_view_params
from simclr.augment.params import CROP_ATTEMPTS, ViewParams, sample_crop_boxes
from simclr.config import AugmentConfig

N = 20000


def draw(cfg: AugmentConfig, n: int = N, height: int = 64, width: int = 64, seed: int = 0):
    return sample_view_params(n, height, width, cfg, torch.Generator().manual_seed(seed))


def within_4_sigma(observed: float, p: float, n: int = N) -> bool:
    return abs(observed - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_shapes_and_dtypes():
    p = draw(AugmentConfig(), n=7)
    assert len(p) == 7
    assert p.boxes.shape == (7, 4) and p.boxes.dtype == torch.long
    assert p.jitter_order.shape == (7, 4) and p.jitter_order.dtype == torch.long
    for name in ("flip", "jitter", "grayscale", "blur"):
        assert getattr(p, name).dtype == torch.bool
        assert getattr(p, name).shape == (7,)
    for name in ("brightness", "contrast", "saturation", "hue", "sigma"):
        assert getattr(p, name).dtype == torch.float32
        assert getattr(p, name).shape == (7,)
    assert p.select(torch.tensor([0, 3])).boxes.shape == (2, 4)


def test_empty_batch():
    p = draw(AugmentConfig(), n=0)
    assert len(p) == 0 and p.boxes.shape == (0, 4)


def test_probabilities_match_recipe():
    p = draw(AugmentConfig())
    assert within_4_sigma(p.flip.float().mean().item(), 0.5)
    assert within_4_sigma(p.jitter.float().mean().item(), 0.8)
    assert within_4_sigma(p.grayscale.float().mean().item(), 0.2)
    assert within_4_sigma(p.blur.float().mean().item(), 0.5)


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_probability_extremes(prob):
    cfg = AugmentConfig(flip_p=prob, jitter_p=prob, grayscale_p=prob, blur_p=prob)
    p = draw(cfg, n=1000)
    for name in ("flip", "jitter", "grayscale", "blur"):
        assert bool(getattr(p, name).all() if prob else not getattr(p, name).any()), name


def test_factor_ranges():
    p = draw(AugmentConfig())
    for name, (low, high) in {
        "brightness": (0.2, 1.8),
        "contrast": (0.2, 1.8),
        "saturation": (0.2, 1.8),
        "hue": (-0.2, 0.2),
        "sigma": (0.1, 2.0),
    }.items():
        values = getattr(p, name)
        assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, name
        # spread over the whole range, and uniform: mean within 4 standard errors
        assert values.min() < low + 0.01 * (high - low) and values.max() > high - 0.01 * (
            high - low
        )
        sd = (high - low) / math.sqrt(12 * N)
        assert abs(values.mean().item() - (low + high) / 2) < 4 * sd, name


def test_factor_ranges_follow_strength_and_overrides():
    p = draw(AugmentConfig(jitter_strength=0.5, saturation=1.5, hue=0.0), n=2000)
    assert p.brightness.min() >= 0.6 - 1e-6 and p.brightness.max() <= 1.4 + 1e-6
    assert p.saturation.min() >= 0.0 and p.saturation.max() <= 2.5 + 1e-6
    assert p.saturation.min() < 0.1  # max(0, 1 - 1.5) = 0
    assert torch.all(p.hue == 0)
    with pytest.raises(ValueError):
        draw(AugmentConfig(hue=0.6), n=2)


def test_jitter_order_is_uniform_random_permutation():
    p = draw(AugmentConfig())
    order = p.jitter_order
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(N, 4))
    assert len({tuple(row) for row in order.tolist()}) == 24
    for position in range(4):
        for op in range(4):
            frac = (order[:, position] == op).float().mean().item()
            assert within_4_sigma(frac, 0.25), (position, op)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (32, 48), (90, 20)])
def test_crop_boxes_inside_image_with_recipe_area_and_ratio(height, width):
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = draw(AugmentConfig(), height=height, width=width).boxes
    top, left, h, w = boxes.unbind(1)
    assert torch.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
    assert torch.all((top + h <= height) & (left + w <= width))
    area = (h * w).float() / (height * width)
    aspect = w.float() / h.float()
    # Rounding each side to whole pixels moves area and aspect a little off the drawn values:
    # allow half a pixel on each side.
    lo_h, lo_w = (h.float() - 0.5).clamp_min(0.5), (w.float() - 0.5).clamp_min(0.5)
    assert torch.all((h.float() + 0.5) * (w.float() + 0.5) >= scale[0] * height * width)
    assert torch.all(lo_h * lo_w <= scale[1] * height * width)
    assert torch.all((w.float() + 0.5) / lo_h >= ratio[0])
    assert torch.all(lo_w / (h.float() + 0.5) <= ratio[1])
    # largest crop allowed by the ratio range, as a fraction of the image
    largest = min(height, width * 4 / 3) * min(width, height * 4 / 3) / (height * width)
    assert area.min() < 0.1 and area.max() > 0.7 * largest
    assert aspect.min() < 0.8 and aspect.max() > 1.25
    # positions spread over the valid offsets
    assert top.float().std() > 0 and left.float().std() > 0


def test_crop_fallback_is_clipped_central_crop():
    g = torch.Generator().manual_seed(0)
    # Aspect 2-3 with the whole area can never fit in a square: always the fallback.
    boxes = sample_crop_boxes(5, 40, 40, (1.0, 1.0), (2.0, 3.0), g)
    assert torch.equal(boxes, torch.tensor([[10, 0, 20, 40]] * 5))
    boxes = sample_crop_boxes(3, 40, 40, (1.0, 1.0), (0.25, 0.5), g)
    assert torch.equal(boxes, torch.tensor([[0, 10, 40, 20]] * 3))
    boxes = sample_crop_boxes(3, 30, 40, (1.0, 1.0), (0.5, 2.0), g)  # fits on first try
    assert torch.equal(boxes, torch.tensor([[0, 0, 30, 40]] * 3))
    assert CROP_ATTEMPTS == 10


def test_crop_distribution_matches_torchvision():
    """Mean area fraction and log-aspect agree with RandomResizedCrop's own sampler."""
    height, width, n = 48, 64, 4000
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    ours = sample_crop_boxes(n, height, width, scale, ratio, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop(32, scale=scale, ratio=ratio)
    image = torch.zeros(3, height, width)
    theirs = torch.tensor(
        [[(d := rrc.make_params([image]))["height"], d["width"]] for _ in range(n)]
    ).float()
    for a, b in [
        ((ours[:, 2] * ours[:, 3]).float() / (height * width), theirs.prod(1) / (height * width)),
        ((ours[:, 3] / ours[:, 2]).float().log(), (theirs[:, 1] / theirs[:, 0]).log()),
    ]:
        se = math.sqrt(a.var().item() / n + b.var().item() / n)
        assert abs(a.mean().item() - b.mean().item()) < 4 * se


def test_same_seed_same_params_and_fixed_number_of_draws():
    a = draw(AugmentConfig(), n=100, seed=5)
    b = draw(AugmentConfig(), n=100, seed=5)
    c = draw(AugmentConfig(), n=100, seed=6)
    for name in ViewParams.__dataclass_fields__:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.boxes, c.boxes)
    # The stream advances by the same amount whatever the probabilities: resumable.
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    sample_view_params(50, 64, 64, AugmentConfig(blur_p=0.0, flip_p=1.0), g1)
    sample_view_params(50, 64, 64, AugmentConfig(crop_scale=(1.0, 1.0), hue=0.0), g2)
    assert torch.equal(g1.get_state(), g2.get_state())
