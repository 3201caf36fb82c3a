"""SimCLRViews: shapes, the pre-cropped path, stage switches, seeding and RNG state."""

import pytest
import torch

from simclr.augment import SimCLRViews, reference_transform, sample_view_params
from simclr.augment import functional as AF
from simclr.augment.views import progressive_size
from simclr.config import AugmentConfig

OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
NO_CROP = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))


def uint8_images(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def test_output_shapes_dtype_range():
    views = SimCLRViews(AugmentConfig(size=32))
    a, b = views(uint8_images(5, 3, 40, 48))
    for v in (a, b):
        assert v.shape == (5, 3, 32, 32) and v.dtype == torch.float32
        assert v.min() >= 0 and v.max() <= 1
        assert v.is_contiguous()
    assert not torch.equal(a, b)  # independent parameters for the two views


def test_gray_and_float_inputs():
    views = SimCLRViews(AugmentConfig(size=16))
    a, _ = views(uint8_images(3, 1, 20, 20))
    assert a.shape == (3, 3, 16, 16)
    a, _ = views(torch.rand(3, 3, 20, 20, dtype=torch.float64))
    assert a.dtype == torch.float32
    a, _ = views(uint8_images(3, 4, 20, 20))  # other channel counts are kept
    assert a.shape == (3, 4, 16, 16)
    with pytest.raises(ValueError):
        views(uint8_images(3, 20, 20))
    with pytest.raises(TypeError):
        views(torch.zeros(3, 3, 20, 20, dtype=torch.int32))


def test_empty_batch():
    a, b = SimCLRViews(AugmentConfig(size=16))(uint8_images(0, 3, 20, 20))
    assert a.shape == b.shape == (0, 3, 16, 16)


def test_matches_functional_composition_with_same_generator():
    """View 1 uses the first half of a 2B batch of parameters, view 2 the second."""
    cfg = AugmentConfig(size=24, grayscale_p=0.5)
    images = uint8_images(6, 3, 32, 32)
    a, b = SimCLRViews(cfg, seed=3)(images)
    p = sample_view_params(12, 32, 32, cfg, torch.Generator().manual_seed(3))
    x = images.float() / 255
    x = torch.cat([AF.resized_crop(x, p.boxes[:6], 24), AF.resized_crop(x, p.boxes[6:], 24)])
    x = AF.hflip(x, p.flip)
    x = AF.color_jitter(x, p)
    x = AF.grayscale(x, p.grayscale)
    x = AF.gaussian_blur(x, p.sigma, AF.blur_kernel_size(24, 0.1), p.blur)
    assert torch.allclose(a, x[:6], atol=1e-6) and torch.allclose(b, x[6:], atol=1e-6)


def test_precropped_views_match_functional_composition_with_same_generator():
    """Pre-cut crops: every stage but the crop, flip included, with the same parameters."""
    cfg = AugmentConfig(size=24, grayscale_p=0.5)
    crops = uint8_images(6, 2, 3, 24, 24)
    a, b = SimCLRViews(cfg, seed=4)(crops)
    p = sample_view_params(12, 24, 24, cfg, torch.Generator().manual_seed(4))
    x = crops.transpose(0, 1).reshape(12, 3, 24, 24).float() / 255
    x = AF.hflip(x, p.flip)
    x = AF.color_jitter(x, p)
    x = AF.grayscale(x, p.grayscale)
    x = AF.gaussian_blur(x, p.sigma, AF.blur_kernel_size(24, 0.1), p.blur)
    assert p.flip.any() and not p.flip.all()
    assert torch.allclose(a, x[:6], atol=1e-6) and torch.allclose(b, x[6:], atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 3, 40, 40), (6, 2, 3, 24, 24)])
def test_cpu_groups_of_one_sample_give_the_same_views(shape, monkeypatch):
    # On the CPU the kernels run over groups of samples; groups of one must change nothing.
    cfg = AugmentConfig(size=24, grayscale_p=0.5)
    images = uint8_images(*shape)
    whole = SimCLRViews(cfg, seed=5)(images)
    monkeypatch.setattr(AF, "CPU_GROUP_PIXELS", 1)
    grouped = SimCLRViews(cfg, seed=5)(images)
    for one, other in zip(whole, grouped, strict=True):
        assert torch.allclose(one, other, atol=1e-6)


