"""The trainer's own worker groups as the weight-sync and LoRA benchmarks build them on a local Ray: split (two
actor ranks, one vLLM engine in a process of its own) or colocated (each actor rank hosts its engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A short engine: the benchmarks only load weights into it.
ROLLOUT = dict(max_prompt_length=32, max_response_length=32, dtype="float32", kv_cache_gib=0.25)


def start_ray() -> None:
    from sfpo_rl.controller import init_ray

    init_ray(num_cpus=8, env_vars={"VLLM_LOGGING_LEVEL": "ERROR"})


def split_groups(model_dir: Path, bucket_mb: float, name: str = "bench", lora: dict[str, Any] | None = None):
    """2 actor ranks and 1 engine in separate processes, with the full-state weight path besides the streamed one
    (sfpo_rl/bench/full_state.py); with `lora`, a LoRA actor whose adapter alone is
    synced and which the engine serves as an adapter."""
    from sfpo_rl.bench.full_state import FullStateActorWorker, FullStateRolloutWorker
    from sfpo_rl.controller import RayWorkerGroup, ResourcePool
    from sfpo_rl.trainer.worker_groups import WorkerGroups

    actor_cfg = {"lora": lora} if lora else {}
    rollout_args = (str(model_dir), {**ROLLOUT, "sync_bucket_mb": bucket_mb}, *([lora] if lora else []))
    return WorkerGroups(
        actor=RayWorkerGroup(
            ResourcePool([2], name=f"{name}-actor"), FullStateActorWorker, "actor", str(model_dir), actor_cfg
        ),
        rollout=RayWorkerGroup(
            ResourcePool([1], name=f"{name}-rollout"), FullStateRolloutWorker, "rollout", *rollout_args
        ),
        reward=None,
        sync_bucket_mb=bucket_mb,
        sync_adapter=lora is not None,
    )


def colocated_groups(model_dir: Path, bucket_mb: float):
    """2 actor ranks, each hosting an engine in its own process (`resources.placement=colocated`)."""
    from sfpo_rl.controller import RayWorkerGroup, ResourcePool
    from sfpo_rl.trainer.worker_groups import WorkerGroups
    from sfpo_rl.workers.actor_worker import ActorWorker
    from sfpo_rl.workers.colocated import ColocatedRolloutWorker

    roles = {
        "actor": (ActorWorker, (str(model_dir), {})),
        "rollout": (ColocatedRolloutWorker, (str(model_dir), {**ROLLOUT, "sync_bucket_mb": bucket_mb})),
    }
    hosted = RayWorkerGroup.colocated(ResourcePool([2], name="bench-colocated"), roles)
    return WorkerGroups(**hosted, reward=None, colocated=True, sync_bucket_mb=bucket_mb)
