import dataclasses
import math

import pytest
import torch
from torch import nn

from simclr.config import OptimConfig
from simclr.errors import UserError
from simclr.optim import (
    LARS,
    build_optimizer,
    lr_at,
    param_groups,
    scaled_lr,
    set_lr,
    warmup_steps_for,
)

# ---------------------------------------------------------------- schedule


def test_lr_at_warmup_then_cosine() -> None:
    total, warmup, peak = 110, 10, 2.0
    assert lr_at(0, total, warmup, peak) == pytest.approx(peak / warmup)
    assert lr_at(0, total, warmup, peak) > 0
    assert lr_at(4, total, warmup, peak) == pytest.approx(peak * 5 / warmup)
    assert lr_at(warmup - 1, total, warmup, peak) == pytest.approx(peak)
    assert lr_at(warmup, total, warmup, peak) == pytest.approx(peak)
    assert lr_at(60, total, warmup, peak) == pytest.approx(peak / 2)
    assert lr_at(total, total, warmup, peak) == pytest.approx(0.0)
    assert lr_at(total + 50, total, warmup, peak) == 0.0


def test_lr_at_min_lr() -> None:
    total, warmup, peak, low = 100, 0, 1.0, 0.1
    assert lr_at(0, total, warmup, peak, low) == pytest.approx(peak)
    assert lr_at(50, total, warmup, peak, low) == pytest.approx((peak + low) / 2)
    assert lr_at(total, total, warmup, peak, low) == pytest.approx(low)
    assert lr_at(10 * total, total, warmup, peak, low) == pytest.approx(low)


def test_lr_at_is_monotone_after_warmup() -> None:
    total, warmup = 1000, 37
    values = [lr_at(s, total, warmup, 1.0, 0.01) for s in range(warmup, total + 5)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    warm = [lr_at(s, total, warmup, 1.0) for s in range(warmup)]
    assert all(a < b for a, b in zip(warm, warm[1:], strict=False))


def test_lr_at_warmup_as_long_as_run() -> None:
    assert lr_at(4, 5, 5, 1.0) == pytest.approx(1.0)
    assert lr_at(5, 5, 5, 1.0, 0.2) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "args", [(-1, 10, 0, 1.0), (0, 0, 0, 1.0), (0, 10, 11, 1.0), (0, 10, -1, 1.0)]
)
def test_lr_at_rejects_bad_arguments(args: tuple) -> None:
    with pytest.raises(ValueError):
        lr_at(*args)


def test_warmup_steps_for() -> None:
    assert warmup_steps_for(10, 100, 100_000) == 1000
    assert warmup_steps_for(0.5, 7, 1000) == 4  # round(3.5) -> 4
    assert warmup_steps_for(10, 100, 2000) == 200  # capped at a tenth of the run
    assert warmup_steps_for(10, 100, 5) == 0
    assert warmup_steps_for(0, 100, 1000) == 0
    with pytest.raises(ValueError):
        warmup_steps_for(-1, 100, 1000)


def test_scaled_lr_rules() -> None:
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.3, 256, "linear") == pytest.approx(0.3)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.075, 256, "sqrt") == pytest.approx(1.2)
    assert scaled_lr(0.5, 1024, "none") == 0.5
    with pytest.raises(ValueError, match="cubic"):
        scaled_lr(0.1, 256, "cubic")
    with pytest.raises(ValueError):
        scaled_lr(0.1, 0, "linear")


def test_set_lr_sets_every_group() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = LARS(param_groups(model, 1e-4), lr=1.0)
    set_lr(opt, 0.123)
    assert [g["lr"] for g in opt.param_groups] == [0.123, 0.123]


# ---------------------------------------------------------------- parameter groups


def test_param_groups_split_weights_from_biases_and_norms() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2)
    )
    model[0].bias.requires_grad_(False)
    groups = param_groups(model, 1e-6)
    decay, no_decay = groups
    assert decay["weight_decay"] == 1e-6 and decay["lars_exclude"] is False
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[4].weight)}
    expected = [model[1].weight, model[1].bias, model[3].weight, model[3].bias, model[4].bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}
    assert all(id(p) != id(model[0].bias) for g in groups for p in g["params"])


