"""The rollout role of the colocated placement (the hybrid engine): a vLLM engine in an actor rank's process.

With `resources.placement=colocated` every actor rank's process (one per GPU) also hosts one engine
(`RayWorkerGroup.colocated`), so no GPU waits while another works: the engines generate, data-parallel, then
sleep while the actor trains on the same GPUs, and take the new weights straight from the actor's FSDP shards in
the same process (`weight_sync.load_own_shards`): no full state dict and no object store. Optionally the actor's
optimizer state moves to host memory while the engine generates (`resources.offload_optimizer`).

On CPU vLLM has no sleep mode and the optimizer state is in host memory already: the same calls run there and
change nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from sfpo_rl.controller import Dispatch, register
from sfpo_rl.workers.actor import FSDPActor
from sfpo_rl.workers.actor_worker import join_ranks
from sfpo_rl.workers.lora import LoraConfig
from sfpo_rl.workers.rollout import RolloutWorker
from sfpo_rl.workers.rollout_config import RolloutConfig
from sfpo_rl.workers.weight_sync import load_own_shards


class OptimizerOffload:
    """Moves an optimizer's accelerator-resident state tensors to host memory and back to where each was
    (Adam's `step` counters, kept on the CPU, are never touched)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._moved: list[tuple[dict[str, Any], str, torch.device]] = []

    def offload(self) -> None:
        if self._moved:
            return
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.device.type != "cpu":
                    self._moved.append((state, key, value.device))
                    state[key] = value.to("cpu")

    def restore(self) -> None:
        for state, key, device in self._moved:
            state[key] = state[key].to(device)
        self._moved = []


class ColocatedRolloutWorker(RolloutWorker):
    """One engine beside the actor rank of this process; generation is data-parallel over the ranks."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        config: RolloutConfig | Mapping[str, Any],
        offload_optimizer: bool = False,
        lora: LoraConfig | Mapping[str, Any] | None = None,
    ):
        # First the actor's process group: vLLM's engine then joins it instead of starting a world of its own.
        join_ranks(self)
        super().__init__(model_path, config, lora)
        self.offload_optimizer = offload_optimizer
        self._optimizer: OptimizerOffload | None = None

    @property
    def actor(self) -> FSDPActor:
        return self.colocated("actor").actor

    @register(Dispatch.ALL)
    def sync_weights(self) -> dict[str, float]:
        """Load this process's actor weights, streamed from its shards one bucket at a time (a LoRA actor's
        adapter alone, where the engine serves it). Every rank must call it (the gathers are collective)."""
        return load_own_shards(self.actor.model, self.rollout)

    @register(Dispatch.ALL)
    def prepare_generation(self) -> None:
        """Generation next: weights the engine discarded in its sleep (level 2, e.g. for a checkpoint save after
        the sync) are synced again, the optimizer state goes to host memory (if so configured), the engine
        wakes."""
        if self.rollout.weights_discarded:
            self.sync_weights()
        if self.offload_optimizer:
            if self._optimizer is None:
                self._optimizer = OptimizerOffload(self.actor.optimizer)
            self._optimizer.offload()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the actor's cached blocks go back to the device, for the KV cache
        self.rollout.wake_up()

    @register(Dispatch.ALL)
    def prepare_training(self) -> None:
        """Actor work next: the engine sleeps, the optimizer state comes back."""
        self.rollout.sleep()
        if self._optimizer is not None:
            self._optimizer.restore()
