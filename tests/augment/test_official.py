"""The official code's semantics (``AugmentConfig``'s fidelity settings) against TF's formulas.

Every reference below is written here from the TensorFlow kernels the official SimCLR code calls
(``sample_distorted_bounding_box_op.cc``, ``resize_bicubic_op.cc``, ``adjust_contrast``,
``adjust_saturation_op.cc``, ``adjust_hue_op.cc``, ``random_brightness`` and the ``SAME``
depthwise convolution of ``data_util.gaussian_blur``) in plain numpy, one pixel or one attempt at
a time, and never calls the package's kernels. Pixel arithmetic is float64. Where the kernel's
result is an integer decided by float32 arithmetic (the crop box, the resize's source position
and its 1/1024 table step) the reference repeats the kernel's float32 steps, since float64
would round some ties differently than TensorFlow does.
"""

import math

import numpy as np
import pytest
import torch

from simclr.augment import SimCLRViews, TwoCrops, sample_view_params
from simclr.augment import functional as AF
from simclr.augment.params import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    TF_CROP_ATTEMPTS,
    sample_crop_boxes,
    sample_crop_boxes_tf,
    tf_crop_boxes,
)
from simclr.config import AugmentConfig, build_config, recipe_overrides, to_yaml, validate
from simclr.errors import UserError

f32 = np.float32
OFFICIAL = {
    "crop_method": "tf",
    "interpolation": "bicubic_tf1",
    "brightness_mode": "additive",
    "color_mode": "tf",
    "blur_padding": "zeros",
}


# --------------------------------------------------------------------------- crop box


def tf_crop_reference(aspect_u, height_u, offset_u, height, width, scale, ratio, covered=0.1):
    """``SampleDistortedBoundingBox`` with the whole image as the only box, attempt by attempt.

    ``GenerateRandomCrop`` (C++ ``float`` arithmetic as float32, its one ``double`` expression
    as a Python float, ``lrintf`` as round-half-even), then ``SatisfiesOverlapConstraints``; the
    first accepted attempt wins, else the whole image. ``random->Uniform(n)`` is taken as
    ``floor(u n)`` of the given uniform draws.
    """
    lo, hi = f32(ratio[0]), f32(ratio[1])
    min_area = f32(f32(f32(scale[0]) * f32(width)) * f32(height))
    max_area = f32(f32(f32(scale[1]) * f32(width)) * f32(height))
    boxes = []
    for i in range(aspect_u.shape[0]):
        box = (0, 0, height, width)
        for k in range(aspect_u.shape[1]):
            ar = f32(f32(f32(aspect_u[i, k]) * f32(hi - lo)) + lo)
            h = int(np.rint(np.sqrt(f32(min_area / ar))))
            max_h = int(np.rint(np.sqrt(f32(max_area / ar))))
            if np.rint(f32(f32(max_h) * ar)) > width:
                max_h = int((width + 0.5 - float(f32(1e-7))) / float(ar))
                if np.rint(f32(f32(max_h) * ar)) > width:
                    max_h -= 1
            max_h = min(max_h, height)
            h = min(h, max_h)
            if h < max_h:
                span = max_h - h + 1
                h += min(int(np.floor(f32(f32(height_u[i, k]) * f32(span)))), span - 1)
            w = int(np.rint(f32(f32(h) * ar)))
            area = f32(w * h)
            if area < min_area:
                h += 1
                w = int(np.rint(f32(f32(h) * ar)))
                area = f32(w * h)
            if area > max_area:
                h -= 1
                w = int(np.rint(f32(f32(h) * ar)))
                area = f32(w * h)
            if area < min_area or area > max_area or w > width or h > height or w <= 0 or h <= 0:
                continue
            if area < 1 or f32(area / f32(width * height)) < f32(covered):
                continue
            y = (
                0
                if h == height
                else min(int(np.floor(f32(offset_u[i, 0]) * f32(height - h))), height - h - 1)
            )
            x = (
                0
                if w == width
                else min(int(np.floor(f32(offset_u[i, 1]) * f32(width - w))), width - w - 1)
            )
            box = (y, x, h, w)
            break
        boxes.append(box)
    return np.array(boxes, dtype=np.int64).reshape(-1, 4)


