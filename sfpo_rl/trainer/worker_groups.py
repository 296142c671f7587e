"""The worker groups the driver talks to: actor (FSDP ranks), rollout (vLLM engines), reward (verifiers) and,
only when a KL term is on, a frozen reference policy, placed as `resources.placement` says.

- colocated (the hybrid engine): one process per actor rank hosts the actor, the reference policy (if any)
  and a vLLM engine (`RayWorkerGroup.colocated`); generation is data-parallel over the ranks. The driver
  switches the processes between generation and training (`to_generation` / `to_training`): on GPU the engine
  sleeps while the actor works and the actor's optimizer state may wait in host memory while the engine
  generates. Weights go from each rank's shards to its own engine, one bucket at a time.
- split: each role in its own processes (on GPU, its own GPUs); weights go from actor rank 0 to the engines
  one bucket at a time through Ray's object store, each loaded before the next is gathered.

With a LoRA actor (`actor.lora.rank > 0`) the reference policy is the actor group itself (its adapter switched
off), and a sync sends the adapter alone to engines that serve it (merged full weights to engines that cannot).

Workers that hold nothing the model directory and the actor's current weights cannot give back (reward, and
with split placement rollout and reference) can be rebuilt in place after a death or hang (`restart`); the
actor's state, and with it everything colocated with it, comes back from a checkpoint instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sfpo_rl.algorithms.sfpo import StepPlan
from sfpo_rl.controller import RayWorkerGroup, ResourcePool
from sfpo_rl.protocol import Batch
from sfpo_rl.trainer.config import RunConfig
from sfpo_rl.trainer.run_dir import RunDir
from sfpo_rl.utils.console import say
from sfpo_rl.workers.actor_worker import ActorWorker
from sfpo_rl.workers.colocated import ColocatedRolloutWorker
from sfpo_rl.workers.reference import ReferenceWorker
from sfpo_rl.workers.reward import RewardWorker
from sfpo_rl.workers.rollout import RolloutWorker
from sfpo_rl.workers.update_result import UpdateResult
from sfpo_rl.workers.weight_sync import ColocatedSync, SplitSync, WeightSync

GENERATION, TRAINING = "generation", "training"


@dataclass
class WorkerGroups:
    actor: RayWorkerGroup
    rollout: RayWorkerGroup
    reward: RayWorkerGroup
    ref: RayWorkerGroup | None = None
    build: Callable[[str], RayWorkerGroup] | None = None  # a fresh group for a role (see `restart`)
    colocated: bool = False  # rollout (and ref) share the actor's processes
    sync_bucket_mb: float = 512.0
    sync_dtype: str | None = None  # the engines' dtype; None or "auto": as the actor holds the weights
    sync_adapter: bool = False  # a LoRA actor's adapter alone goes to the (split) engines
    _phase: str | None = field(default=None, repr=False)

    @property
    def restartable_roles(self) -> tuple[str, ...]:
        """Roles whose dead or hung workers can be replaced: not the actor, nor what shares its processes."""
        return ("reward",) if self.colocated else ("rollout", "reward", "ref")

    def to_generation(self) -> None:
        """Before generating: colocated engines wake (the optimizer state may move out first). Idempotent."""
        if self.colocated and self._phase != GENERATION:
            self.rollout.prepare_generation()
        self._phase = GENERATION

    def to_training(self) -> None:
        """Before actor or reference work: colocated engines sleep, the optimizer state comes back."""
        if self.colocated and self._phase != TRAINING:
            self.rollout.prepare_training()
        self._phase = TRAINING

    def generate(self, prompts: Batch, **kwargs) -> Batch:
        """Rollouts of the current policy from every engine (`RolloutWorker.generate`'s options)."""
        self.to_generation()
        return self.rollout.generate(prompts, **kwargs)

    @property
    def weight_sync(self) -> WeightSync:
        """This placement's way of moving the weights (sfpo_rl.workers.weight_sync)."""
        if self.colocated:
            return ColocatedSync()
        return SplitSync(self.sync_bucket_mb, self.sync_dtype, self.sync_adapter)

    def sync_weights(self) -> dict[str, float]:
        """Stream the actor's weights into every engine, one bucket of whole layers at a time."""
        return self.weight_sync(self.actor, self.rollout)

    def update_actor(self, batch: Batch, plan: StepPlan) -> UpdateResult:
        """One SFPO or plain update, as `plan` says; every rank returns the same reduced result."""
        self.to_training()
        if plan.sfpo:
            return self.actor.sfpo_update(batch, plan.inner_steps, plan.alpha)[0]
        return self.actor.update(batch)[0]

    def restart(self, role: str) -> None:
        """Replace the `role` group (one of `restartable_roles`) by a fresh one; new rollout engines get the
        actor's current weights."""
        if role not in self.restartable_roles or self.build is None:
            raise ValueError(f"the {role} worker group cannot be restarted")
        getattr(self, role).shutdown()
        setattr(self, role, self.build(role))
        if role == "rollout":
            self.sync_weights()

    def all(self) -> list[RayWorkerGroup]:
        """Every group once (a LoRA actor's group is also its reference policy)."""
        groups = [self.actor, self.rollout, self.reward, self.ref]
        return [g for i, g in enumerate(groups) if g is not None and all(g is not h for h in groups[:i])]

    def write_pids(self, run_dir: Path) -> None:
        """run_dir/workers.json: role -> per rank {ip, node_id, pid}, for operators (and fault-injection
        tests); rewritten after a restart. Colocated roles list the same processes."""
        path = RunDir(run_dir).workers
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({g.role: g.worker_info for g in self.all()}, indent=1) + "\n")
        os.replace(tmp, path)

    def shutdown(self) -> None:
        for group in self.all():
            group.shutdown()


