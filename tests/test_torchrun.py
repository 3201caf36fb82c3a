"""``torchrun -m simclr pretrain`` on 2 CPU processes: one run folder, and restart after a crash."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

from simclr.checkpoint import load_checkpoint
from tests.test_train import TINY

pytestmark = [
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
    ),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc"),
]


def _torchrun(config: Path, run: Path, folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *extra,
        "-m",
        "simclr",
        "pretrain",
        "--config",
        str(config),
        "--data",
        str(folder),
        "--out",
        str(run),
    ]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def test_torchrun_two_processes_write_one_run(image_folder, tmp_path, config_file):
    run = tmp_path / "run"
    command = _torchrun(config_file, run, image_folder) + ["--max-steps", "6"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # printed by rank 0 only
    summary = json.loads(summaries[0])
    assert summary["processes"] == 2 and summary["steps"] == 6
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(run)["world_size"] == 2


def _worker_pids(parent: int) -> dict[int, int]:
    """``{local rank: pid}`` of the processes torchrun started (children of ``parent``)."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != parent:
            continue
        for item in environ:
            if item.startswith(b"LOCAL_RANK="):
                workers[int(item.split(b"=")[1])] = int(entry.name)
    return workers


def test_killed_worker_restarts_from_the_last_checkpoint(image_folder, tmp_path, config_file):
    run = tmp_path / "run"
    steps = 200
    command = _torchrun(config_file, run, image_folder, "--max-restarts", "1") + [
        "--max-steps",
        str(steps),
        "--epochs",
        "1000",
        "--checkpoint-every",
        "5",
        "--resume",  # under --max-restarts, the restarted workers continue the run
    ]
    job = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    checkpoint = run / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint was written"
    victim = _worker_pids(job.pid).get(1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    out, err = job.communicate(timeout=300)

    assert job.returncode == 0, err[-3000:]
    assert "resumed from" in err  # the restarted rank 0 read the checkpoint
    resumed_at = int(err.split("resumed from")[1].split("at step")[1].split()[0])
    assert 5 <= resumed_at < steps and resumed_at % 5 == 0
    assert json.loads(out.strip().splitlines()[-1])["steps"] == steps
    assert load_checkpoint(run)["step"] == steps


def test_torchrun_on_shards_made_from_cifar10_jpegs(cifar10_test_jpegs, tmp_path, config_file):
    shards = tmp_path / "shards"
    made = subprocess.run(
        [sys.executable, "-m", "simclr", "shards", str(cifar10_test_jpegs), str(shards)]
        + ["--max-count", "2500"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads(made.stdout) == {
        "index": str(shards / "shards.json"),
        "shards": 4,
        "samples": 10_000,
        "classes": 10,
    }
    run = tmp_path / "run"
    command = _torchrun(config_file, run, shards) + [
        "--max-steps",
        "5",
        "--batch-size",
        "32",
        "--workers",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 5 and summary["processes"] == 2 and summary["skipped_files"] == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["epoch"] == pytest.approx(5 / (10_000 // 32))


def test_restart_across_two_nodes_after_one_nodes_worker_dies(image_folder, tmp_path, config_file):
    # Two torchrun agents on this machine play two nodes. Only node 1's agent counts a restart
    # when its worker dies (node 0 restarts for the membership change), so the process group
    # must not be keyed by the local restart count.
    from tests.gloo import free_port

    run = tmp_path / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "two-nodes",
                "--max-restarts",
                "1",
                "-m",
                "simclr",
                "pretrain",
                "--config",
                str(config_file),
                "--data",
                str(image_folder),
                "--out",
                str(run),
                "--resume",
                "--max-steps",
                "200",
                "--epochs",
                "1000",
                "--checkpoint-every",
                "5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for node in (0, 1)
    ]
    checkpoint = run / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint was written"
    victim = _worker_pids(nodes[1].pid).get(0)
    assert victim is not None, "node 1's worker not found"
    os.kill(victim, signal.SIGKILL)
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert load_checkpoint(run)["step"] == 200
