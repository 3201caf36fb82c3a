import pytest
import torch

from simclr.config import ModelConfig
from simclr.errors import UserError
from simclr.models import ProjectionHead, SimCLR, create_backbone, list_backbones
from simclr.models.heads import head_for_version


@pytest.mark.parametrize("name", [n for n in list_backbones() if "-" not in n])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_every_backbone_gives_its_feature_dim(name, stem):
    # the torchvision family at width 0.125; the SimCLR v2 zoo is in test_resnet_v2.py
    model, dim = create_backbone(name, width=0.125, stem=stem)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, dim)


def test_width_multiplier_scales_channels():
    _, full = create_backbone("resnet18")
    small, quarter = create_backbone("resnet18", width=0.25, stem="cifar")
    assert (full, quarter) == (512, 128)
    widths = [small.layer1[0].conv1.out_channels, small.layer4[0].conv1.out_channels]
    assert widths == [16, 128]
    _, r50 = create_backbone("resnet50", width=0.5)
    assert r50 == 1024


def test_full_width_matches_torchvision_parameter_count():
    import torchvision

    reference = torchvision.models.resnet50()
    ours, _ = create_backbone("resnet50")
    fc = sum(p.numel() for p in reference.fc.parameters())
    assert (
        sum(p.numel() for p in ours.parameters())
        == sum(p.numel() for p in reference.parameters()) - fc
    )


def test_cifar_stem_keeps_resolution():
    model, _ = create_backbone("resnet18", width=0.25, stem="cifar")
    x = model.maxpool(model.relu(model.bn1(model.conv1(torch.rand(1, 3, 32, 32)))))
    assert x.shape[-1] == 32
    model, _ = create_backbone("resnet18", width=0.25, stem="imagenet")
    x = model.maxpool(model.relu(model.bn1(model.conv1(torch.rand(1, 3, 32, 32)))))
    assert x.shape[-1] == 8


def test_unknown_backbone_is_a_user_error():
    with pytest.raises(UserError, match="unknown backbone"):
        create_backbone("vgg11")


def test_heads_v1_and_v2_layouts():
    v1 = head_for_version("v1", 64, None, 16)
    assert [type(m).__name__ for m in v1.layers] == ["Linear", "ReLU", "Linear"]
    v2 = head_for_version("v2", 64, 32, 16)
    names = [type(m).__name__ for m in v2.layers]
    assert names == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert v2.layers[-2].bias is None  # the output norm's shift replaces the bias
    assert v2(torch.rand(4, 64)).shape == (4, 16)
    with pytest.raises(ValueError):
        ProjectionHead(8, num_layers=0)


def test_simclr_features_and_projection():
    model = SimCLR.from_config(
        ModelConfig(backbone="resnet18", width=0.125, stem="cifar", head="v2")
    )
    x = torch.rand(4, 3, 32, 32)
    h = model.forward_features(x)
    z = model(x)
    assert h.shape == (4, model.feature_dim) and z.shape == (4, 128)
    torch.testing.assert_close(model.head(h), z)


def test_any_module_works_as_backbone():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    model = SimCLR(backbone, 10, ProjectionHead(10, 20, 5))
    assert model(torch.rand(3, 3, 8, 8)).shape == (3, 5)


def test_zero_init_residual_from_the_config():
    from torchvision.models.resnet import BasicBlock

    for flag in (True, False):
        model = SimCLR.from_config(
            ModelConfig(backbone="resnet18", width=0.125, stem="cifar", zero_init_residual=flag)
        )
        blocks = [m for m in model.backbone.modules() if isinstance(m, BasicBlock)]
        assert len(blocks) == 8
        assert all(bool((b.bn2.weight == 0).all()) is flag for b in blocks)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet50-1x", "resnet50-1x-sk"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_backbones_take_any_number_of_channels(name, stem):
    from simclr.models import input_channels

    width = 0.125 if "-" not in name else 1.0
    model, dim = create_backbone(name, width=width, stem=stem, in_channels=5)
    assert input_channels(model) == 5 and model(torch.rand(2, 5, 32, 32)).shape == (2, dim)
    rgb, _ = create_backbone(name, width=width, stem=stem)
    assert input_channels(rgb) == 3


def test_the_config_and_the_model_agree_on_channels():
    from simclr.models import input_channels

    cfg = ModelConfig(backbone="resnet18", width=0.125, stem="cifar", in_channels=2)
    assert input_channels(SimCLR.from_config(cfg).backbone) == 2
    assert input_channels(SimCLR.from_config(ModelConfig(width=0.125)).backbone) == 3


def test_channels_last_is_left_off_where_the_cpu_backward_mishandles_it(caplog):
    from simclr.models.backbones import memory_format_for

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    narrow, _ = create_backbone("resnet18", width=0.0625, stem="cifar")  # 4-channel 1x1, stride 2
    usual, _ = create_backbone("resnet18", width=0.25, stem="cifar")
    assert memory_format_for(usual, cpu, True) == torch.channels_last
    assert memory_format_for(usual, cpu, False) == torch.contiguous_format
    assert memory_format_for(narrow, cuda, True) == torch.channels_last  # a CPU kernel's bug
    with caplog.at_level("INFO", logger="simclr"):
        assert memory_format_for(narrow, cpu, True) == torch.contiguous_format
    assert "channels_last is left off" in caplog.text
