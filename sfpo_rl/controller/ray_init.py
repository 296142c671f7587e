"""Starting (or joining) the Ray cluster the worker groups run on.

Local default: Ray starts in-process with the dashboard off, no idle workers prestarted, and every Ray server on
the loopback address, so nothing is reachable from outside the machine. It is always a new, private instance:
a plain `ray.init()` would instead join the last cluster `ray start` left on this machine (or the one in
RAY_ADDRESS). With `address=` the driver joins an existing cluster (`"auto"`: RAY_ADDRESS or the last
`ray start` here, `"<head-ip>:6379"` or `"ray://..."`), which then decides resources and networking.

Why more logical CPUs than cores locally: Ray schedules by *logical* resources. Each worker rank reserves one
bundle of `cpus_per_bundle` (default 1) logical CPUs, and the CPU run needs 2 actor ranks + 1 rollout +
1 reward (+ a reference group when KL is on) at once. On a 2-core machine Ray would advertise 2 CPUs and the
groups would wait forever for resources, so the local default advertises `max(8, cores)`. The processes
still share the real cores through the OS; each actor gets OMP_NUM_THREADS=<its logical CPUs> from Ray, so
torch does not oversubscribe them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import ray

DEFAULT_LOCAL_CPUS = 8

# Inherited by every Ray worker process: vLLM keeps its engine inside the actor that owns it (no extra
# engine-core process), and HF tokenizers do not start their own thread pools inside forked workers.
DEFAULT_WORKER_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}

# Ray resolves a 127.0.0.1 node address to the machine's routable IP unless this switch is off; off, every
# Ray server (GCS, raylet, workers, agents) binds to loopback. Its name comes from its original use on
# Windows/macOS; it is honoured on Linux too. Child processes read the environment variable.
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    include_dashboard: bool = False,
    env_vars: dict[str, str] | None = None,
    namespace: str | None = None,
    logging_level: int | str = logging.WARNING,
    localhost_only: bool = True,
    **ray_kwargs: Any,
) -> None:
    """Start a local Ray instance or connect to `address`; a no-op when Ray is already initialized.

    `env_vars` are added to `DEFAULT_WORKER_ENV` (yours win) in the job's runtime_env, so every worker
    process inherits them. Extra keyword arguments go to `ray.init` unchanged.
    """
    if address is not None and (num_cpus is not None or num_gpus is not None):
        raise ValueError(
            f"init_ray(address={address!r}): num_cpus/num_gpus describe a local Ray instance; "
            "an existing cluster advertises its own resources"
        )
    if ray.is_initialized():
        return
    runtime_env = dict(ray_kwargs.pop("runtime_env", None) or {})
    worker_env = {**DEFAULT_WORKER_ENV, **runtime_env.get("env_vars", {}), **(env_vars or {})}
    runtime_env["env_vars"] = {k: str(v) for k, v in worker_env.items()}
    common: dict[str, Any] = dict(
        namespace=namespace, runtime_env=runtime_env, logging_level=logging_level, **ray_kwargs
    )
    if address is not None:
        ray.init(address=address, **common)
        return
    # Ray would prestart idle default workers when the driver connects; every worker here is an actor with
    # its own process, so they would only sit idle (about 40 MiB each).
    system_config = {"prestart_worker_first_driver": False, **common.pop("_system_config", {})}
    local = dict(
        _system_config=system_config,
        address="local",
        num_cpus=num_cpus if num_cpus is not None else max(DEFAULT_LOCAL_CPUS, os.cpu_count() or 1),
        num_gpus=num_gpus,
        include_dashboard=include_dashboard,
        dashboard_host="127.0.0.1",
    )
    if not localhost_only:
        ray.init(**local, **common)
        return
    with _loopback_only():
        ray.init(**local, _node_ip_address="127.0.0.1", **common)


def ensure_ray() -> None:
    """Start the local default unless Ray is already running (resource pools call this)."""
    if not ray.is_initialized():
        init_ray()


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While Ray starts: the Ray processes it spawns inherit the switch (they read it at import), and the
    driver, which read it when `ray` was imported, gets the constant set directly. Both are restored
    afterwards; once started, Ray uses the node address it recorded. If a future Ray drops the constant, it
    falls back to the routable IP (still token-authenticated)."""
    from ray._private import ray_constants

    saved_env = os.environ.get(_LOOPBACK_SWITCH)
    saved_const = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_LOOPBACK_SWITCH] = "0"
    if saved_const is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_LOOPBACK_SWITCH, None)
        else:
            os.environ[_LOOPBACK_SWITCH] = saved_env
        if saved_const is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_const