@pytest.mark.parametrize(
    ("height", "width"), [(224, 224), (32, 32), (375, 500), (500, 333), (7, 9), (10, 300)]
)
def test_tf_crop_boxes_are_the_kernels_boxes(height, width):
    n = 400
    g = torch.Generator().manual_seed(height * 1000 + width)
    boxes = sample_crop_boxes_tf(n, height, width, (0.08, 1.0), (3 / 4, 4 / 3), g)
    g.manual_seed(height * 1000 + width)  # the same draws, in the sampler's order
    aspect_u = torch.rand(n, TF_CROP_ATTEMPTS, generator=g).numpy()
    height_u = torch.rand(n, TF_CROP_ATTEMPTS, generator=g).numpy()
    offset_u = torch.rand(n, 2, generator=g).numpy()
    expected = tf_crop_reference(
        aspect_u, height_u, offset_u, height, width, (0.08, 1.0), (3 / 4, 4 / 3)
    )
    np.testing.assert_array_equal(boxes.numpy(), expected)


def test_tf_crop_boxes_on_awkward_draws():
    """Draws at the ends of [0, 1): the extreme ratios, heights and offsets of every attempt."""
    edges = np.array([0.0, 1e-7, 0.5, 1 - 2**-24], dtype=np.float32)
    grid = np.stack(np.meshgrid(edges, edges, edges, indexing="ij"), -1).reshape(-1, 3)
    n = len(grid)
    aspect_u = np.repeat(grid[:, :1], 3, axis=1)
    height_u = np.repeat(grid[:, 1:2], 3, axis=1)
    offset_u = grid[:, [2, 2]]
    for height, width, scale in [(224, 224, (0.08, 1.0)), (96, 64, (0.2, 0.9)), (5, 5, (0.5, 1))]:
        got = tf_crop_boxes(
            torch.from_numpy(aspect_u),
            torch.from_numpy(height_u),
            torch.from_numpy(offset_u),
            height,
            width,
            scale,
            (3 / 4, 4 / 3),
        )
        want = tf_crop_reference(aspect_u, height_u, offset_u, height, width, scale, (3 / 4, 4 / 3))
        assert got.shape == (n, 4)
        np.testing.assert_array_equal(got.numpy(), want)


def test_tf_crop_boxes_follow_the_official_constraints():
    """What the kernel guarantees: area >= 10% (min_object_covered), ratio range, no bottom or
    right edge for partial boxes, whole image as fallback; heights uniform, not areas."""
    n, height, width = 20000, 224, 224
    boxes = sample_crop_boxes_tf(n, height, width, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator())
    top, left, h, w = boxes.T.double()
    area = h * w / (height * width)
    assert area.min() >= 0.1 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 0.75 - 1 / 160 and ratio.max() <= 4 / 3 + 1 / 160
    partial_h, partial_w = h < height, w < width
    assert (top[partial_h] + h[partial_h] <= height - 1).all()
    assert (left[partial_w] + w[partial_w] <= width - 1).all()
    assert (top[~partial_h] == 0).all() and (left[~partial_w] == 0).all()
    # Heights, not areas, are uniform between their bounds, so TF's crops are smaller on
    # average than torchvision's (area uniform): about 0.42 of the image against 0.48.
    tv = sample_crop_boxes(n, height, width, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator())
    tv_area = (tv[:, 2] * tv[:, 3]).double().mean().item() / (height * width)
    assert 0.40 < area.mean().item() < 0.44 and 0.46 < tv_area < 0.50


