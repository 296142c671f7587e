"""Single controller on Ray: resource pools, worker groups and their dispatch modes (see dispatch.py)."""

from sfpo_rl.controller.dispatch import Dispatch, register
from sfpo_rl.controller.ray_init import init_ray
from sfpo_rl.controller.resource_pool import ResourcePool, ResourcePoolError
from sfpo_rl.controller.worker import Worker, WorkerError
from sfpo_rl.controller.worker_group import Future, RayWorkerGroup

__all__ = [
    "Dispatch",
    "Future",
    "RayWorkerGroup",
    "ResourcePool",
    "ResourcePoolError",
    "Worker",
    "WorkerError",
    "init_ray",
    "register",
]
