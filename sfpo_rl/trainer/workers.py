"""The worker groups the driver talks to, placed in separate resource pools: actor (FSDP ranks), rollout
(vLLM engines), reward (verifiers) and, only when a KL term is on, a frozen reference policy.

Rollout, reward and reference workers hold nothing that the model directory and the actor's current weights
cannot give back, so a group whose worker died or hung can be rebuilt in place (`restart`); the actor's state
lives only in its ranks and comes back from a checkpoint instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sfpo_rl.algorithms.sfpo import StepPlan
from sfpo_rl.controller import RayWorkerGroup, ResourcePool
from sfpo_rl.protocol import Batch
from sfpo_rl.trainer.config import RunConfig
from sfpo_rl.workers.actor import ActorWorker
from sfpo_rl.workers.reference import ReferenceWorker
from sfpo_rl.workers.reward import RewardWorker
from sfpo_rl.workers.rollout import RolloutWorker
from sfpo_rl.workers.update_result import UpdateResult

RESTARTABLE_ROLES = ("rollout", "reward", "ref")
WORKERS_FILE = "workers.json"


@dataclass
class WorkerGroups:
    actor: RayWorkerGroup
    rollout: RayWorkerGroup
    reward: RayWorkerGroup
    ref: RayWorkerGroup | None = None
    build: Callable[[str], RayWorkerGroup] | None = None  # a fresh group for a role (see `restart`)

    def sync_weights(self) -> dict[str, float]:
        """Push the actor's full weights into every rollout engine; the weights go from actor rank 0 to the
        engines through Ray's object store without passing through the driver."""
        weights = self.actor.state_dict_for_rollout.future()
        stats = self.rollout.load_weights(weights.rank0_ref())
        weights.get()  # surfaces an actor-side failure by name
        return {f"sync/{k}": v for k, v in stats[0].items()}

    def update_actor(self, batch: Batch, plan: StepPlan) -> UpdateResult:
        """One SFPO or plain update, as `plan` says; every rank returns the same reduced result."""
        if plan.sfpo:
            return self.actor.sfpo_update(batch, plan.inner_steps, plan.alpha)[0]
        return self.actor.update(batch)[0]

    def restart(self, role: str) -> None:
        """Replace the `role` group (one of RESTARTABLE_ROLES) by a fresh one; new rollout engines get the
        actor's current weights."""
        if role not in RESTARTABLE_ROLES or self.build is None:
            raise ValueError(f"the {role} worker group cannot be restarted")
        getattr(self, role).shutdown()
        setattr(self, role, self.build(role))
        if role == "rollout":
            self.sync_weights()

    def all(self) -> list[RayWorkerGroup]:
        return [g for g in (self.actor, self.rollout, self.reward, self.ref) if g is not None]

    def write_pids(self, run_dir: Path) -> None:
        """run_dir/workers.json: role -> per rank {ip, node_id, pid}, for operators (and fault-injection
        tests); rewritten after a restart."""
        path = Path(run_dir) / WORKERS_FILE
        tmp = path.with_name(f".{WORKERS_FILE}.tmp")
        tmp.write_text(json.dumps({g.role: g.worker_info for g in self.all()}, indent=1) + "\n")
        os.replace(tmp, path)

    def shutdown(self) -> None:
        for group in self.all():
            group.shutdown()


def build_worker_groups(config: RunConfig, model_path: str) -> WorkerGroups:
    res, trainer = config.resources, config.trainer
    use_gpu = trainer.n_gpus_per_node > 0
    nodes = [res.actor_ranks_per_node] * trainer.nnodes

    def build(role: str) -> RayWorkerGroup:
        if role in ("actor", "ref"):
            pool = ResourcePool(nodes, use_gpu=use_gpu, name=role)
            worker = ActorWorker if role == "actor" else ReferenceWorker
            group = RayWorkerGroup(pool, worker, role, model_path, config.actor)
        elif role == "rollout":
            pool = ResourcePool(
                [res.rollout_workers_per_node] * trainer.nnodes,
                use_gpu=use_gpu,
                name=role,
                gpus_per_bundle=config.rollout.tensor_parallel_size,
            )
            group = RayWorkerGroup(pool, RolloutWorker, role, model_path, config.rollout)
        else:
            pool = ResourcePool([res.reward_workers], use_gpu=False, name=role)
            group = RayWorkerGroup(pool, RewardWorker, role, model_path, config.reward)
        group.call_timeout_s = trainer.worker_timeout_s or None
        print(f"[sfpo_rl] placement: {describe_placement(group)}", flush=True)
        return group

    return WorkerGroups(
        actor=build("actor"),
        rollout=build("rollout"),
        reward=build("reward"),
        ref=build("ref") if config.uses_ref else None,
        build=build,
    )


def describe_placement(group: RayWorkerGroup) -> str:
    """Which ranks run on which Ray node, e.g. `actor: node 10.0.0.1/6b1f2c3d ranks [0, 1]; node ...`."""
    by_node: dict[tuple[str, str], list[int]] = {}
    for rank, info in enumerate(group.worker_info):
        by_node.setdefault((info["ip"], info["node_id"][:8]), []).append(rank)
    nodes = "; ".join(f"node {ip}/{node} ranks {ranks}" for (ip, node), ranks in by_node.items())
    return f"{group.role}: {nodes}"