def test_precropped_input_skips_crop():
    cfg = AugmentConfig(size=16, **OFF)
    crops = uint8_images(4, 2, 3, 16, 16)
    a, b = SimCLRViews(cfg)(crops)
    assert torch.equal(a, crops[:, 0].float() / 255)
    assert torch.equal(b, crops[:, 1].float() / 255)
    a, b = SimCLRViews(AugmentConfig(size=16))(crops)
    assert a.shape == b.shape == (4, 3, 16, 16)
    with pytest.raises(ValueError):
        SimCLRViews(AugmentConfig(size=24))(crops)
    with pytest.raises(ValueError):
        SimCLRViews(AugmentConfig(size=16))(uint8_images(4, 3, 3, 16, 16))


def test_progressive_sizes_grow_in_8_px_steps_to_full_size_at_the_set_fraction():
    cfg = AugmentConfig(size=32, progressive_from=0.5, full_size_at=0.75)
    sizes = {p: progressive_size(cfg, p) for p in (0.0, 0.37, 0.375, 0.74, 0.75, 1.0)}
    assert sizes == {0.0: 16, 0.37: 16, 0.375: 24, 0.74: 24, 0.75: 32, 1.0: 32}
    odd = AugmentConfig(size=96, progressive_from=0.46, full_size_at=0.5)  # starts at 44 px
    assert [progressive_size(odd, p) for p in (0.0, 0.1, 0.49, 0.5)] == [44, 52, 92, 96]
    assert progressive_size(AugmentConfig(size=12, progressive_from=0.1), 0.0) == 8
    assert progressive_size(AugmentConfig(size=32), 0.0) == 32  # off without progressive_from


@pytest.mark.parametrize("precropped", [False, True])
def test_set_progress_changes_the_side_of_the_views(precropped):
    views = SimCLRViews(AugmentConfig(size=32, progressive_from=0.5, full_size_at=0.5))
    images = uint8_images(3, 2, 3, 32, 32) if precropped else uint8_images(3, 3, 40, 40)
    assert views(images)[0].shape[-1] == 32  # full size until the loop says where it is
    for progress, side in ((0.0, 16), (0.3, 24), (0.5, 32)):
        views.set_progress(progress)
        a, b = views(images)
        assert a.shape == b.shape == (3, 3, side, side)
        assert a.min() >= 0 and a.max() <= 1


