"""The full-state-dict weight path, kept for comparison (the weight_sync benchmark) and tests: actor rank 0
gathers the whole state dict, and an engine reloads it in one piece. The trainer streams buckets instead
(sfpo_rl.workers.weight_sync)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from sfpo_rl.controller import Dispatch, register
from sfpo_rl.workers.actor_worker import ActorWorker
from sfpo_rl.workers.rollout import RolloutWorker


class FullStateActorWorker(ActorWorker):
    @register(Dispatch.ALL)
    def state_dict_for_rollout(self) -> dict[str, torch.Tensor] | None:
        """Full weights with HF names in host memory on rank 0 (a LoRA adapter merged in), None on the others.
        Collective."""
        return self.actor.state_dict_for_rollout()


class FullStateRolloutWorker(RolloutWorker):
    @register(Dispatch.ALL)
    def load_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]
    ) -> dict[str, float]:
        """Any number of whole layers (a full state dict: every one) into this engine in one reload."""
        return self.rollout.load_weights(named_tensors)
