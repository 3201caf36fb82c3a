"""The SimCLR v2 model zoo (issue 13): sizes against the papers, layers, padding, training."""

import pytest
import torch
import torch.nn.functional as F

from simclr.config import ModelConfig
from simclr.errors import UserError
from simclr.models import SimCLR, create_backbone, list_backbones
from simclr.models.resnet_v2 import (
    AvgPool2x2,
    MaxPoolSame,
    ResNetV2,
    SelectiveKernelConv,
    V2Bottleneck,
    zoo_name,
)

ZOO = [zoo_name(d, w, sk) for d in (50, 101, 152) for w in (1, 2, 3, 4) for sk in (False, True)]

# Encoder parameters in millions (no classifier, no head): SimCLR v1 paper (ResNet-50 1x/2x/4x)
# and SimCLR v2 paper, Table 1 (also the official README's table of checkpoints).
PAPER_MILLIONS = {
    "resnet50-1x": 24,
    "resnet50-2x": 94,
    "resnet50-4x": 375,
    "resnet152-3x-sk": 795,
    "resnet50-1x-sk": 35,
    "resnet50-2x-sk": 140,
    "resnet101-1x": 43,
    "resnet101-1x-sk": 65,
    "resnet101-2x": 170,
    "resnet101-2x-sk": 257,
    "resnet152-1x": 58,
    "resnet152-1x-sk": 89,
    "resnet152-2x": 233,
    "resnet152-2x-sk": 354,
}


def meta_backbone(name, **kwargs):
    with torch.device("meta"):
        return create_backbone(name, **kwargs)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(PAPER_MILLIONS))
def test_parameter_counts_match_the_papers(name):
    # Within 2 %, or within the papers' rounding to the million: ResNet-50 1x has 23.51M
    # (exactly torchvision's ResNet-50 without its classifier), 2.05 % under the "24M" that
    # the papers round it to.
    model, _ = meta_backbone(name)
    millions = count(model) / 1e6
    paper = PAPER_MILLIONS[name]
    assert abs(millions - paper) <= max(0.02 * paper, 0.5)


def test_every_zoo_name_is_registered_with_its_feature_dim():
    names = list_backbones()
    assert set(ZOO) <= set(names)
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(names)
    for name in ZOO:
        width = int(name.split("-")[1][:-1])
        model, dim = meta_backbone(name)
        assert isinstance(model, ResNetV2)
        assert dim == model.feature_dim == 2048 * width
        assert model.sk_ratio == (0.0625 if name.endswith("-sk") else 0.0)


def test_plain_zoo_resnet50_has_torchvision_resnet50_size():
    zoo, _ = meta_backbone("resnet50-1x")
    tv, _ = meta_backbone("resnet50")
    assert count(zoo) == count(tv)


def test_width_is_in_the_name():
    with pytest.raises(UserError, match="model.width at 1"):
        create_backbone("resnet50-2x", width=0.5)
    with pytest.raises(UserError, match="unknown stem"):
        create_backbone("resnet50-1x", stem="tiny")


def test_from_config_uses_the_zoo():
    with torch.device("meta"):
        model = SimCLR.from_config(ModelConfig(backbone="resnet101-2x-sk", head="v2"))
    assert isinstance(model.backbone, ResNetV2) and model.feature_dim == 4096
    assert model.head.layers[0].in_features == 4096


def test_selective_kernels_change_stem_blocks_and_shortcuts():
    sk, _ = meta_backbone("resnet50-1x-sk")
    plain, _ = meta_backbone("resnet50-1x")
    stem_convs = [m for m in sk.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in stem_convs] == [
        ((3, 3), (2, 2), 32),
        ((3, 3), (1, 1), 32),
        ((3, 3), (1, 1), 64),
    ]
    assert isinstance(sk.stem[-1], MaxPoolSame)
    plain_convs = [m for m in plain.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in plain_convs] == [((7, 7), (2, 2))]
    first = sk.layer2[0]
    assert isinstance(first.spatial, SelectiveKernelConv)
    assert first.spatial.paths[0].out_channels == 2 * 128 and first.spatial.paths[0].stride == (
        2,
        2,
    )
    pool, projection = first.shortcut
    assert isinstance(pool, AvgPool2x2) and pool.stride == 2
    assert projection[0].stride == (1, 1) and projection[0].out_channels == 512
    assert sk.layer1[0].shortcut[0].stride == 1  # the official code pools in stage 1 too
    assert plain.layer2[0].shortcut[0].stride == (2, 2)
    assert isinstance(plain.layer2[0].spatial[0], torch.nn.Conv2d)
    # attention width: max(planes * 0.0625, 32)
    assert sk.layer1[0].spatial.attention[0][0].out_channels == 32
    big, _ = meta_backbone("resnet152-3x-sk")
    assert big.layer4[0].spatial.attention[0][0].out_channels == int(1536 * 0.0625)


