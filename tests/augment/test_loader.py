"""TwoCrops (loader workers) and the evaluation resize."""

import PIL.Image
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from simclr.augment import TwoCrops, eval_resize
from simclr.config import AugmentConfig


def uint8_image(*shape: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator())


def test_two_crops_shape_dtype_and_independence():
    torch.manual_seed(0)
    crops = TwoCrops(AugmentConfig(size=32))
    out = crops(uint8_image(3, 60, 80))
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert not torch.equal(out[0], out[1])
    gray = crops(uint8_image(1, 50, 40))
    assert gray.shape == (2, 1, 32, 32)


def test_two_crops_accepts_pil_and_floats_and_rejects_other_types():
    crops = TwoCrops(AugmentConfig(size=16))
    pil = PIL.Image.fromarray(uint8_image(30, 20, 3).numpy())
    assert crops(pil).shape == (2, 3, 16, 16)
    deep = crops(torch.rand(5, 30, 20))  # high bit depth, five channels: kept as they are
    assert deep.shape == (2, 5, 16, 16) and deep.dtype == torch.float32
    with pytest.raises(ValueError):
        crops(torch.zeros(3, 30, 20, dtype=torch.int32))


def test_eval_resize_large_image_resizes_then_centre_crops():
    image = uint8_image(3, 300, 400)
    out = eval_resize(image, 224)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    expected = TF.center_crop(TF.resize(image, [256], antialias=True), [224, 224])
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    ("shape", "size"), [((3, 32, 32), 32), ((3, 28, 28), 32), ((1, 20, 30), 32)]
)
def test_eval_resize_small_image_used_whole(shape, size):
    image = uint8_image(*shape)
    out = eval_resize(image, size)
    assert out.shape == (shape[0], size, size)
    if shape[1:] == (size, size):
        assert torch.equal(out, image)
