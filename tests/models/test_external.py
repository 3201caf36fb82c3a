"""timm:NAME and tv:NAME backbones: pooled features of the advertised width, one-line errors."""

import sys

import pytest
import torch
from torch import nn

from simclr.config import build_config
from simclr.errors import DISTRIBUTION, UserError
from simclr.modalities.image import ImageModality
from simclr.models import SimCLR, create_backbone
from simclr.models.external import check_image_size


def _timm():
    return pytest.importorskip("timm", reason="timm backbones need timm (the timm extra)")


@pytest.mark.parametrize(
    ("name", "args", "dim"),
    [
        ("timm:test_vit", {"img_size": 32}, 64),  # class token after the final norm
        ("timm:test_resnet", {}, 96),
        ("timm:test_mambaout", {}, 256),  # pre-logits layer: head_hidden_size, not num_features
    ],
)
def test_timm_backbones_give_pooled_features(name, args, dim):
    _timm()
    model, got = create_backbone(name, args=args)
    assert got == dim and model.num_classes == 0  # timm's classifier removed
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, dim)  # train mode: still a tensor


@pytest.mark.parametrize(
    ("name", "args", "dim"),
    [
        ("tv:resnet18", {}, 512),
        ("tv:efficientnet_b0", {}, 1280),
        ("tv:mobilenet_v3_small", {}, 1024),  # the hidden layer stays, the last Linear goes
        ("tv:vit_b_16", {"image_size": 32}, 768),
        ("tv:googlenet", {}, 1024),  # no auxiliary classifiers: a tensor in train mode
    ],
)
def test_torchvision_backbones_drop_their_last_linear_layer(name, args, dim):
    torch.manual_seed(0)
    model, got = create_backbone(name, args=args)
    out = model(torch.rand(2, 3, 32, 32))
    assert got == dim and out.shape == (2, dim)
    assert not [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]


def test_the_same_seed_gives_the_same_external_backbone():
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        model, _ = create_backbone("tv:mobilenet_v3_small")
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_config_accepts_external_names_and_rejects_resnet_settings():
    for name in ("timm:vit_small_patch16_224", "tv:efficientnet_b0", "tv:vit_b_16"):
        assert build_config({"model": {"backbone": name}}).model.backbone == name  # no import
    cfg = build_config(
        {"model": {"backbone": "timm:vit_tiny_patch16_224"}},
        {"model": {"backbone_args": {"img_size": 32}}},
    )
    assert cfg.model.backbone_args == {"img_size": 32}
    bad = [
        ({"backbone": "timm:vit_small_patch16_224", "width": 0.5}, "model.width"),
        ({"backbone": "tv:resnet50", "stem": "cifar"}, "model.stem"),
        ({"backbone": "tv:resnet50", "zero_init_residual": True}, "zero_init_residual"),
        ({"backbone": "resnet18", "backbone_args": {"img_size": 32}}, "backbone_args"),
        ({"backbone": "timm:"}, "give a model name"),
    ]
    for model, match in bad:
        with pytest.raises(UserError, match=match) as raised:
            build_config({"model": model})
        assert "\n" not in str(raised.value)


def test_unknown_or_unsuitable_models_are_one_line_errors(monkeypatch):
    with pytest.raises(UserError, match="not a torchvision classification model"):
        create_backbone("tv:fasterrcnn_resnet50_fpn")
    with pytest.raises(UserError, match="no linear classifier"):
        create_backbone("tv:squeezenet1_0")
    with pytest.raises(UserError, match="unexpected keyword argument 'img_size'"):
        create_backbone("tv:resnet18", args={"img_size": 32})
    with pytest.raises(UserError, match="must not set pretrained"):
        create_backbone("tv:resnet18", args={"pretrained": True})
    for name in [m for m in sys.modules if m.partition(".")[0] == "timm"] + ["timm"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if timm were not installed
    with pytest.raises(UserError) as raised:
        create_backbone("timm:vit_small_patch16_224")
    assert str(raised.value) == (
        "timm is needed for the backbone timm:vit_small_patch16_224 but is not installed: "
        f'pip install "{DISTRIBUTION}[timm]"'
    )


def test_unknown_timm_model_is_a_user_error():
    _timm()
    with pytest.raises(UserError, match="Unknown model"):
        create_backbone("timm:no_such_model")


def test_a_vit_built_for_another_size_fails_at_build_not_at_the_first_step():
    cfg = build_config(
        {"model": {"backbone": "tv:vit_b_16"}, "augment": {"size": 32}, "train": {"device": "cpu"}}
    )
    with pytest.raises(UserError, match=r"cannot take 32 px .*backbone_args.image_size=32"):
        ImageModality(cfg).build_model()
    model = SimCLR.from_config(cfg.model)  # the Python API builds it as asked
    check_image_size(model.backbone, "tv:vit_b_16", 224, model.feature_dim)
    assert model.backbone.training  # the probe restores the mode


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("timm:test_resnet", {}),
        ("tv:resnet18", {}),
        ("tv:mobilenet_v3_small", {}),  # the stem is nested: features[0][0]
        ("tv:vit_b_16", {"image_size": 32}),  # the patch embedding is the first convolution
    ],
)
def test_external_backbones_take_any_number_of_channels(name, args):
    from simclr.models import input_channels

    if name.startswith("timm:"):
        _timm()
    torch.manual_seed(0)
    model, dim = create_backbone(name, args=args, in_channels=4)
    assert input_channels(model) == 4 and model(torch.rand(2, 4, 32, 32)).shape == (2, dim)
    with pytest.raises(UserError, match="in_chans"):
        create_backbone(name, args={**args, "in_chans": 4})
