"""Run a test function in several CPU processes joined by a gloo process group on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_on_gloo(worker: Callable[..., None], world: int, out_dir: Path, *args: Any) -> None:
    """Call ``worker(rank, out_dir, *args)`` in ``world`` processes that share a process group.

    ``worker`` must be a module-level function (the processes are spawned); it reports back by
    writing files into ``out_dir``. An exception in any process fails the caller.
    """
    mp.spawn(_entry, args=(worker, world, free_port(), str(out_dir), args), nprocs=world)


def _entry(
    rank: int,
    worker: Callable[..., None],
    world: int,
    port: int,
    out_dir: str,
    args: tuple[Any, ...],
) -> None:
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        worker(rank, Path(out_dir), *args)
    finally:
        dist.destroy_process_group()
