"""Run a function on N fresh processes joined in one gloo process group and collect what each rank returns.

The actor benchmarks call `FSDPActor` directly (no Ray), so their timings hold the actor's own work only and
each rank can measure its own memory. Every rank gets one torch thread: the ranks share the machine's cores,
as `ActorWorker` arranges in a training run.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# glibc returns freed memory to the kernel at once (every allocation above a page is its own mapping, no heap
# trimming threshold), so a process's peak resident set reflects its live tensors; read at process start.
EAGER_FREE_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4096",
    "MALLOC_TRIM_THRESHOLD_": "0",
    "MALLOC_TOP_PAD_": "0",
}


def run_ranks(
    fn: Callable[..., Any], *args: Any, world_size: int = 2, env: dict[str, str] | None = None
) -> list[Any]:
    """fn(rank, *args) on `world_size` spawned ranks; returns their return values in rank order. `env` is added
    to the ranks' environment only."""
    with tempfile.TemporaryDirectory(prefix="sfpo_bench_ranks_") as tmp:
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            mp.spawn(_rank_main, args=(world_size, _free_port(), fn, args, tmp), nprocs=world_size, join=True)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def slower_rank(per_rank: Sequence[Sequence[float]]) -> list[float]:
    """Per repeat, the largest value over the ranks: collectives keep the ranks together, so a timed call
    takes as long as its slower rank."""
    return [max(values) for values in zip(*per_rank)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, *args), Path(out) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears its gloo pairs down while a peer still uses them (aborts under load)
    finally:
        dist.destroy_process_group()