def test_tf_crop_method_is_used_by_the_view_params():
    cfg = AugmentConfig(crop_method="tf")
    p = sample_view_params(50, 64, 48, cfg, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    assert torch.equal(p.boxes, sample_crop_boxes_tf(50, 64, 48, (0.08, 1.0), (3 / 4, 4 / 3), g))


# --------------------------------------------------------------------------- bicubic resize


def cubic(x: float, a: float) -> float:
    """The cubic convolution kernel with parameter a (Keys 1981: a = -0.5)."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def tf_resize_matrix(n_in: int, n_out: int, legacy: bool) -> np.ndarray:
    """Rows of weights of TF's bicubic resize along one axis (``resize_bicubic_op.cc``)."""
    a = -0.75 if legacy else -0.5
    scale = f32(f32(n_in) / f32(n_out))
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        # LegacyScaler (TF1 tf.image.resize_bicubic, half_pixel_centers=False) or
        # HalfPixelScaler (TF2 tf.image.resize, method=bicubic)
        legacy_x = f32(f32(o) * scale)
        x = legacy_x if legacy else f32(f32(f32(o) + f32(0.5)) * scale - f32(0.5))
        i = math.floor(x)
        d = float(np.rint(f32(f32(x - f32(i)) * f32(1024)))) / 1024  # the table's step
        taps = [(i - 1, cubic(1 + d, a)), (i, cubic(d, a)), (i + 1, cubic(1 - d, a))]
        taps.append((i + 2, cubic(2 - d, a)))
        if legacy:  # edge pixels repeated
            for j, weight in taps:
                m[o, min(max(j, 0), n_in - 1)] += weight
        else:  # taps outside dropped, the rest renormalised
            kept = [(j, weight) for j, weight in taps if 0 <= j < n_in]
            total = sum(weight for _, weight in kept)
            for j, weight in kept:
                m[o, j] += weight / total
    return m


def tf_resized_crop_reference(image, box, size, legacy, flip=False):
    top, left, h, w = box
    crop = image[:, top : top + h, left : left + w].astype(np.float64)
    out = np.einsum(
        "oh,chw,pw->cop",
        tf_resize_matrix(h, size, legacy),
        crop,
        tf_resize_matrix(w, size, legacy),
    )
    return out[:, :, ::-1] if flip else out


@pytest.mark.parametrize("interpolation", ["bicubic_tf1", "bicubic_tf2"])
@pytest.mark.parametrize(("height", "width", "size"), [(40, 50, 24), (30, 30, 30), (64, 48, 17)])
def test_bicubic_resized_crop_is_tensorflows(interpolation, height, width, size):
    g = torch.Generator().manual_seed(height + width + size)
    images = torch.rand(6, 3, height, width, generator=g)
    boxes = torch.tensor(
        [
            [0, 0, height, width],  # whole image
            [3, 5, 10, 13],  # upsampled
            [height - 30, width - 20, 30, 20],  # touching the bottom right
            [1, 2, height - 1, width - 2],  # mildly downsampled
            [height - 1, 0, 1, 1],  # one pixel
            [0, 0, 2, width],  # two rows
        ]
    )
    flip = torch.tensor([False, True, False, True, False, False])
    out = AF.resized_crop(images, boxes, size, flip, interpolation=interpolation)
    legacy = interpolation == "bicubic_tf1"
    for i in range(6):
        want = tf_resized_crop_reference(
            images[i].double().numpy(), boxes[i].tolist(), size, legacy, bool(flip[i])
        )
        np.testing.assert_allclose(out[i].numpy(), want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("interpolation", ["bicubic_tf1", "bicubic_tf2"])
def test_bicubic_keeps_constants_and_overshoots_edges(interpolation):
    flat = torch.full((1, 3, 9, 9), 0.25)
    box = torch.tensor([[2, 1, 5, 6]])
    assert torch.allclose(
        AF.resized_crop(flat, box, 20, interpolation=interpolation), flat[..., :1, :1]
    )
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    out = AF.resized_crop(step, torch.tensor([[0, 0, 8, 8]]), 32, interpolation=interpolation)
    assert out.min() < 0 and out.max() > 1  # cubic ringing, as TensorFlow's


def test_bicubic_differs_from_torch_interpolate():
    """The reason for the two resizes: torch's bicubic (a = -0.75, half-pixel) is neither."""
    x = torch.rand(1, 3, 11, 13, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[0, 0, 11, 13]])
    torch_bicubic = torch.nn.functional.interpolate(x, size=(29, 29), mode="bicubic")
    for how in ("bicubic_tf1", "bicubic_tf2"):
        assert (AF.resized_crop(x, box, 29, interpolation=how) - torch_bicubic).abs().max() > 1e-3


def test_unknown_interpolation_rejected():
    with pytest.raises(ValueError, match="interpolation"):
        AF.resized_crop(torch.rand(1, 3, 8, 8), torch.tensor([[0, 0, 8, 8]]), 4, interpolation="x")


# --------------------------------------------------------------------------- colour


def tf_rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rgb_to_hsv`` of ``adjust_saturation_op.cc``, vectorised over pixels (hue in turns)."""
    r, g, b = rgb
    v = np.maximum(np.maximum(r, g), b)
    rng = v - np.minimum(np.minimum(r, g), b)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(v > 0, rng / v, 0.0)
        norm = 1.0 / (6.0 * rng)
        h = np.where(
            r == v, norm * (g - b), np.where(g == v, norm * (b - r) + 2 / 6, norm * (r - g) + 4 / 6)
        )
    h = np.where(rng <= 0, 0.0, h)
    return np.where(h < 0, h + 1, h), s, v


def tf_hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``hsv_to_rgb`` of ``adjust_saturation_op.cc``: six sextants, chroma ``c = s v``."""
    c = s * v
    m = v - c
    dh = h * 6
    sector = dh.astype(np.int64)
    x = c * (1 - np.abs(np.mod(dh, 2.0) - 1))
    zero = np.zeros_like(c)
    table = {
        0: (c, x, zero),
        1: (x, c, zero),
        2: (zero, c, x),
        3: (zero, x, c),
        4: (x, zero, c),
        5: (c, zero, x),
    }
    out = np.zeros((3, *h.shape))
    for k, channels in table.items():
        for ch in range(3):
            out[ch] = np.where(sector == k, channels[ch] + m, out[ch])
    return out


def tf_op(name: str, image: np.ndarray, value: float) -> np.ndarray:
    """One official jitter operation on a float64 ``[3, H, W]`` image, then the clip."""
    if name == "brightness_additive":  # tf.image.random_brightness: x + delta
        out = image + value
    elif name == "brightness_multiplicative":  # impl="simclrv2": x * factor
        out = image * value
    elif name == "contrast":  # tf.image.adjust_contrast: per-channel mean
        mean = image.mean(axis=(1, 2), keepdims=True)
        out = (image - mean) * value + mean
    elif name == "saturation":  # tf.image.adjust_saturation: S * f clipped to [0, 1]
        h, s, v = tf_rgb_to_hsv(image)
        out = tf_hsv_to_rgb(h, np.clip(s * value, 0, 1), v)
    elif name == "hue":  # tf.image.adjust_hue: H + delta mod 1
        h, s, v = tf_rgb_to_hsv(image)
        out = tf_hsv_to_rgb(np.mod(h + value, 1.0), s, v)
    else:
        raise AssertionError(name)
    return np.clip(out, 0, 1)


def images(n: int = 6, size: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[0, :, :3] = 0.4  # gray pixels
    x[1, :, :2] = 0.0  # black
    x[1, 0, 2:4] = x[1, 1, 2:4]  # red == green
    x[2] = (x[2] * 255).round() / 255
    return x


@pytest.mark.parametrize(
    ("name", "kernel", "low", "high"),
    [
        ("brightness_additive", AF.adjust_brightness_additive, -0.8, 0.8),
        ("contrast", AF.adjust_contrast_tf, 0.2, 1.8),
        ("saturation", AF.adjust_saturation_tf, 0.0, 1.8),
        ("saturation", AF.adjust_saturation_tf, 1.5, 4.0),  # the clip of S at 1 binds
    ],
)
def test_tf_color_ops_are_tensorflows(name, kernel, low, high):
    x = images()
    values = torch.linspace(low, high, len(x))
    out = kernel(x, values)
    for i in range(len(x)):
        want = tf_op(name, x[i].double().numpy(), float(values[i]))
        np.testing.assert_allclose(out[i].numpy(), want, atol=1e-5, rtol=0)


def test_hue_is_tensorflows_too():
    x = images()
    shifts = torch.linspace(-0.2, 0.2, len(x))
    out = AF.adjust_hue(x, shifts)
    for i in range(len(x)):
        want = tf_op("hue", x[i].double().numpy(), float(shifts[i]))
        np.testing.assert_allclose(out[i].numpy(), want, atol=2e-5, rtol=0)


def test_tf_saturation_keeps_overshooting_pixels_consistent():
    """Values outside [0, 1] (bicubic overshoot before the first clip) follow the HSV formulas."""
    x = torch.tensor([[[[-0.1, 1.2, 0.3]], [[0.5, 0.2, -0.05]], [[0.2, 1.1, 0.3]]]])
    x = x.permute(0, 1, 3, 2).contiguous()  # [1, 3, 3, 1]: three pixels
    for f in (0.3, 1.0, 1.7):
        out = AF._saturate_tf(x, torch.tensor([f]))
        want = tf_op("saturation", x[0].double().numpy(), f)
        np.testing.assert_allclose(out[0].clamp(0, 1).numpy(), want, atol=1e-6, rtol=0)


NAMES = {BRIGHTNESS: "brightness", CONTRAST: "contrast", SATURATION: "saturation", HUE: "hue"}


@pytest.mark.parametrize("brightness_mode", ["additive", "multiplicative"])
def test_tf_color_jitter_is_color_jitter_rand(brightness_mode):
    """The official ``color_jitter_rand``: the four operations in random order, each clipped."""
    n = 24
    cfg = AugmentConfig(size=20, jitter_p=0.75, brightness_mode=brightness_mode, color_mode="tf")
    params = sample_view_params(n, 20, 20, cfg, torch.Generator().manual_seed(2))
    x = images(n, 20, seed=3)
    out = AF.color_jitter(x, params, brightness_mode=brightness_mode, color_mode="tf")
    assert params.jitter.any() and not params.jitter.all()
    for i in range(n):
        want = x[i].double().numpy()
        if params.jitter[i]:
            for op in params.jitter_order[i].tolist():
                name = NAMES[op]
                if op == BRIGHTNESS:
                    name = f"brightness_{brightness_mode}"
                value = float(getattr(params, NAMES[op])[i])
                want = tf_op(name, want, value)
        np.testing.assert_allclose(out[i].numpy(), want, atol=1e-5, rtol=0)


def test_additive_brightness_draws_offsets():
    b = 0.8
    p = sample_view_params(
        5000, 8, 8, AugmentConfig(brightness_mode="additive"), torch.Generator().manual_seed(0)
    )
    assert p.brightness.min() >= -b and p.brightness.max() <= b
    assert p.brightness.min() < -0.75 and p.brightness.max() > 0.75
    assert abs(p.brightness.mean().item()) < 0.03


def test_bad_modes_rejected():
    x, p = images(3), sample_view_params(3, 20, 20, AugmentConfig(), torch.Generator())
    with pytest.raises(ValueError, match="brightness_mode"):
        AF.color_jitter(x, p, brightness_mode="x")
    with pytest.raises(ValueError, match="color_mode"):
        AF.color_jitter(x, p, color_mode="x")
    with pytest.raises(ValueError, match="padding"):
        AF.gaussian_blur(x, torch.ones(3), 3, padding="x")


# --------------------------------------------------------------------------- blur


def tf_blur_reference(image: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """``data_util.gaussian_blur``: separable, horizontal then vertical, ``SAME`` (zero) padding."""
    radius = kernel_size // 2
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()
    padded = np.pad(image, ((0, 0), (0, 0), (radius, radius)))
    wide = sum(weights[t] * padded[:, :, t : t + image.shape[2]] for t in range(len(taps)))
    padded = np.pad(wide, ((0, 0), (radius, radius), (0, 0)))
    return sum(weights[t] * padded[:, t : t + image.shape[1], :] for t in range(len(taps)))


def test_zero_padded_blur_is_tensorflows():
    x = images(4, 24)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    mask = torch.tensor([True, True, False, True])
    out = AF.gaussian_blur(x, sigma, 5, mask, padding="zeros")
    for i in range(4):
        want = x[i].double().numpy()
        if mask[i]:
            want = tf_blur_reference(want, 5, float(sigma[i]))
        np.testing.assert_allclose(out[i].numpy(), want, atol=1e-6, rtol=0)
    # Zero padding has no size limit; the corner of a white image darkens.
    white = AF.gaussian_blur(torch.ones(1, 3, 4, 4), torch.tensor([2.0]), 9, padding="zeros")
    assert white[0, 0, 0, 0] < 0.5 and white.max() < 1


@pytest.mark.parametrize("size", [224, 96, 32, 100, 105, 64])
def test_blur_kernel_is_the_official_height_over_ten(size):
    official = 2 * ((size // 10) // 2) + 1  # kernel_size=height//10, radius = int(k / 2)
    assert AF.blur_kernel_size(size, 0.1) == official


# --------------------------------------------------------------------------- views and loader


def official_cfg(**kw) -> AugmentConfig:
    return AugmentConfig(**{**OFFICIAL, **kw})


def test_official_views_match_the_functional_composition():
    cfg = official_cfg(size=24, grayscale_p=0.5)
    batch = torch.randint(0, 256, (5, 3, 40, 36), dtype=torch.uint8, generator=torch.Generator())
    a, b = SimCLRViews(cfg, seed=7)(batch)
    p = sample_view_params(10, 40, 36, cfg, torch.Generator().manual_seed(7))
    x = batch.float() / 255
    x = torch.cat(
        [
            AF.resized_crop(x, p.boxes[:5], 24, p.flip[:5], "bicubic_tf1"),
            AF.resized_crop(x, p.boxes[5:], 24, p.flip[5:], "bicubic_tf1"),
        ]
    ).clamp(0, 1)
    x = AF.color_jitter(x, p, brightness_mode="additive", color_mode="tf")
    x = AF.grayscale(x, p.grayscale)
    x = AF.gaussian_blur(x, p.sigma, AF.blur_kernel_size(24, 0.1), p.blur, padding="zeros")
    assert torch.allclose(a, x[:5], atol=1e-6) and torch.allclose(b, x[5:], atol=1e-6)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("shape", [(4, 3, 30, 30), (4, 2, 3, 16, 16)])
def test_official_views_run_in_cpu_groups_of_one(shape, monkeypatch):
    cfg = official_cfg(size=16, grayscale_p=0.5)
    batch = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator())
    a1, b1 = SimCLRViews(cfg, seed=1)(batch)
    monkeypatch.setattr(AF, "CPU_GROUP_PIXELS", 1)
    a2, b2 = SimCLRViews(cfg, seed=1)(batch)
    assert torch.allclose(a1, a2, atol=1e-6) and torch.allclose(b1, b2, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "interpolation"),
    [("tf", "bicubic_tf2"), ("tf", "bilinear"), ("torchvision", "bicubic_tf1")],
)
def test_two_crops_honour_the_crop_settings(method, interpolation):
    cfg = AugmentConfig(size=24, crop_method=method, interpolation=interpolation)
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=torch.Generator())
    crops = TwoCrops(cfg)
    torch.manual_seed(3)
    out = crops(image)
    assert out.shape == (2, 3, 24, 24) and out.dtype == torch.uint8
    torch.manual_seed(3)
    for k in range(2):
        top, left, h, w = crops.crop.box(image)  # the same draws from the global generator
        if interpolation == "bilinear":
            continue
        want = tf_resized_crop_reference(
            image.double().numpy() / 255, (top, left, h, w), 24, interpolation == "bicubic_tf1"
        )
        want = np.clip(np.rint(want * 255), 0, 255)
        assert np.abs(out[k].double().numpy() - want).max() <= 1  # rounding of exact halves
    if method == "tf":
        torch.manual_seed(3)
        boxes = sample_crop_boxes_tf(1, 50, 70, (0.08, 1.0), (3 / 4, 4 / 3), None)
        torch.manual_seed(3)
        assert tuple(boxes[0].tolist()) == crops.crop.box(image)


def test_two_crops_default_is_still_torchvision():
    import torchvision.transforms.v2 as T

    assert isinstance(TwoCrops(AugmentConfig()).crop, T.RandomResizedCrop)


# --------------------------------------------------------------------------- config and recipes


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("crop_method", "pil"),
        ("interpolation", "bicubic"),
        ("brightness_mode", "gamma"),
        ("color_mode", "pil"),
        ("blur_padding", "same"),
    ],
)
def test_bad_fidelity_settings_are_user_errors(key, value):
    with pytest.raises(UserError, match=key):
        validate(build_config({"augment": {key: value}}))


