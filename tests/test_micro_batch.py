"""Micro-batched steps (gradient caching) against the computations they are defined to equal."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from simclr import train as train_module
from simclr.checkpoint import load_checkpoint
from simclr.cli import main
from simclr.errors import UserError
from simclr.losses import NTXentLoss, nt_xent
from simclr.micro_batch import check_micro_batch, micro_batch_step
from simclr.models.batchnorm import use_global_batchnorm
from simclr.train import pretrain, training_step
from tests.gloo import run_on_gloo
from tests.test_train import crash_after_first_checkpoint, tiny_config

TEMPERATURE = 0.5
EXACT = {"rtol": 1e-10, "atol": 1e-12}
"""float64: only the order of the sums differs."""


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def conv_net(batch_norm: bool) -> nn.Module:
    norm2d: nn.Module = nn.BatchNorm2d(4) if batch_norm else nn.Identity()
    norm1d: nn.Module = nn.BatchNorm1d(8) if batch_norm else nn.Identity()
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        norm2d,
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 8),
        norm1d,
        nn.ReLU(),
        nn.Linear(8, 4),
    )


class TokenNet(nn.Module):
    """Token ids ``[B, L]`` -> ``[B, 4]``, with dropout (SimCSE's noise) on the embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.dropout = nn.Dropout(0.5)
        self.out = nn.Linear(8, 4)

    def forward(self, ids: Tensor) -> Tensor:
        return self.out(self.dropout(self.embed(ids)).mean(1))


def fresh(make, *args) -> nn.Module:
    torch.manual_seed(0)
    return make(*args).double().train()


def views(shape: tuple[int, ...], seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(shape, generator=g, dtype=torch.float64) for _ in range(2))  # type: ignore[return-value]


def step_parts(model: nn.Module, lr: float = 0.1, scaler_on: bool = False):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_on, init_scale=2.0**10)
    return optimizer, scaler


def micro(model: nn.Module, view1: Tensor, view2: Tensor, m: int, **kw) -> Tensor:
    """The loss of a micro-batched step."""
    return micro_with_spread(model, view1, view2, m, **kw)[0]


def micro_with_spread(
    model: nn.Module, view1: Tensor, view2: Tensor, m: int, **kw
) -> tuple[Tensor, Tensor]:
    optimizer, scaler = step_parts(model, scaler_on=kw.pop("scaler_on", False))
    criterion = NTXentLoss(TEMPERATURE)
    return micro_batch_step(
        model, view1, view2, criterion, optimizer, scaler, micro_batch_size=m, **kw
    )


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_all_close(actual: dict[str, Tensor], expected: dict[str, Tensor], **tol) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, **(tol or EXACT), msg=name)


