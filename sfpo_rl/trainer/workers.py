"""The worker groups the driver talks to, placed in separate resource pools: actor (FSDP ranks), rollout
(vLLM engines), reward (verifiers) and, only when a KL term is on, a frozen reference policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sfpo_rl.controller import RayWorkerGroup, ResourcePool
from sfpo_rl.protocol import Batch
from sfpo_rl.trainer.config import Validated
from sfpo_rl.workers.actor import ActorWorker
from sfpo_rl.workers.reward import RewardWorker
from sfpo_rl.workers.rollout import RolloutWorker


@dataclass
class WorkerGroups:
    actor: RayWorkerGroup
    rollout: RayWorkerGroup
    reward: RayWorkerGroup
    ref: RayWorkerGroup | None = None

    def sync_weights(self) -> dict[str, float]:
        """Push the actor's full weights into every rollout engine; the weights go from actor rank 0 to the
        engines through Ray's object store without passing through the driver."""
        weights = self.actor.state_dict_for_rollout.future()
        stats = self.rollout.load_weights(weights.rank0_ref())
        weights.get()  # surfaces an actor-side failure by name
        return {f"sync/{k}": v for k, v in stats[0].items()}

    def ref_log_probs(self, batch: Batch) -> Batch:
        out = self.ref.compute_log_prob(batch)
        return Batch.from_dict({"ref_log_probs": out["old_log_probs"]})

    def shutdown(self) -> None:
        for group in (self.actor, self.rollout, self.reward, self.ref):
            if group is not None:
                group.shutdown()


def build_worker_groups(cfg: Any, parts: Validated, model_path: str) -> WorkerGroups:
    res = cfg.resources
    use_gpu = cfg.trainer.n_gpus_per_node > 0
    nodes = [res.actor_ranks_per_node] * cfg.trainer.nnodes

    def pool(name: str, bundles: list[int], gpu: bool = use_gpu, gpus_per_bundle: int = 1) -> ResourcePool:
        return ResourcePool(bundles, use_gpu=gpu, name=name, gpus_per_bundle=gpus_per_bundle)

    actor = RayWorkerGroup(pool("actor", nodes), ActorWorker, "actor", model_path, parts.actor)
    rollout = RayWorkerGroup(
        pool(
            "rollout",
            [res.rollout_workers_per_node] * cfg.trainer.nnodes,
            gpus_per_bundle=parts.rollout.tensor_parallel_size,
        ),
        RolloutWorker,
        "rollout",
        model_path,
        parts.rollout,
    )
    reward = RayWorkerGroup(
        pool("reward", [res.reward_workers], gpu=False), RewardWorker, "reward", model_path, parts.reward
    )
    ref = None
    if parts.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward:
        ref = RayWorkerGroup(pool("ref", nodes), ActorWorker, "ref", model_path, parts.actor)
    for group in (actor, rollout, reward, ref):
        if group is not None:
            print(f"[sfpo_rl] placement: {describe_placement(group)}", flush=True)
    return WorkerGroups(actor=actor, rollout=rollout, reward=reward, ref=ref)


def describe_placement(group: RayWorkerGroup) -> str:
    """Which ranks run on which Ray node, e.g. `actor: node 10.0.0.1/6b1f2c3d ranks [0, 1]; node ...`."""
    by_node: dict[tuple[str, str], list[int]] = {}
    for rank, info in enumerate(group.worker_info):
        by_node.setdefault((info["ip"], info["node_id"][:8]), []).append(rank)
    nodes = "; ".join(f"node {ip}/{node} ranks {ranks}" for (ip, node), ranks in by_node.items())
    return f"{group.role}: {nodes}"