def build_worker_groups(config: RunConfig, model_path: str) -> WorkerGroups:
    """Every group of the run, started concurrently (their processes load models and engines side by side)."""
    res, trainer = config.resources, config.trainer
    use_gpu = trainer.n_gpus_per_node > 0
    nodes = [res.actor_ranks_per_node] * trainer.nnodes
    specs = {
        "actor": (
            ActorWorker,
            (model_path, config.actor, config.trainer.total_steps, config.faults.nonfinite_loss),
        ),
        "ref": (ReferenceWorker, (model_path, config.actor)),
    }

    def build(role: str) -> RayWorkerGroup:
        """One role in its own pool (split placement; the reward group always)."""
        if role in specs:
            group = RayWorkerGroup(
                ResourcePool(nodes, use_gpu=use_gpu, name=role), specs[role][0], role, *specs[role][1]
            )
        elif role == "rollout":
            pool = ResourcePool(
                [res.rollout_workers_per_node] * trainer.nnodes,
                use_gpu=use_gpu,
                name=role,
                gpus_per_bundle=config.rollout.tensor_parallel_size,
            )
            group = RayWorkerGroup(pool, RolloutWorker, role, model_path, config.rollout, config.actor.lora)
        else:
            pool = ResourcePool([res.reward_workers], use_gpu=False, name=role)
            group = RayWorkerGroup(pool, RewardWorker, role, model_path, config.reward)
        return _ready(group, config)

    def build_colocated() -> dict[str, RayWorkerGroup]:
        """Actor, reference (if any) and rollout in one process per actor rank: the actor first, so the engine
        starts in its process group and sizes its memory around the actor's weights."""
        roles = {"actor": specs["actor"], **({"ref": specs["ref"]} if config.ref_worker else {})}
        roles["rollout"] = (
            ColocatedRolloutWorker,
            (model_path, config.rollout),
            {"offload_optimizer": res.offload_optimizer, "lora": config.actor.lora},
        )
        groups = RayWorkerGroup.colocated(ResourcePool(nodes, use_gpu=use_gpu, name="colocated"), roles)
        return {role: _ready(group, config) for role, group in groups.items()}

    jobs: dict[str, Callable[[], dict[str, RayWorkerGroup]]] = {"reward": lambda: {"reward": build("reward")}}
    if res.colocated:
        jobs["colocated"] = build_colocated
    else:
        for role in ("actor", "rollout", *(("ref",) if config.ref_worker else ())):
            jobs[role] = lambda role=role: {role: build(role)}
    groups = _start_concurrently(jobs)
    for line in describe_placement(list(groups.values())):
        say(f"placement: {line}")
    lora = config.actor.lora
    fallback = groups["rollout"].lora_fallback()[0] if lora.enabled else None
    if lora.enabled:
        serving = f"merged full weights ({fallback})" if fallback else "the adapter alone"
        say(f"LoRA rank {lora.rank}: every weight sync sends {serving}")
    if lora.enabled and config.uses_ref:
        groups["ref"] = groups["actor"]  # the reference policy: the actor with its adapter off
    return WorkerGroups(
        **groups,
        sync_adapter=lora.enabled and fallback is None,
        build=build,
        colocated=res.colocated,
        sync_bucket_mb=config.rollout.sync_bucket_mb,
        sync_dtype=config.rollout.dtype,
    )


def _ready(group: RayWorkerGroup, config: RunConfig) -> RayWorkerGroup:
    group.call_timeout_s = config.trainer.worker_timeout_s or None
    return group


def _start_concurrently(
    jobs: dict[str, Callable[[], dict[str, RayWorkerGroup]]],
) -> dict[str, RayWorkerGroup]:
    """Run each job (it starts groups and waits for them) in its own thread; if any fails, shut down the
    groups the others started and raise the first failure."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs.values()]
    groups, errors = {}, []
    for future in futures:
        try:
            groups.update(future.result())
        except BaseException as exc:  # re-raised below once every started group is down
            errors.append(exc)
    if errors:
        for group in groups.values():
            group.shutdown()
        raise errors[0]
    return groups


def describe_placement(groups: list[RayWorkerGroup]) -> list[str]:
    """Which ranks of which roles run on which Ray node, one line per set of processes, e.g.
    `actor+rollout: node 10.0.0.1/6b1f2c3d ranks [0, 1]` (colocated roles share a line)."""
    by_processes: dict[tuple, list[str]] = {}
    for group in groups:
        pids = tuple(info["pid"] for info in group.worker_info)
        by_processes.setdefault(pids, []).append(group.role)
    lines = []
    for roles in by_processes.values():
        group = next(g for g in groups if g.role == roles[0])
        by_node: dict[tuple[str, str], list[int]] = {}
        for rank, info in enumerate(group.worker_info):
            by_node.setdefault((info["ip"], info["node_id"][:8]), []).append(rank)
        nodes = "; ".join(f"node {ip}/{node} ranks {ranks}" for (ip, node), ranks in by_node.items())
        lines.append(f"{'+'.join(roles)}: {nodes}")
    return lines