def ghost_reference(
    model: nn.Module, view1: Tensor, view2: Tensor, m: int, scale: float = 2.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """What a micro-batched step is defined to equal, in one graph: a forward of view 1, then one
    of view 2, of each block of ``m`` items (its own batch-norm statistics), NT-Xent over the
    whole batch, ``scale`` x its gradient. Returns the loss and the parameter gradients."""
    z1, z2 = [], []
    for start in range(0, len(view1), m):
        z1.append(model(view1[start : start + m]))
        z2.append(model(view2[start : start + m]))
    loss = nt_xent(torch.cat(z1), torch.cat(z2), TEMPERATURE, gather=False)
    model.zero_grad(set_to_none=True)
    (scale * loss).backward()
    return loss.detach(), grads(model)


@pytest.mark.parametrize(
    ("make", "shape", "m", "scale", "scaler_on"),
    [
        (mlp, (8, 8), 2, 2.0, False),
        (mlp, (8, 8), 8, 1.0, True),
        (mlp, (7, 8), 2, 2.0, False),  # a shortened batch: blocks of 3, 2 and 2 items
        (conv_net, (8, 3, 6, 6), 4, 2.0, True),
    ],
)
def test_without_batch_norm_the_step_is_the_full_batch_step(make, shape, m, scale, scaler_on):
    args = (False,) if make is conv_net else ()
    model, full = fresh(make, *args), fresh(make, *args)
    view1, view2 = views(shape)
    memory_format = torch.channels_last if len(shape) == 4 else torch.contiguous_format
    loss = micro(
        model,
        view1,
        view2,
        m,
        objective_scale=scale,
        scaler_on=scaler_on,
        memory_format=memory_format,
    )
    optimizer, scaler = step_parts(full, scaler_on=scaler_on)
    expected, _ = training_step(
        full, view1, view2, NTXentLoss(TEMPERATURE), optimizer, scaler, objective_scale=scale
    )
    torch.testing.assert_close(loss, expected, **EXACT)
    assert_all_close(grads(model), grads(full))
    assert_all_close(dict(model.named_parameters()), dict(full.named_parameters()))


def test_the_projection_spread_is_that_of_the_full_batch():
    model, full = fresh(mlp), fresh(mlp)
    view1, view2 = views((8, 8))
    _, spread = micro_with_spread(model, view1, view2, 2)
    optimizer, scaler = step_parts(full, scaler_on=False)
    _, expected = training_step(full, view1, view2, NTXentLoss(TEMPERATURE), optimizer, scaler)
    with torch.no_grad():
        z = torch.nn.functional.normalize(fresh(mlp)(torch.cat([view1, view2])), dim=1)
    torch.testing.assert_close(spread, expected, **EXACT)
    torch.testing.assert_close(spread, z.std(dim=0).mean().float(), rtol=1e-6, atol=1e-7)


def test_with_batch_norm_each_forward_is_one_view_of_one_block_with_its_own_statistics():
    model = fresh(conv_net, True)
    reference = copy.deepcopy(model)
    view1, view2 = views((8, 3, 6, 6))
    seen: list[Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    loss = micro(model, view1, view2, 2)

    expected_loss, expected_grads = ghost_reference(reference, view1, view2, 2)
    torch.testing.assert_close(loss, expected_loss, **EXACT)
    assert_all_close(grads(model), expected_grads)
    # running statistics: moved once per forward of the graph pass, never in the no-grad pass
    assert_all_close(dict(model.named_buffers()), dict(reference.named_buffers()))
    assert int(model[1].num_batches_tracked) == 8  # 4 blocks x 2 views
    # both passes: view 1 of block k, then view 2 of block k; no forward holds both views
    order = [view[k : k + 2] for k in range(0, 8, 2) for view in (view1, view2)]
    assert len(seen) == 2 * len(order)
    for got, want in zip(seen, order + order, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # control: batch norm over the whole batch (both views together) gives other gradients
    whole = fresh(conv_net, True)
    optimizer, scaler = step_parts(whole)
    training_step(whole, view1, view2, NTXentLoss(TEMPERATURE), optimizer, scaler)
    assert (whole[0].weight.grad - expected_grads["0.weight"]).abs().max() > 1e-6


def test_dropout_masks_are_replayed_in_the_graph_pass():
    model = fresh(TokenNet)
    reference = copy.deepcopy(model)
    view1, view2 = torch.randint(0, 20, (2, 8, 5), generator=torch.Generator().manual_seed(1))
    masks: list[Tensor] = []
    model.dropout.register_forward_hook(lambda module, args, out: masks.append(out == 0))

    torch.manual_seed(7)
    micro(model, view1, view2, 2)
    after = torch.get_rng_state()
    torch.manual_seed(7)
    _, expected = ghost_reference(reference, view1, view2, 2)

    half = len(masks) // 2
    assert half == 8 and all(
        torch.equal(a, b) for a, b in zip(masks[:half], masks[half:], strict=True)
    )
    assert_all_close(grads(model), expected)
    assert torch.equal(after, torch.get_rng_state())  # the stream moved as for one pass
    # control: other masks give other gradients, so the comparison above sees the masks
    torch.manual_seed(8)
    _, other = ghost_reference(reference, view1, view2, 2)
    assert (other["out.weight"] - expected["out.weight"]).abs().max() > 1e-6


def test_bf16_autocast_gives_the_full_batch_loss():
    model, full = fresh(mlp).float(), fresh(mlp).float()
    view1, view2 = (v.float() for v in views((8, 8)))
    loss = micro(model, view1, view2, 2, autocast=torch.bfloat16)
    optimizer, scaler = step_parts(full)
    criterion = NTXentLoss(TEMPERATURE)
    expected, _ = training_step(
        full, view1, view2, criterion, optimizer, scaler, autocast=torch.bfloat16
    )
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
    for name, grad in grads(full).items():
        torch.testing.assert_close(grads(model)[name], grad, rtol=0.1, atol=2e-2, msg=name)


@pytest.mark.parametrize(
    ("m", "words"),
    [(3, "must divide the 8 items"), (16, "must divide the 8 items"), (1, "at least 2")],
)
def test_a_micro_batch_that_does_not_cut_the_batch_is_refused(image_folder, tmp_path, m, words):
    cfg = tiny_config(image_folder, max_steps=1, micro_batch_size=m)
    with pytest.raises(UserError, match=words):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert check_micro_batch(4, 8) is None and check_micro_batch(8, 8) is None


def test_pretrain_in_micro_batches_resumes_exactly(image_folder, tmp_path, monkeypatch):
    calls: list[int] = []
    real_step = train_module.micro_batch_step

    def counted_step(*args, **kwargs):
        calls.append(kwargs["micro_batch_size"])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "micro_batch_step", counted_step)
    cfg = tiny_config(image_folder, max_steps=6, checkpoint_every=3, micro_batch_size=4)
    summary = pretrain(cfg, tmp_path / "straight")
    assert summary["steps"] == 6 and summary["final_loss"] > 0 and calls == [4] * 6
    expected = load_checkpoint(tmp_path / "straight")["model"]

    crash_after_first_checkpoint(cfg, tmp_path / "crashed", monkeypatch)
    assert load_checkpoint(tmp_path / "crashed")["step"] == 3
    pretrain(cfg, tmp_path / "crashed", resume=True)
    resumed = load_checkpoint(tmp_path / "crashed")
    assert resumed["step"] == 6 and resumed["config"]["train"]["micro_batch_size"] == 4
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0, msg=name)

    # micro-batching is a memory setting: a resume may change it (here through the CLI flag)
    run = tmp_path / "straight"
    argv = ["pretrain", "--out", str(run), "--resume", "--max-steps", "7", "--micro-batch", "2"]
    assert main(argv) == 0
    state = load_checkpoint(run)
    assert state["step"] == 7 and state["config"]["train"]["micro_batch_size"] == 2
    assert calls[-1] == 2


WORLD, PER_RANK, M, STEPS = 2, 4, 2, 2


def _global_views(step: int) -> tuple[Tensor, Tensor]:
    return views((WORLD * PER_RANK, 3, 6, 6), seed=step)


def _counted(ddp: nn.parallel.DistributedDataParallel, counts: list[int]) -> None:
    """Count the gradient all-reduces (one per bucket) DDP runs."""

    def hook(state, bucket):  # unannotated: DDP checks the annotation's class
        counts.append(1)
        return allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, hook)


