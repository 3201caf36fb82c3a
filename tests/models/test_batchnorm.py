"""Global batch norm: two gloo processes against torch's BatchNorm on the concatenated batch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from simclr.config import ModelConfig
from simclr.models.batchnorm import GlobalBatchNorm, use_global_batchnorm
from simclr.models.simclr import SimCLR
from tests.gloo import run_on_gloo

WORLD = 2
SHAPES = {"conv": (3, 4, 5, 5), "linear": (5, 6)}  # per-rank input shapes [B, C, ...]


def _inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch (rank 0's rows first) and fixed output weights of a scalar loss."""
    g = torch.Generator().manual_seed(0)
    b, *rest = SHAPES[kind]
    x = torch.randn(WORLD * b, *rest, generator=g, dtype=torch.float64) * 3 + 7  # mean far off 0
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64)


def _layer(channels: int, module_type: type[nn.Module]) -> nn.Module:
    layer = module_type(channels, momentum=0.3).double()
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, channels))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, channels))
    return layer


def _worker(rank: int, out_dir: Path) -> None:
    results = {}
    for kind, shape in SHAPES.items():
        x_all, w_all = _inputs(kind)
        rows = slice(rank * shape[0], (rank + 1) * shape[0])
        layer = _layer(shape[1], GlobalBatchNorm)
        x = x_all[rows].clone().requires_grad_()
        y = layer(x)
        (y * w_all[rows]).sum().backward()
        results[kind] = {
            "y": y.detach(),
            "x_grad": x.grad,
            "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad,
            "running_mean": layer.running_mean,
            "running_var": layer.running_var,
        }
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed gloo")
    out_dir = tmp_path_factory.mktemp("bn")
    run_on_gloo(_worker, WORLD, out_dir)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("kind", list(SHAPES))
def test_two_processes_equal_batchnorm_on_the_whole_batch(results: list[dict], kind: str) -> None:
    x_all, w_all = _inputs(kind)
    reference = _layer(x_all.shape[1], nn.BatchNorm1d if x_all.ndim == 2 else nn.BatchNorm2d)
    x = x_all.clone().requires_grad_()
    y = reference(x)
    (y * w_all).sum().backward()
    b = SHAPES[kind][0]
    close = {"rtol": 1e-9, "atol": 1e-10}
    for r, res in enumerate(results):
        rows = slice(r * b, (r + 1) * b)
        torch.testing.assert_close(res[kind]["y"], y.detach()[rows], **close)
        # our gather sums every rank's gradient back to its owner: the whole-batch gradient
        torch.testing.assert_close(res[kind]["x_grad"], x.grad[rows], **close)
        torch.testing.assert_close(res[kind]["running_mean"], reference.running_mean, **close)
        torch.testing.assert_close(res[kind]["running_var"], reference.running_var, **close)
    # each rank's parameter gradient is its own rows' share; DDP sums (averages) them
    for name in ("weight_grad", "bias_grad"):
        total = sum(res[kind][name] for res in results)
        expected = getattr(reference, name.removesuffix("_grad")).grad
        torch.testing.assert_close(total, expected, **close)


def test_one_process_is_plain_batchnorm() -> None:
    x, _ = _inputs("conv")
    ours, reference = _layer(4, GlobalBatchNorm), _layer(4, nn.BatchNorm2d)
    torch.testing.assert_close(ours(x), reference(x))
    torch.testing.assert_close(ours.running_var, reference.running_var)
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x), reference(x))


def test_conversion_shares_parameters_and_keeps_state_keys() -> None:
    model = SimCLR.from_config(ModelConfig(backbone="resnet18", width=0.125, head="v2"))
    keys = model.state_dict().keys()
    params = {id(p): p.requires_grad for p in model.parameters()}
    converted = use_global_batchnorm(model, "cpu")
    assert converted is model
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and all(isinstance(m, GlobalBatchNorm) for m in batchnorms)
    assert converted.state_dict().keys() == keys
    # the same parameter objects, with the head's frozen output bias still frozen
    assert {id(p): p.requires_grad for p in converted.parameters()} == params
    assert not all(params.values())