def test_cifar_stem_is_one_conv_with_or_without_sk():
    for name in ("resnet50-1x", "resnet50-1x-sk"):
        model, _ = meta_backbone(name, stem="cifar")
        kinds = [type(m).__name__ for m in model.stem]
        assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"]
        assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)


def test_zero_init_residual_option():
    def gammas(model, block_type, attr):
        return [getattr(m, attr).weight for m in model.modules() if isinstance(m, block_type)]

    zoo, _ = create_backbone("resnet50-1x-sk", stem="cifar")
    assert all((g == 0).all() for g in gammas(zoo, V2Bottleneck, "last_bn"))
    zoo, _ = create_backbone("resnet50-1x", zero_init_residual=False)
    assert all((g == 1).all() for g in gammas(zoo, V2Bottleneck, "last_bn"))
    from torchvision.models.resnet import BasicBlock

    tv, _ = create_backbone("resnet18", width=0.25)  # torchvision family: unchanged default
    assert all((g == 1).all() for g in gammas(tv, BasicBlock, "bn2"))
    tv, _ = create_backbone("resnet18", width=0.25, zero_init_residual=True)
    assert all((g == 0).all() for g in gammas(tv, BasicBlock, "bn2"))


def test_zero_init_blocks_start_as_identity_on_the_branch():
    model = ResNetV2(50, 1, sk_ratio=0.0625, stem="cifar")
    block = model.layer2[0]
    x = torch.rand(2, 256, 8, 8)
    torch.testing.assert_close(block(x), F.relu(block.shortcut(x)))


def test_max_pool_pads_like_tensorflow_same():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = MaxPoolSame(3, 2)(x)
    # even size: windows start at rows/columns 0 and 2 (padding on the bottom/right only)
    assert out.flatten().tolist() == [10.0, 11.0, 14.0, 15.0]
    assert MaxPoolSame(3, 2)(torch.rand(1, 1, 7, 7)).shape[-1] == 4
    assert MaxPoolSame(3, 2)(torch.rand(1, 1, 112, 112)).shape[-1] == 56


def test_avg_pool_pads_like_the_official_shortcut():
    x = torch.rand(1, 2, 6, 6)
    torch.testing.assert_close(AvgPool2x2(2)(x), F.avg_pool2d(x, 2))
    assert AvgPool2x2(2)(torch.rand(1, 1, 7, 7)).shape[-1] == 4
    same = AvgPool2x2(1)(x)
    assert same.shape == x.shape
    torch.testing.assert_close(same[..., 0, 0], x[..., :2, :2].mean((-2, -1)))
    # the last row/column average only the pixels inside the image
    torch.testing.assert_close(same[..., -1, 0], x[..., -1, :2].mean(-1))
    torch.testing.assert_close(same[..., -1, -1], x[..., -1, -1])


def test_selective_kernel_mixes_two_paths_with_a_softmax():
    torch.manual_seed(0)
    sk = SelectiveKernelConv(8, 4, stride=1, sk_ratio=0.0625)
    assert sk.attention[0][0].out_channels == 32  # min_dim
    x = torch.rand(3, 8, 5, 5)
    paths = sk.paths(x)
    a, b = paths[:, :4], paths[:, 4:]  # the official split: first half, second half
    logits = sk.attention((a + b).mean((-2, -1), keepdim=True))
    wa = torch.softmax(torch.stack([logits[:, :4], logits[:, 4:]]), 0)[0]
    torch.testing.assert_close(sk(x), wa * a + (1 - wa) * b)


def _nt_xent(z, temperature=0.5):
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, targets)


@pytest.mark.parametrize("name", ["resnet50-1x", "resnet50-1x-sk"])
def test_forward_shape_and_one_training_step(name):
    torch.manual_seed(0)
    model = SimCLR.from_config(ModelConfig(backbone=name, head="v2", head_out_dim=32))
    views = torch.rand(8, 3, 32, 32)  # 4 images, 2 views each
    assert model.forward_features(views[:4]).shape == (4, 2048)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = _nt_xent(model(views))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    changed = {
        name
        for (name, p), b in zip(model.named_parameters(), before, strict=True)
        if not torch.equal(b, p)
    }
    assert {"backbone.stem.0.weight", "head.layers.0.weight"} <= changed
    # Residual branches start closed (gamma = 0), so the first step trains their last gammas
    # (and the stem, shortcuts and head through the identity paths), not their convolutions.
    gammas = [m.last_bn.weight for m in model.backbone.modules() if isinstance(m, V2Bottleneck)]
    assert all(g.abs().sum() > 0 for g in gammas)


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    model, _ = create_backbone("resnet50-1x-sk", stem="cifar", zero_init_residual=False)
    model.eval()
    x = torch.rand(2, 3, 16, 16)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
