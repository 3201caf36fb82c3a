import pytest

from simclr.config import (
    Config,
    build_config,
    from_dict,
    parse_assignment,
    read_yaml,
    recipe_names,
    recipe_overrides,
    to_dict,
)
from simclr.errors import UserError


def test_defaults_are_the_paper_imagenet_settings():
    cfg = build_config()
    assert isinstance(cfg, Config)
    assert cfg.augment.size == 224 and cfg.augment.blur_p == 0.5
    assert cfg.augment.jitter_amounts() == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert cfg.optim.name == "lars" and cfg.optim.trust_coefficient == 0.001
    assert cfg.train.temperature == 0.1


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_builds(name):
    cfg = build_config(recipe_overrides(name))
    assert cfg.train.batch_size >= 2


def test_cpu_small_recipe_is_the_small_resnet():
    cfg = build_config(recipe_overrides("cpu-small"))
    assert (cfg.model.backbone, cfg.model.width, cfg.model.stem) == ("resnet18", 0.25, "cifar")
    assert cfg.train.batch_size == 256 and cfg.augment.blur_p == 0.0
    assert cfg.augment.jitter_amounts() == pytest.approx((0.4, 0.4, 0.4, 0.1))


def test_layers_apply_in_order():
    cfg = build_config(
        recipe_overrides("cpu-small"),
        {"train": {"batch_size": 64}},
        parse_assignment("train.batch_size=32"),
    )
    assert cfg.train.batch_size == 32


def test_assignment_parses_yaml_values():
    assert parse_assignment("augment.crop_scale=[0.2, 1.0]") == {
        "augment": {"crop_scale": [0.2, 1.0]}
    }
    assert parse_assignment("train.max_time=null") == {"train": {"max_time": None}}
    with pytest.raises(UserError):
        parse_assignment("no_equals_sign")


def test_round_trip_through_plain_dict():
    cfg = build_config(recipe_overrides("cifar10-resnet18"))
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "layer, words",
    [
        ({"train": {"bogus": 1}}, "bogus"),
        ({"nosection": {"a": 1}}, "nosection"),
        ({"train": {"batch_size": "many"}}, "many"),
        ({"train": {"batch_size": 1}}, "batch_size"),
        ({"train": {"temperature": 0}}, "temperature"),
        ({"train": {"temperature": -0.5}}, "temperature"),
        ({"augment": {"flip_p": 1.5}}, "flip_p"),
        ({"optim": {"name": "rmsprop"}}, "optim.name"),
        ({"optim": {"momentum": 1.0}}, "momentum"),
        ({"augment": {"jitter_strength": 3.0}}, "hue"),
        ({"augment": {"blur_kernel_fraction": 0}}, "blur_kernel_fraction"),
        ({"model": {"head_out_dim": 0}}, "head_out_dim"),
        ({"eval": {"batch_size": 0}}, "eval.batch_size"),
    ],
)
def test_bad_values_are_user_errors(layer, words):
    with pytest.raises(UserError, match=words):
        build_config(layer)


def test_unknown_recipe():
    with pytest.raises(UserError, match="unknown recipe"):
        recipe_overrides("imagenet-vit")


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batch_size: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_yaml(bad)
    with pytest.raises(UserError, match="cannot read"):
        read_yaml(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        read_yaml(listing)


def test_options_take_any_key_of_a_modality_and_round_trip():
    cfg = build_config(
        {"options": {"toy": {"dim": 4, "noise": [0.1, 0.2]}}},
        parse_assignment("options.toy.dim=8"),
        parse_assignment("options.other.name=a"),
    )
    assert cfg.options == {"toy": {"dim": 8, "noise": [0.1, 0.2]}, "other": {"name": "a"}}
    assert from_dict(to_dict(cfg)) == cfg and build_config().options == {}
    with pytest.raises(UserError, match="incompatible"):
        build_config({"options": {"toy": 3}})  # each modality's options are a mapping


def test_recipe_files_registered_from_outside(tmp_path, monkeypatch):
    import simclr.config

    monkeypatch.setattr(simclr.config, "_RECIPE_FILES", {})
    (tmp_path / "mine.yaml").write_text("train: {batch_size: 8}\n")
    assert simclr.config.register_recipe_file(tmp_path / "mine.yaml") == "mine"
    assert recipe_names()[-1] == "mine" and "cpu-small" in recipe_names()
    assert build_config(recipe_overrides("mine")).train.batch_size == 8
    (tmp_path / "cpu-small.yaml").write_text("{}\n")
    with pytest.raises(ValueError, match="exists already"):
        simclr.config.register_recipe_file(tmp_path / "cpu-small.yaml")
