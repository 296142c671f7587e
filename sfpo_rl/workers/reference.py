"""The frozen reference policy for a KL term: the initial model, sharded and placed like the actor, that only
computes log-probs (no gradients, optimizer, LR schedule or checkpoints)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sfpo_rl.controller import Dispatch, Worker, register
from sfpo_rl.protocol import Batch
from sfpo_rl.workers.actor import FSDPPolicy
from sfpo_rl.workers.actor_config import ActorConfig
from sfpo_rl.workers.actor_worker import join_ranks


class ReferenceWorker(Worker):
    """Ray shell of one reference rank; `actor` options give its precision and log-prob micro-batch size."""

    def __init__(self, model_path: str | os.PathLike, config: ActorConfig | Mapping[str, Any]):
        join_ranks(self)
        self.policy = FSDPPolicy(model_path, config, trainable=False)

    @register(Dispatch.DP_SPLIT)
    def compute_ref_log_prob(self, batch: Batch) -> Batch:
        """`ref_log_probs` [B, R] of this rank's rows."""
        out = self.policy.compute_log_prob(batch)
        return Batch.from_dict({"ref_log_probs": out["old_log_probs"]})