def test_all_stages_off_is_identity():
    images = uint8_images(4, 3, 32, 32)
    a, b = SimCLRViews(AugmentConfig(size=32, **OFF, **NO_CROP))(images)
    assert (a - images.float() / 255).abs().max() < 1e-5
    assert (b - images.float() / 255).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("stage", "check"),
    [
        ("flip_p", lambda out, x: torch.equal(out, x.flip(-1))),
        ("grayscale_p", lambda out, x: torch.equal(out[:, 0], out[:, 1])),
        ("jitter_p", lambda out, x: (out - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3),
        ("blur_p", lambda out, x: (out - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3),
    ],
)
def test_single_stage_with_p1_always_applies(stage, check):
    # sigma at least 1 so that every blurred view visibly changes (0.1 is nearly a no-op)
    cfg = AugmentConfig(size=32, **{**OFF, stage: 1.0}, **NO_CROP, blur_sigma=(1.0, 2.0))
    images = uint8_images(8, 3, 32, 32)
    x = images.float() / 255
    for out in SimCLRViews(cfg)(images):
        assert check(out, x)


def test_blur_skipped_when_p_is_zero(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("blur should be skipped")

    monkeypatch.setattr(AF, "gaussian_blur", boom)
    SimCLRViews(AugmentConfig(size=16, blur_p=0.0))(uint8_images(2, 3, 20, 20))


def test_blur_kernel_from_fraction():
    assert SimCLRViews(AugmentConfig(size=224)).blur_kernel == 23
    assert SimCLRViews(AugmentConfig(size=96)).blur_kernel == 9
    assert SimCLRViews(AugmentConfig(size=32)).blur_kernel == 3


def test_seed_reproduces_views_and_different_seeds_differ():
    cfg = AugmentConfig(size=24)
    images = uint8_images(4, 3, 32, 32)
    a1, b1 = SimCLRViews(cfg, seed=7)(images)
    a2, b2 = SimCLRViews(cfg, seed=7)(images)
    a3, _ = SimCLRViews(cfg, seed=8)(images)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, a3)


def test_rng_state_round_trip():
    cfg = AugmentConfig(size=24)
    images = uint8_images(4, 3, 32, 32)
    views = SimCLRViews(cfg, seed=1)
    assert views.get_rng_state().numel() == 0  # fresh: no generator yet
    views(images)
    state = views.get_rng_state()
    expected = views(images)
    assert not torch.equal(expected[0], views(images)[0])  # the stream moves on
    views.set_rng_state(state)
    again = views(images)
    assert torch.equal(expected[0], again[0]) and torch.equal(expected[1], again[1])
    # A new module resumes from a saved state before its first call.
    resumed = SimCLRViews(cfg, seed=99)
    resumed.set_rng_state(state)
    assert torch.equal(resumed.get_rng_state(), state)
    assert torch.equal(resumed(images)[0], expected[0])
    # An empty state resets to the seed.
    views.set_rng_state(torch.empty(0, dtype=torch.uint8))
    assert torch.equal(views(images)[0], SimCLRViews(cfg, seed=1)(images)[0])


def test_reference_transform_recipe():
    cfg = AugmentConfig(size=24)
    transform = reference_transform(cfg)
    out = transform(uint8_images(3, 40, 30))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_batched_statistics_close_to_reference():
    """Loose sanity check: mean pixel and colourfulness of views match the per-image recipe."""
    cfg = AugmentConfig(size=16)
    images = uint8_images(64, 3, 24, 24)
    images[:, 0] //= 2  # a colour cast, so jitter and grayscale change the statistics
    ours = torch.cat(SimCLRViews(cfg)(images))
    torch.manual_seed(0)
    transform = reference_transform(cfg)
    ref = torch.stack([transform(img) for img in images for _ in range(2)])
    assert abs(ours.mean() - ref.mean()) < 0.03
    assert abs(ours.std(dim=1).mean() - ref.std(dim=1).mean()) < 0.03


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_cuda_generator():
    views = SimCLRViews(AugmentConfig(size=24), seed=2)
    images = uint8_images(4, 3, 32, 32).cuda()
    a, b = views(images)
    assert a.device.type == "cuda" and a.shape == (4, 3, 24, 24)
    state = views.get_rng_state()
    first = views(images)
    views.set_rng_state(state)
    assert torch.equal(views(images)[0], first[0])
    with pytest.raises(RuntimeError):
        views(images.cpu())


# --- images that are not RGB (issue 16) ----------------------------------------------------------


def test_identical_channels_stay_identical_through_every_stage():
    """Crop, flip, brightness, contrast and blur treat the C channels of an image alike."""
    cfg = AugmentConfig(size=16, jitter_p=1.0, blur_p=1.0, flip_p=0.5)
    one = torch.rand(6, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    for channels in (2, 4, 5):
        a, b = SimCLRViews(cfg, seed=1)(one.expand(-1, channels, -1, -1))
        for view in (a, b):
            assert view.shape == (6, channels, 16, 16)
            assert torch.equal(view, view[:, :1].expand_as(view))


def test_views_of_other_channel_counts_skip_hue_saturation_and_grayscale():
    """With only RGB operations in the recipe, C != 3 gets the geometric stages alone."""
    images = uint8_images(6, 5, 24, 24)
    rgb_only = AugmentConfig(
        size=16, jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.8, hue=0.5,
        grayscale_p=1.0, blur_p=0.0,
    )  # fmt: skip
    geometric = AugmentConfig(size=16, **{**OFF, "flip_p": 0.5})
    ours = SimCLRViews(rgb_only, seed=4)(images)
    plain = SimCLRViews(geometric, seed=4)(images)  # same draws: same boxes and flips
    for got, want in zip(ours, plain, strict=True):
        assert torch.equal(got, want)


def test_the_first_three_of_four_channels_see_the_rgb_views_without_rgb_operations():
    """The same seed gives the same crop, flip, brightness and blur whatever the channels."""
    cfg = AugmentConfig(
        size=16, jitter_p=1.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.5
    )
    four = uint8_images(6, 4, 24, 24)
    rgb_views = SimCLRViews(cfg, seed=2)(four[:, :3].contiguous())
    four_views = SimCLRViews(cfg, seed=2)(four)
    for rgb, wide in zip(rgb_views, four_views, strict=True):
        assert torch.allclose(wide[:, :3], rgb, atol=1e-6)


def test_float_views_keep_sixteen_bit_steps():
    steps = torch.arange(24 * 24, dtype=torch.float32).view(1, 1, 24, 24) / 65535
    cfg = AugmentConfig(size=24, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **OFF)
    a, _ = SimCLRViews(cfg)(steps.expand(2, 5, -1, -1))
    assert a.dtype == torch.float32 and (a - steps).abs().max() < 1e-7
