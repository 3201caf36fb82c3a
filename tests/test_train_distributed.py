"""The training loop under DDP: two gloo processes against one process on the whole batch."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from simclr.checkpoint import load_checkpoint
from simclr.config import ModelConfig, OptimConfig, build_config, recipe_overrides
from simclr.data.datasets import build_dataset
from simclr.evaluate.features import load_encoder
from simclr.evaluate.knn import evaluate_knn
from simclr.losses import NTXentLoss
from simclr.models.batchnorm import use_global_batchnorm
from simclr.models.simclr import SimCLR
from simclr.optim import build_optimizer
from simclr.train import pretrain, training_step
from tests.conftest import write_image_folder
from tests.gloo import run_on_gloo
from tests.test_train import TINY

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)

WORLD = 2
PER_RANK = 4
STEPS = 3
MODEL = ModelConfig(backbone="resnet18", width=0.125, stem="cifar", head="v2", channels_last=False)
OPTIM = OptimConfig(name="lars", lr=1.0, weight_decay=1e-4)


def _views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed views of the global batch of ``step`` (rank 0's rows first), in float64.

    Double precision, so that three LARS steps at lr 1 compare the maths of the two set-ups and
    not their float32 rounding (the loss's one-process backward sums in another order).
    """
    g = torch.Generator().manual_seed(step)
    return tuple(  # type: ignore[return-value]
        torch.rand(WORLD * PER_RANK, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)
    )


def _train(model: nn.Module, ddp: bool, rows: slice) -> tuple[nn.Module, list[float]]:
    """Three LARS steps of ``model`` on fixed views; returns the model and the losses."""
    optimizer = build_optimizer(model, OPTIM, WORLD * PER_RANK)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    wrapped = nn.parallel.DistributedDataParallel(model) if ddp else model
    losses = []
    for step in range(STEPS):
        view1, view2 = _views(step)
        loss, _ = training_step(
            wrapped, view1[rows], view2[rows], NTXentLoss(0.2), optimizer, scaler
        )
        losses.append(float(loss))
    return model, losses


def _fresh_model() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR.from_config(MODEL).double()


def _step_worker(rank: int, out_dir: Path) -> None:
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    synced, losses = _train(use_global_batchnorm(_fresh_model(), "cpu"), True, rows)
    local_bn, _ = _train(_fresh_model(), True, rows)
    torch.save(
        {"synced": synced.state_dict(), "losses": losses, "local_bn": local_bn.state_dict()},
        out_dir / f"rank{rank}.pt",
    )


def test_three_ddp_steps_with_global_batchnorm_equal_one_process_on_the_whole_batch(tmp_path):
    run_on_gloo(_step_worker, WORLD, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single, losses = _train(_fresh_model(), False, slice(None))
    expected = single.state_dict()

    # the loss of the whole batch is the mean of the ranks' losses, at every step
    for step in range(STEPS):
        mean = sum(res["losses"][step] for res in ranks) / WORLD
        assert mean == pytest.approx(losses[step], rel=1e-5)
    for res in ranks:
        for name, tensor in expected.items():
            torch.testing.assert_close(res["synced"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # control: with per-process batch norm the weights drift away from the one-process run
    drift = max(
        (ranks[0]["local_bn"][name].float() - tensor.float()).abs().max().item()
        for name, tensor in expected.items()
        if tensor.is_floating_point()
    )
    assert drift > 1e-3


def _pretrain_worker(rank: int, out_dir: Path, folder: str) -> None:
    cfg = build_config(
        TINY,
        {
            "data": {"path": folder},
            "train": {"max_steps": 4, "checkpoint_every": 2},
            "eval": {"data": folder},
        },
    )
    summary = pretrain(cfg, out_dir / "run")
    (out_dir / f"summary{rank}.json").write_text(json.dumps(summary))


def test_pretrain_in_two_processes_writes_one_run_and_gathers_knn_features(tmp_path):
    folder = write_image_folder(tmp_path / "images")
    run_on_gloo(_pretrain_worker, WORLD, tmp_path, str(folder))
    summaries = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in range(WORLD)]
    run = tmp_path / "run"

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # written once, by rank 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt"]
    state = load_checkpoint(run)
    assert state["step"] == 4 and state["world_size"] == WORLD
    assert all(s["processes"] == WORLD and s["steps"] == 4 for s in summaries)

    # kNN from features gathered across ranks equals kNN computed in one process afterwards
    knn = json.loads((run / "knn.json").read_text())
    assert summaries[1]["knn"]["trained"]["top1"] == knn["trained"]["top1"]
    encoder = load_encoder(run)
    data = build_dataset(str(folder), split="train", size=16)
    again = evaluate_knn(
        encoder.model.backbone,
        data,
        data,
        modality=encoder.modality(num_workers=0),
        cfg=encoder.config.eval,
    )
    assert again["top1"] == knn["trained"]["top1"]
    assert again["protocol"]["num_train"] == len(data) == knn["trained"]["protocol"]["num_train"]


def _text_worker(rank: int, out_dir: Path, corpus: str) -> None:
    torch.manual_seed(0)
    cfg = build_config(
        recipe_overrides("text-small"),
        {
            "data": {"path": corpus},
            "text": {"vocab_size": 300, "max_length": 16, "dim": 16, "layers": 1, "heads": 2},
            "train": {"batch_size": 8, "max_steps": 3, "progress": False},
            "eval": {"data": corpus, "k": 5},
        },
    )
    summary = pretrain(cfg, out_dir / "run")
    (out_dir / f"summary{rank}.json").write_text(json.dumps(summary))


def test_a_modality_with_fitted_preprocessing_trains_in_two_processes(tmp_path):
    """Text: rank 0 fits the tokenizer and hands it over, so both ranks encode alike."""
    topics = ("the market closed higher after the bank report", "the team won the final match")
    rows = [f"{i % 2},{topics[i % 2]} number {i}" for i in range(48)]
    corpus = tmp_path / "news.csv"
    corpus.write_text("label,text\n" + "\n".join(rows) + "\n")
    run_on_gloo(_text_worker, WORLD, tmp_path, str(corpus))
    summaries = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in range(WORLD)]
    assert all(s["processes"] == WORLD and s["steps"] == 3 for s in summaries)
    assert summaries[0]["knn"]["trained"]["top1"] == summaries[1]["knn"]["trained"]["top1"]
    state = load_checkpoint(tmp_path / "run")
    assert state["config"]["data"]["modality"] == "text"
    assert '"BPE"' in state["fitted"]["tokenizer"]  # the tokenizer travels with the weights
