"""The training step follows the official SimCLR objective (google-research/simclr objective.py).

The reference below is written from the TF code's formula, not from :func:`simclr.losses.nt_xent`:
two softmax cross-entropies, a->b against [ab, aa] and b->a against [ba, bb], each a mean over the
N anchors of its direction, self-similarities pushed down by a large constant, summed.
"""

import copy

import torch
from torch import nn

from simclr.losses import NTXentLoss
from simclr.train import training_step

LARGE_NUM = 1e9


def official_objective(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    n = z1.shape[0]
    a = z1 / z1.norm(dim=1, keepdim=True)
    b = z2 / z2.norm(dim=1, keepdim=True)
    labels = torch.arange(n)
    masks = torch.eye(n, dtype=z1.dtype)
    logits_aa = a @ a.T / temperature - masks * LARGE_NUM
    logits_bb = b @ b.T / temperature - masks * LARGE_NUM
    logits_ab = a @ b.T / temperature
    logits_ba = b @ a.T / temperature
    loss_a = nn.functional.cross_entropy(torch.cat([logits_ab, logits_aa], 1), labels)
    loss_b = nn.functional.cross_entropy(torch.cat([logits_ba, logits_bb], 1), labels)
    return loss_a + loss_b


def test_one_training_step_is_an_sgd_step_on_the_official_objective():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    reference = copy.deepcopy(model)
    view1, view2 = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    lr, temperature = 0.1, 0.5

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    logged, _ = training_step(model, view1, view2, NTXentLoss(temperature), optimizer, scaler)

    z1, z2 = reference(view1), reference(view2)
    objective = official_objective(z1, z2, temperature)
    objective.backward()
    with torch.no_grad():
        for param in reference.parameters():
            param -= lr * param.grad
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], rtol=1e-12, atol=1e-12)
    # what is logged is the per-anchor mean: half the official objective
    torch.testing.assert_close(logged, objective.detach() / 2, rtol=1e-12, atol=1e-12)


def test_the_official_reference_is_the_papers_formula():
    # Independent of both: l(i, j) averaged over the 2N ordered pairs, written as loops.
    torch.manual_seed(1)
    z1, z2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n, t, total = 5, 0.2, 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(torch.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i)
        total += float(-torch.log(torch.exp(z[i] @ z[j] / t) / denominator))
    assert abs(float(official_objective(z1, z2, t)) - 2 * total / (2 * n)) < 1e-9


def test_the_mean_objective_takes_half_the_official_step():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 4)).double()
    reference = copy.deepcopy(model)
    view1, view2 = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    training_step(model, view1, view2, NTXentLoss(0.5), optimizer, scaler, objective_scale=1.0)
    (official_objective(reference(view1), reference(view2), 0.5) / 2).backward()
    with torch.no_grad():
        for param in reference.parameters():
            param -= 0.1 * param.grad
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], rtol=1e-12, atol=1e-12)


def test_paper_recipes_use_the_official_objective_and_tuned_ones_keep_theirs():
    from simclr.config import build_config, recipe_overrides

    for name in ("imagenet-resnet50", "imagenet-v2-resnet152", "cifar10-resnet18"):
        assert build_config(recipe_overrides(name)).train.objective == "official"
    for name in ("cpu-small", "digits-demo", "audio-small", "text-small"):
        assert build_config(recipe_overrides(name)).train.objective == "mean"