def test_param_groups_exclude_named_parameters_from_decay_and_adaptation() -> None:
    body, head = nn.Linear(4, 4), nn.Linear(4, 3)
    model = nn.Sequential(body, head)
    decay, no_decay = param_groups(model, 1e-4, exclude=head.parameters())
    assert {id(p) for p in decay["params"]} == {id(body.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(body.bias), id(head.weight), id(head.bias)}


def _overlapping_classes(n: int = 256, dim: int = 16, classes: int = 10):
    """Features of 10 overlapping Gaussian classes: a linear classifier reaches about 70 %."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=generator) * 0.5
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, dim, generator=generator), labels


def _train_zero_initialised_classifier(name: str, exclude: bool) -> tuple[float, float]:
    x, y = _overlapping_classes()
    fc = nn.Linear(x.shape[1], 10)
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    cfg = OptimConfig(name=name, lr=0.05, lr_scaling="none", weight_decay=1e-6)
    optimizer = build_optimizer(fc, cfg, len(x), exclude=fc.parameters() if exclude else ())
    for _ in range(600):
        loss = nn.functional.cross_entropy(fc(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item(), float((fc(x).argmax(1) == y).float().mean())


def test_a_zero_initialised_classifier_learns_under_lars_when_excluded_as_officially() -> None:
    # Issue 13's reproduction: in the LARS-adapted group a zero-initialised linear layer has a
    # trust ratio of about eta * ||w|| / ||g|| after its first step, so it barely moves and the
    # loss stays near ln(10) = 2.30; the official code excludes head_supervised from the
    # adaptation and the weight decay, and it then learns as with SGD.
    adapted_loss, adapted_accuracy = _train_zero_initialised_classifier("lars", exclude=False)
    loss, accuracy = _train_zero_initialised_classifier("lars", exclude=True)
    sgd_loss, sgd_accuracy = _train_zero_initialised_classifier("sgd", exclude=False)
    assert adapted_loss > 2.0 and adapted_accuracy < 0.62  # the bug the exclusion fixes
    assert loss < 1.0 and accuracy > 0.65
    assert abs(loss - sgd_loss) < 0.1 and abs(accuracy - sgd_accuracy) < 0.05


def test_param_groups_drop_empty_groups() -> None:
    groups = param_groups(nn.Linear(3, 2, bias=False), 0.1)
    assert len(groups) == 1 and groups[0]["name"] == "decay"


# ---------------------------------------------------------------- LARS


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_lars_two_steps_match_the_formula() -> None:
    lr1, lr2, momentum, wd, eta = 0.5, 0.25, 0.9, 0.1, 0.01
    w0 = [3.0, 4.0, 0.0]
    g1 = [1.0, -2.0, 2.0]
    g2 = [0.5, 0.5, -1.0]

    # By hand: d = g + wd w; ratio = eta ||w|| / ||d||; v = m v + lr ratio d; w = w - v.
    d1 = [g + wd * w for g, w in zip(g1, w0, strict=True)]
    r1 = eta * _norm(w0) / _norm(d1)
    v1 = [lr1 * r1 * d for d in d1]
    w1 = [w - v for w, v in zip(w0, v1, strict=True)]
    d2 = [g + wd * w for g, w in zip(g2, w1, strict=True)]
    r2 = eta * _norm(w1) / _norm(d2)
    v2 = [momentum * v + lr2 * r2 * d for v, d in zip(v1, d2, strict=True)]
    w2 = [w - v for w, v in zip(w1, v2, strict=True)]

    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LARS([p], lr=lr1, momentum=momentum, weight_decay=wd, trust_coefficient=eta)
    p.grad = torch.tensor(g1, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor(w1, dtype=torch.float64))
    set_lr(opt, lr2)
    p.grad = torch.tensor(g2, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor(w2, dtype=torch.float64))


def test_lars_ratio_is_one_for_zero_weights_or_gradients() -> None:
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LARS([p], lr=0.1, momentum=0.0, weight_decay=0.5, trust_coefficient=0.001)
    p.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    opt.step()  # ||w|| = 0: plain SGD step of lr * (g + wd * 0)
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, -0.2, -0.3], dtype=torch.float64))

    q = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = LARS([q], lr=0.1, momentum=0.0, weight_decay=0.0)
    q.grad = torch.zeros(2, dtype=torch.float64)
    opt.step()  # ||d|| = 0: no step and no NaN
    torch.testing.assert_close(q.detach(), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_excluded_group_is_plain_sgd_with_momentum(nesterov: bool) -> None:
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    b = nn.Parameter(a.detach().clone())
    lars = LARS(
        [{"params": [a], "lars_exclude": True}],
        lr=0.05,
        momentum=0.9,
        weight_decay=0.5,  # ignored for excluded groups
        nesterov=nesterov,
    )
    sgd = torch.optim.SGD([b], lr=0.05, momentum=0.9, nesterov=nesterov)
    for _ in range(5):
        grad = torch.randn(4, 3, dtype=torch.float64)
        a.grad, b.grad = grad.clone(), grad.clone()
        lars.step()
        sgd.step()
    torch.testing.assert_close(a.detach(), b.detach())


def test_lars_skips_parameters_without_gradient_and_runs_closure() -> None:
    p = nn.Parameter(torch.ones(2))
    opt = LARS([p], lr=0.1)
    assert opt.step(lambda: 3.0) == 3.0
    torch.testing.assert_close(p.detach(), torch.ones(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -0.1}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1e-6}, "weight_decay"),
        ({"trust_coefficient": 0.0}, "trust_coefficient"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov"),
    ],
)
def test_lars_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LARS([nn.Parameter(torch.ones(2))], **kwargs)


def test_lars_validates_group_overrides() -> None:
    with pytest.raises(ValueError, match="momentum"):
        LARS([{"params": [nn.Parameter(torch.ones(2))], "momentum": 2.0}], lr=0.1)


# ---------------------------------------------------------------- build_optimizer


def _regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = x @ torch.randn(8, 4, generator=g) + 0.5
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, x, y


@pytest.mark.parametrize(
    "cfg",
    [
        OptimConfig(name="lars", lr=0.5, trust_coefficient=0.02),
        OptimConfig(name="sgd", lr=0.02),
        OptimConfig(name="adam", lr=0.01, lr_scaling="none"),
        OptimConfig(name="adamw", lr=0.01, lr_scaling="none", weight_decay=1e-4),
    ],
    ids=lambda c: c.name,
)
def test_every_optimizer_descends(cfg: OptimConfig) -> None:
    model, x, y = _regression()
    opt = build_optimizer(model, cfg, batch_size=256)
    losses = []
    for _ in range(60):
        loss = nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.1 * losses[0]


def test_build_optimizer_settings() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    cfg = OptimConfig(name="lars", lr=0.075, lr_scaling="sqrt", weight_decay=1e-6)
    opt = build_optimizer(model, cfg, batch_size=256)
    assert isinstance(opt, LARS)
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(1.2)
        assert group["peak_lr"] == pytest.approx(1.2)
        assert group["momentum"] == 0.9 and group["trust_coefficient"] == 0.001
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-6, 0.0]
    assert [g["lars_exclude"] for g in opt.param_groups] == [False, True]

    sgd = build_optimizer(model, dataclasses.replace(cfg, name="sgd", momentum=0.8), 512)
    assert isinstance(sgd, torch.optim.SGD) and not isinstance(sgd, LARS)
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"] is False
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.075 * math.sqrt(512))

    adam = build_optimizer(model, dataclasses.replace(cfg, name="adam", betas=(0.8, 0.99)), 256)
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["betas"] == (0.8, 0.99)
    assert [g["weight_decay"] for g in adam.param_groups] == [1e-6, 0.0]
    adamw = build_optimizer(model, dataclasses.replace(cfg, name="adamw"), 256)
    assert isinstance(adamw, torch.optim.AdamW)


def test_build_optimizer_user_errors() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(UserError, match="rmsprop"):
        build_optimizer(model, OptimConfig(name="rmsprop"), 256)
    with pytest.raises(UserError, match="lr_scaling|rule"):
        build_optimizer(model, OptimConfig(lr_scaling="cubic"), 256)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(UserError, match="trainable"):
        build_optimizer(frozen, OptimConfig(), 256)


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_nesterov_reaches_the_optimizer(name: str) -> None:
    model = nn.Linear(3, 2)
    for nesterov in (False, True):
        cfg = OptimConfig(name=name, nesterov=nesterov)
        groups = build_optimizer(model, cfg, 256).param_groups
        assert all(group["nesterov"] is nesterov for group in groups)


def test_the_sgd_linear_probe_uses_nesterov_as_the_official_code() -> None:
    from simclr.evaluate.linear import SGD_PROBE_TRAINING

    assert SGD_PROBE_TRAINING.nesterov and SGD_PROBE_TRAINING.optim_config().nesterov
