"""The actor's Ray shell: one `ActorWorker` per FSDP rank, each holding an `FSDPActor` (sfpo_rl.workers.actor,
which itself needs no Ray)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sfpo_rl.controller import Dispatch, Worker, register
from sfpo_rl.protocol import Batch
from sfpo_rl.workers.actor import FSDPActor
from sfpo_rl.workers.actor_config import ActorConfig
from sfpo_rl.workers.faults import inject_nonfinite_loss
from sfpo_rl.workers.update_result import UpdateResult
from sfpo_rl.workers.weight_sync import WeightBucket, actor_bucket


def join_ranks(worker: Worker) -> None:
    """Join the worker group's process group; on CPU, one thread per rank (the ranks share the machine)."""
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    worker.init_process_group()


class ActorWorker(Worker):
    """Ray shell of one actor rank. Update results come back per rank (a list, rank order); they are already
    reduced over ranks, so every entry is the same."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        config: ActorConfig | Mapping[str, Any],
        total_steps: int | None = None,
        nonfinite_loss: Sequence[str] = (),
    ):
        """`nonfinite_loss`: faults.nonfinite_loss, the update passes whose loss is made NaN (tests only)."""
        join_ranks(self)
        self.actor = FSDPActor(model_path, config, total_steps)
        if nonfinite_loss:
            inject_nonfinite_loss(self.actor, nonfinite_loss)

    @register(Dispatch.DP_SPLIT)
    def compute_log_prob(self, batch: Batch) -> Batch:
        return self.actor.compute_log_prob(batch)

    @register(Dispatch.DP_SPLIT)
    def compute_ref_log_prob(self, batch: Batch) -> Batch:
        """The reference policy of a LoRA actor: its log-probs with the adapter switched off."""
        return self.actor.compute_ref_log_prob(batch)

    @register(Dispatch.DP_SPLIT)
    def update(self, batch: Batch) -> UpdateResult:
        return self.actor.update(batch)

    @register(Dispatch.DP_SPLIT)
    def sfpo_update(self, batch: Batch, inner_steps: int, alpha: float) -> UpdateResult:
        return self.actor.sfpo_update(batch, inner_steps, alpha)

    @register(Dispatch.ALL)
    def weight_bucket(
        self, index: int, bucket_mb: float, dtype: str | None = None, adapter: bool = False
    ) -> WeightBucket | None:
        """Bucket `index` of a split placement's weight sync (`weight_sync.actor_bucket`) in host memory on
        rank 0, None on the others. Collective."""
        bucket = actor_bucket(self.actor.model, index, bucket_mb, dtype, adapter)
        return bucket if self.rank == 0 else None

    @register(Dispatch.ALL)
    def save_checkpoint(self, path: str) -> None:
        self.actor.save_checkpoint(path)

    @register(Dispatch.ALL)
    def load_checkpoint(self, path: str) -> dict[str, Any]:
        return self.actor.load_checkpoint(path)

    @register(Dispatch.ALL)
    def export_hf(self, path: str, adapter_path: str | None = None) -> None:
        self.actor.export_hf(path, adapter_path)
