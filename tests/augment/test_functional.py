"""Batched kernels against torchvision's single-image functional ops.

Tolerances (max abs difference on [0, 1] floats): point ops (flip, grayscale, brightness,
contrast, saturation) 1e-5, hue 1e-5, bilinear crop 1e-5 at 32-48 px, blur 1e-5.
Observed differences are at most about 2e-6 (float rounding); torchvision is the reference.
"""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from simclr.augment import functional as AF
from simclr.augment.params import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    ViewParams,
    sample_view_params,
)
from simclr.config import AugmentConfig

TOL = 1e-5


def make_images(n: int = 8, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    """Random images with some awkward pixels: quantised values, gray pixels, ties, extremes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, height, width, generator=g)
    x[0] = (x[0] * 255).round() / 255
    x[1, :, :4] = 0.5  # gray pixels (hue undefined)
    x[1, 1, 4:8] = x[1, 0, 4:8]  # red == green ties
    x[2, :, :2] = 0.0
    x[2, :, 2:4] = 1.0
    return x


def factors(n: int, low: float, high: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) * (high - low) + low


def jitter_params(n: int, seed: int = 0) -> ViewParams:
    g = torch.Generator().manual_seed(seed)
    return sample_view_params(n, 32, 32, AugmentConfig(size=32, jitter_p=1.0), g)


def random_boxes(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(1, height + 1, (n,), generator=g)
    w = torch.randint(1, width + 1, (n,), generator=g)
    top = (torch.rand(n, generator=g) * (height - h + 1)).long()
    left = (torch.rand(n, generator=g) * (width - w + 1)).long()
    boxes = torch.stack([top, left, h, w], dim=1)
    boxes[0] = torch.tensor([0, 0, height, width])  # whole image
    boxes[1] = torch.tensor([height - 1, width - 1, 1, 1])  # one pixel
    boxes[2] = torch.tensor([0, 0, height, 1])  # one column
    return boxes


# --------------------------------------------------------------------------- crop


@pytest.mark.parametrize(
    ("height", "width", "size"), [(32, 32, 32), (32, 48, 24), (40, 36, (48, 40))]
)
def test_resized_crop_matches_torchvision(height, width, size):
    x = make_images(12, height, width)
    boxes = random_boxes(12, height, width)
    out = AF.resized_crop(x, boxes, size)
    out_hw = [size, size] if isinstance(size, int) else list(size)
    ref = torch.stack(
        [TF.resized_crop(x[i], *boxes[i].tolist(), out_hw, antialias=False) for i in range(12)]
    )
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < TOL


def test_resized_crop_flip_mirrors_the_selected_crops_exactly():
    x = make_images(8, 40, 36)
    boxes = random_boxes(8, 40, 36)
    flip = torch.tensor([True, False] * 4)
    out = AF.resized_crop(x, boxes, 24, flip)
    assert torch.equal(out, AF.hflip(AF.resized_crop(x, boxes, 24), flip))


def test_resized_crop_whole_image_same_size_is_identity():
    x = make_images(3)
    boxes = torch.tensor([[0, 0, 32, 32]] * 3)
    assert (AF.resized_crop(x, boxes, 32) - x).abs().max() < 1e-6


# --------------------------------------------------------------------------- point ops


def test_hflip_and_grayscale_match_torchvision():
    x = make_images(6)
    mask = torch.tensor([True, False, True, True, False, False])
    flipped = AF.hflip(x, mask)
    gray = AF.grayscale(x, mask)
    for i in range(6):
        flip_ref = TF.horizontal_flip(x[i]) if mask[i] else x[i]
        gray_ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if mask[i] else x[i]
        assert torch.equal(flipped[i], flip_ref)
        assert (gray[i] - gray_ref).abs().max() < TOL
    assert gray.shape == x.shape


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("brightness", 0.0, 2.0),
        ("contrast", 0.0, 2.0),
        ("saturation", 0.0, 2.0),
        ("hue", -0.5, 0.5),
    ],
)
def test_jitter_ops_match_torchvision(name, low, high):
    x = make_images(8)
    f = factors(8, low, high)
    f[0] = low
    f[1] = high
    out = getattr(AF, f"adjust_{name}")(x, f)
    ref = torch.stack([getattr(TF, f"adjust_{name}")(x[i], f[i].item()) for i in range(8)])
    assert (out - ref).abs().max() < TOL
    assert out.min() >= 0 and out.max() <= 1


def test_hue_zero_shift_is_near_identity_and_full_turn_wraps():
    x = make_images(4)
    assert (AF.adjust_hue(x, torch.zeros(4)) - x).abs().max() < TOL
    half = AF.adjust_hue(AF.adjust_hue(x, torch.full((4,), 0.5)), torch.full((4,), 0.5))
    assert (half - x).abs().max() < TOL


# --------------------------------------------------------------------------- blur


@pytest.mark.parametrize(("size", "kernel"), [(32, 3), (96, 9)])
def test_gaussian_blur_matches_torchvision(size, kernel):
    n = 4
    x = make_images(n, size, size)
    sigma = factors(n, 0.1, 2.0)
    out = AF.gaussian_blur(x, sigma, kernel)
    ref = torch.stack(
        [TF.gaussian_blur(x[i], [kernel, kernel], [sigma[i].item()] * 2) for i in range(n)]
    )
    assert (out - ref).abs().max() < TOL


def test_gaussian_blur_mask_only_touches_selected():
    x = make_images(5)
    sigma = factors(5, 0.5, 2.0)
    mask = torch.tensor([False, True, False, True, True])
    out = AF.gaussian_blur(x, sigma, 5, mask)
    full = AF.gaussian_blur(x, sigma, 5)
    assert torch.equal(out[~mask], x[~mask])
    assert (out[mask] - full[mask]).abs().max() < 1e-6
    assert torch.equal(AF.gaussian_blur(x, sigma, 5, torch.zeros(5, dtype=torch.bool)), x)


def test_gaussian_blur_rejects_bad_kernels():
    x = make_images(3, 8, 8)
    with pytest.raises(ValueError):
        AF.gaussian_blur(x, torch.ones(3), 4)
    with pytest.raises(ValueError):
        AF.gaussian_blur(x, torch.ones(3), 17)


def test_blur_kernel_size():
    assert AF.blur_kernel_size(224, 0.1) == 23
    assert AF.blur_kernel_size(96, 0.1) == 9
    assert AF.blur_kernel_size(32, 0.1) == 3
    assert AF.blur_kernel_size(2, 0.1) == 3
    assert AF.blur_kernel_size(1, 0.1) == 1
    assert AF.blur_kernel_size(8, 5.0) == 15


# --------------------------------------------------------------------------- colour jitter

OPS = {
    BRIGHTNESS: ("adjust_brightness", "brightness"),
    CONTRAST: ("adjust_contrast", "contrast"),
    SATURATION: ("adjust_saturation", "saturation"),
    HUE: ("adjust_hue", "hue"),
}


def torchvision_jitter(image: torch.Tensor, params: ViewParams, i: int) -> torch.Tensor:
    """Apply torchvision's ops to one image in the sample's order."""
    if not params.jitter[i]:
        return image
    for op in params.jitter_order[i].tolist():
        fn, field = OPS[op]
        image = getattr(TF, fn)(image, getattr(params, field)[i].item())
    return image


def test_color_jitter_follows_sampled_order_like_torchvision():
    n = 16
    x = make_images(n)
    params = jitter_params(n)
    params.jitter[3] = False
    out = AF.color_jitter(x, params)
    for i in range(n):
        assert (out[i] - torchvision_jitter(x[i], params, i)).abs().max() < TOL, i
    assert torch.equal(out[3], x[3])


def test_color_jitter_uses_per_sample_orders_and_order_matters():
    n = 64
    params = jitter_params(n)
    orders = {tuple(row) for row in params.jitter_order.tolist()}
    assert len(orders) > 8  # 64 draws from 24 permutations
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    x = make_images(n)
    forward = params.select(slice(None))
    forward.jitter_order = torch.tensor([[0, 1, 2, 3]] * n)
    backward = params.select(slice(None))
    backward.jitter_order = torch.tensor([[3, 2, 1, 0]] * n)
    a, b = AF.color_jitter(x, forward), AF.color_jitter(x, backward)
    assert (a - b).abs().amax(dim=(1, 2, 3)).median() > 1e-2


def test_color_jitter_masks_and_inactive_ops():
    x = make_images(6)
    params = jitter_params(6)
    params.jitter[:] = False
    assert torch.equal(AF.color_jitter(x, params), x)
    params.jitter[:] = True
    assert torch.equal(AF.color_jitter(x, params, (False, False, False, False)), x)
    only_brightness = AF.color_jitter(x, params, (True, False, False, False))
    ref = AF.adjust_brightness(x, params.brightness)
    assert (only_brightness - ref).abs().max() < TOL


# --------------------------------------------------------------------------- generic properties


def _all_ops(x: torch.Tensor, params: ViewParams) -> dict[str, torch.Tensor]:
    return {
        "crop": AF.resized_crop(x, params.boxes, 24),
        "flip": AF.hflip(x, params.flip),
        "brightness": AF.adjust_brightness(x, params.brightness),
        "contrast": AF.adjust_contrast(x, params.contrast),
        "saturation": AF.adjust_saturation(x, params.saturation),
        "hue": AF.adjust_hue(x, params.hue),
        "jitter": AF.color_jitter(x, params),
        "grayscale": AF.grayscale(x, params.grayscale),
        "blur": AF.gaussian_blur(x, params.sigma, 5, params.blur),
    }


def test_batched_equals_loop_of_single_images():
    n = 6
    x = make_images(n)
    cfg = AugmentConfig(size=24, grayscale_p=0.5)
    params = sample_view_params(n, 32, 32, cfg, torch.Generator().manual_seed(3))
    batched = _all_ops(x, params)
    for i in range(n):
        single = _all_ops(x[i : i + 1], params.select(slice(i, i + 1)))
        for name, out in single.items():
            assert (batched[name][i : i + 1] - out).abs().max() < 1e-6, name


def test_empty_batch_and_dtype_kept():
    cfg = AugmentConfig(size=24)
    empty = sample_view_params(0, 32, 32, cfg, torch.Generator().manual_seed(0))
    for name, out in _all_ops(torch.zeros(0, 3, 32, 32), empty).items():
        assert out.shape[0] == 0, name
    x = make_images(4).double()
    params = sample_view_params(4, 32, 32, cfg, torch.Generator().manual_seed(0))
    for name, out in _all_ops(x, params).items():
        assert out.dtype == torch.float64, name
        assert out.device == x.device, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = make_images(6)
    params = sample_view_params(6, 32, 32, AugmentConfig(size=24), torch.Generator())
    cpu = _all_ops(x, params)
    gpu = _all_ops(x.cuda(), params.select(slice(None)))
    for name, out in gpu.items():
        assert out.device.type == "cuda"
        assert (out.cpu() - cpu[name]).abs().max() < 1e-4, name


def test_colour_jitter_on_other_channel_counts():
    """Brightness and contrast run on any C (contrast: the mean over channels); hue needs RGB."""
    images = torch.rand(4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    params = sample_view_params(4, 8, 8, AugmentConfig(jitter_p=1.0), torch.Generator())
    out = AF.color_jitter(images, params, (True, True, False, False))
    assert out.shape == images.shape and not torch.equal(out, images)
    factor = torch.tensor([0.5, 1.0, 1.5, 0.0])
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    expected = images * factor.view(-1, 1, 1, 1) + mean * (1 - factor.view(-1, 1, 1, 1))
    assert torch.allclose(AF.adjust_contrast(images, factor), expected.clamp(0, 1), atol=1e-6)
    for active in ((False, False, True, False), (False, False, False, True)):
        with pytest.raises(ValueError, match="RGB"):
            AF.color_jitter(images, params, active)
    with pytest.raises(ValueError, match="RGB"):
        AF.grayscale(images, torch.ones(4, dtype=torch.bool))
