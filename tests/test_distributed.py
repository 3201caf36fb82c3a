"""Two CPU processes (gloo, 127.0.0.1 only) against one process on the whole batch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from simclr import distributed
from simclr.errors import UserError
from simclr.losses import nt_xent
from tests.gloo import run_on_gloo

WORLD = 2
N_PER_RANK = 3
DIM = 4
IN_DIM = 5
TEMPERATURE = 0.3

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * N_PER_RANK
    z1 = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    x1 = torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)
    x2 = torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)
    return z1, z2, x1, x2


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(IN_DIM, DIM).double()


def _fail_on_main() -> None:
    raise UserError("no such file")


def _worker(rank: int, out_dir: Path) -> None:
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    z1_all, z2_all, x1_all, x2_all = _batch()
    z1 = z1_all[rows].clone().requires_grad_()
    z2 = z2_all[rows].clone().requires_grad_()
    loss = nt_xent(z1, z2, TEMPERATURE)
    loss.backward()
    local_loss = nt_xent(z1.detach(), z2.detach(), TEMPERATURE, gather=False)

    # The raw gather: forward concatenates in rank order, backward sums over ranks.
    x = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    gathered = distributed.all_gather_with_grad(x)
    weight = torch.arange(gathered.numel(), dtype=torch.float64).reshape(gathered.shape)
    (gathered * weight * (rank + 1)).sum().backward()
    no_grad = distributed.all_gather_no_grad(x)

    # DDP end to end: the averaged parameter gradient equals one process on the whole batch.
    model = nn.parallel.DistributedDataParallel(_model())
    nt_xent(model(x1_all[rows]), model(x2_all[rows]), TEMPERATURE).backward()

    # Small agreements between ranks.
    uneven = distributed.gather_uneven_to_main(torch.arange(rank + 1, dtype=torch.float64))
    on_main = distributed.run_on_main(lambda: distributed.rank() + 10)
    try:
        distributed.run_on_main(_fail_on_main)
        error = None
    except UserError as err:
        error = str(err)
    agreed = distributed.agree_max([float(rank), -float(rank)])
    mean = distributed.mean_over_ranks(float(rank))
    broadcast = distributed.broadcast_object({"from": rank})

    torch.save(
        {
            "uneven": uneven,
            "on_main": on_main,
            "error": error,
            "agreed": agreed,
            "mean": mean,
            "broadcast": broadcast,
            "rank": distributed.rank(),
            "world_size": distributed.world_size(),
            "is_main": distributed.is_main(),
            "is_initialized": distributed.is_initialized(),
            "loss": loss.detach(),
            "local_loss": local_loss,
            "grad1": z1.grad,
            "grad2": z2.grad,
            "gathered": gathered.detach(),
            "x_grad": x.grad,
            "no_grad": no_grad,
            "weight_grad": model.module.weight.grad,
            "bias_grad": model.module.bias.grad,
        },
        out_dir / f"rank{rank}.pt",
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("dist")
    run_on_gloo(_worker, WORLD, out_dir)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def test_helpers_report_rank_and_world(results: list[dict]) -> None:
    for r, res in enumerate(results):
        assert res["rank"] == r
        assert res["world_size"] == WORLD
        assert res["is_main"] == (r == 0)
        assert res["is_initialized"]


def test_loss_averaged_over_ranks_equals_one_process_on_the_whole_batch(
    results: list[dict],
) -> None:
    z1, z2, _, _ = _batch()
    single = nt_xent(z1, z2, TEMPERATURE)
    mean = torch.stack([res["loss"] for res in results]).mean()
    torch.testing.assert_close(mean, single, rtol=1e-12, atol=0)
    # Each rank's loss is the mean over its own anchors, so the ranks differ...
    assert not torch.isclose(results[0]["loss"], results[1]["loss"])
    # ...and differ from the loss without the other rank's negatives.
    for res in results:
        assert not torch.isclose(res["loss"], res["local_loss"])


def test_input_gradient_is_world_size_times_the_single_process_gradient(
    results: list[dict],
) -> None:
    # Rank r's backward gives sum over ranks r' of dL_r'/dz_r, where the global loss is
    # L = mean_r L_r; hence grad_r = WORLD * dL/dz_r. DDP's averaging over WORLD ranks then
    # turns the parameter gradients into exactly dL/dtheta.
    z1, z2, _, _ = _batch()
    z1.requires_grad_()
    z2.requires_grad_()
    nt_xent(z1, z2, TEMPERATURE).backward()
    assert z1.grad is not None and z2.grad is not None
    for r, res in enumerate(results):
        rows = slice(r * N_PER_RANK, (r + 1) * N_PER_RANK)
        torch.testing.assert_close(res["grad1"], WORLD * z1.grad[rows], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res["grad2"], WORLD * z2.grad[rows], rtol=1e-10, atol=1e-12)


def test_ddp_parameter_gradient_equals_one_process_on_the_whole_batch(
    results: list[dict],
) -> None:
    _, _, x1, x2 = _batch()
    model = _model()
    nt_xent(model(x1), model(x2), TEMPERATURE).backward()
    for res in results:
        torch.testing.assert_close(res["weight_grad"], model.weight.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res["bias_grad"], model.bias.grad, rtol=1e-10, atol=1e-12)


def test_all_gather_with_grad_concatenates_and_sums_gradients(results: list[dict]) -> None:
    expected = torch.cat([torch.full((2, 3), float(r + 1), dtype=torch.float64) for r in range(2)])
    weight = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    total = sum(r + 1 for r in range(WORLD))  # every rank multiplied its loss by (rank + 1)
    for r, res in enumerate(results):
        torch.testing.assert_close(res["gathered"], expected)
        torch.testing.assert_close(res["no_grad"], expected)
        assert not res["no_grad"].requires_grad
        torch.testing.assert_close(res["x_grad"], total * weight[2 * r : 2 * r + 2])


def test_agreements_between_ranks(results: list[dict]) -> None:
    # rank 0 holds [0], rank 1 holds [0, 1]: padded for the collective, trimmed after
    expected = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(results[0]["uneven"], expected)
    assert results[1]["uneven"] is None  # only rank 0 keeps the whole
    for res in results:
        assert res["on_main"] == 10  # rank 0's result, on every rank
        assert res["error"] == "no such file"  # rank 0's error, raised on every rank
        assert res["agreed"] == [1.0, 0.0]
        assert res["mean"] == 0.5
        assert res["broadcast"] == {"from": 0}


def test_helpers_without_a_process_group() -> None:
    assert not distributed.is_initialized()
    assert distributed.rank() == 0
    assert distributed.world_size() == 1
    assert distributed.is_main()
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    detached = distributed.all_gather_no_grad(x)
    assert not detached.requires_grad
    assert detached.data_ptr() == x.data_ptr()
    assert distributed.agree_max([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.mean_over_ranks(3.0) == 3.0
    assert distributed.broadcast_object("x") == "x"
    assert distributed.gather_uneven_to_main(x).data_ptr() == x.data_ptr()
    assert distributed.run_on_main(lambda: 3) == 3
    with pytest.raises(UserError, match="no such file"):
        distributed.run_on_main(_fail_on_main)