def test_defaults_keep_torchvision_semantics():
    cfg = AugmentConfig()
    assert (cfg.crop_method, cfg.interpolation, cfg.brightness_mode) == (
        "torchvision",
        "bilinear",
        "multiplicative",
    )
    assert (cfg.color_mode, cfg.blur_padding) == ("torchvision", "reflect")


@pytest.mark.parametrize(
    ("recipe", "interpolation", "brightness"),
    [
        ("imagenet-resnet50", "bicubic_tf1", "additive"),
        ("imagenet-v2-resnet152", "bicubic_tf1", "multiplicative"),
        ("cifar10-resnet18", "bicubic_tf2", "multiplicative"),
    ],
)
def test_paper_recipes_use_the_official_semantics(recipe, interpolation, brightness):
    cfg = build_config(recipe_overrides(recipe))
    validate(cfg)
    a = cfg.augment
    assert (a.crop_method, a.color_mode) == ("tf", "tf")
    assert (a.interpolation, a.brightness_mode) == (interpolation, brightness)
    assert a.blur_padding == "zeros"
    printed = to_yaml(cfg)  # what --print-config shows
    for key in OFFICIAL:
        assert f"{key}: " in printed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_official_kernels_on_cuda_match_cpu():
    n = 12
    cfg = official_cfg(size=24, jitter_p=1.0)
    p = sample_view_params(n, 40, 36, cfg, torch.Generator().manual_seed(0))
    x = images(n, 40)[..., :36]
    u = [torch.rand(n, TF_CROP_ATTEMPTS), torch.rand(n, TF_CROP_ATTEMPTS), torch.rand(n, 2)]
    cpu_boxes = tf_crop_boxes(*u, 40, 36, (0.08, 1.0), (3 / 4, 4 / 3))
    gpu_boxes = tf_crop_boxes(*(t.cuda() for t in u), 40, 36, (0.08, 1.0), (3 / 4, 4 / 3))
    assert torch.equal(gpu_boxes.cpu(), cpu_boxes)
    for how in ("bicubic_tf1", "bicubic_tf2"):
        cpu = AF.resized_crop(x, p.boxes, 24, p.flip, how)
        gpu = AF.resized_crop(x.cuda(), p.boxes.cuda(), 24, p.flip.cuda(), how)
        assert (gpu.cpu() - cpu).abs().max() < 1e-5, how
    y = cpu.clamp(0, 1)
    kw = {"brightness_mode": "additive", "color_mode": "tf"}
    cpu = AF.color_jitter(y, p, **kw)
    gpu = AF.color_jitter(y.cuda(), p.select(slice(None)), **kw)
    assert (gpu.cpu() - cpu).abs().max() < 1e-4
    cpu = AF.gaussian_blur(y, p.sigma, 5, p.blur, padding="zeros")
    gpu = AF.gaussian_blur(y.cuda(), p.sigma.cuda(), 5, p.blur.cuda(), padding="zeros")
    assert (gpu.cpu() - cpu).abs().max() < 1e-5
    batch = torch.randint(0, 256, (4, 3, 40, 36), dtype=torch.uint8).cuda()
    a, _ = SimCLRViews(cfg, seed=1)(batch)
    assert a.device.type == "cuda" and a.min() >= 0 and a.max() <= 1