def _ddp_worker(rank: int, out_dir: Path) -> None:
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    model = use_global_batchnorm(fresh(conv_net, True), "cpu")
    ddp = nn.parallel.DistributedDataParallel(model)
    micro_counts: list[int] = []
    _counted(ddp, micro_counts)
    optimizer, scaler = step_parts(model)
    losses = []
    for step in range(STEPS):
        view1, view2 = _global_views(step)
        criterion = NTXentLoss(TEMPERATURE)
        loss, _ = micro_batch_step(
            ddp, view1[rows], view2[rows], criterion, optimizer, scaler, micro_batch_size=M
        )
        losses.append(float(loss))
    # the ordinary step's all-reduces, for comparison
    plain = nn.parallel.DistributedDataParallel(use_global_batchnorm(fresh(conv_net, True), "cpu"))
    plain_counts: list[int] = []
    _counted(plain, plain_counts)
    optimizer, scaler = step_parts(plain.module)
    view1, view2 = _global_views(0)
    training_step(plain, view1[rows], view2[rows], NTXentLoss(TEMPERATURE), optimizer, scaler)
    torch.save(
        {
            "state": model.state_dict(),
            "losses": losses,
            "micro_counts": len(micro_counts),
            "plain_counts": len(plain_counts),
        },
        out_dir / f"rank{rank}.pt",
    )


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_two_processes_equal_one_process_with_the_same_ghost_batches(tmp_path):
    run_on_gloo(_ddp_worker, WORLD, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    # one process, micro-batches of WORLD * M items ordered as the processes' ghost batches:
    # block k = block k of rank 0, then block k of rank 1 (NT-Xent does not depend on the order)
    order = torch.cat(
        [
            torch.arange(r * PER_RANK + k, r * PER_RANK + k + M)
            for k in range(0, PER_RANK, M)
            for r in range(WORLD)
        ]
    )
    single = fresh(conv_net, True)
    optimizer, scaler = step_parts(single)
    for step in range(STEPS):
        view1, view2 = _global_views(step)
        criterion = NTXentLoss(TEMPERATURE)
        loss, _ = micro_batch_step(
            single,
            view1[order],
            view2[order],
            criterion,
            optimizer,
            scaler,
            micro_batch_size=WORLD * M,
        )
        mean = sum(res["losses"][step] for res in ranks) / WORLD
        assert mean == pytest.approx(float(loss), rel=1e-10)
    for res in ranks:
        assert_all_close(res["state"], single.state_dict(), rtol=1e-9, atol=1e-11)
        # gradients all-reduced once per step, as in the ordinary step (no_sync before)
        assert res["micro_counts"] == STEPS * res["plain_counts"] > 0


def _pretrain_worker(rank: int, out_dir: Path, folder: str) -> None:
    cfg = tiny_config(folder, max_steps=2, micro_batch_size=2)  # 4 items a process
    summary = pretrain(cfg, out_dir / "run")
    (out_dir / f"steps{rank}").write_text(str(summary["steps"]))


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_pretrain_in_micro_batches_in_two_processes(image_folder, tmp_path):
    run_on_gloo(_pretrain_worker, WORLD, tmp_path, str(image_folder))
    assert [(tmp_path / f"steps{r}").read_text() for r in range(WORLD)] == ["2", "2"]
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 2 and state["world_size"] == WORLD
