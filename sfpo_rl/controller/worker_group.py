"""Worker groups: N Ray actors (one per bundle of a resource pool, rank i in bundle i) driven by one driver.

Every `@register`-ed method of the worker class appears on the group. `group.method(...)` dispatches (see
`dispatch.py`), waits and returns the collected result; `group.method.future(...)` returns a `Future` at once
so the driver can overlap groups. Arguments may be Ray ObjectRefs (resolved by Ray in the worker; a DP_SPLIT
ObjectRef is fetched whole by every rank, which keeps its own chunk) or `Future`s (collected in the driver
first). Only top-level arguments are resolved, as in Ray.

Failures: an exception in a worker method or __init__, a worker process that died, or a call that outlived
`group.call_timeout_s` (or `Future.get(timeout)`) raises `WorkerError` in the driver naming role, rank, worker
class and method, with the worker-side traceback (`died` / `timed_out` tell the kinds apart). A result is
checked as soon as any rank finishes, so a failing rank is reported even while its peers wait for it inside
a collective (those peers stay blocked; shut the group down).

Colocation: `RayWorkerGroup.colocated(pool, {"actor": (ActorWorker, args, kwargs), "rollout": ...})` puts every
role in the same process of each bundle and returns one group per role; their calls run one at a time in
that process, and a worker reaches the other roles of its process with `Worker.colocated(role)` (a colocated
rollout engine loads its actor rank's weights that way). Separate pools (one group each) are the default.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from sfpo_rl.controller.dispatch import MethodSpec, collect_results, plan_calls, registered_methods
from sfpo_rl.controller.resource_pool import ResourcePool
from sfpo_rl.controller.worker import ROLE_ENV, Worker, WorkerError, WorkerHost

RoleSpec = tuple[type[Worker], tuple, dict[str, Any]]

START_TIMEOUT_S = 600.0  # worker __init__ may load a model or start an inference engine
ERROR_GRACE_S = 1.0  # after one rank fails, how long to wait for the others before raising


class Future:
    """The pending result of one group call. `get()` waits, raises `WorkerError` on failure, and collects."""

    def __init__(
        self,
        hosts: _Hosts,
        role: str,
        worker_class: str,
        method: str,
        ranks: list[int],
        refs: list[ray.ObjectRef],
        collect: Callable[[list[Any]], Any],
    ):
        self._hosts = hosts
        self._role = role
        self._worker_class = worker_class
        self._method = method
        self._ranks = ranks
        self.refs = refs
        self._collect = collect

    def get(self, timeout: float | None = None) -> Any:
        index = {ref: i for i, ref in enumerate(self.refs)}
        results: list[Any] = [None] * len(self.refs)
        pending = list(self.refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
            if not ready:
                waiting = sorted(self._ranks[index[ref]] for ref in pending)
                where = WorkerError.where(self._role, waiting[0], self._worker_class, self._method)
                raise WorkerError(
                    f"{where} did not finish within {timeout:g} s (ranks {waiting} still running); it may be hung",
                    role=self._role,
                    rank=waiting[0],
                    worker_class=self._worker_class,
                    method=self._method,
                    timed_out=True,
                )
            for ref in ready:
                i = index[ref]
                try:
                    results[i] = ray.get(ref)
                except RayError as err:
                    others = [r for r in self.refs if r is not ref]
                    raise self._root_cause((self._ranks[i], err), others, index) from None
        return self._collect(results)

    def _root_cause(
        self, first: tuple[int, RayError], others: list[ray.ObjectRef], index: dict
    ) -> WorkerError:
        """SPMD ranks often fail together: give the others a moment and name those that failed too (fetching
        their errors also keeps Ray from dumping them as 'unhandled' later). A rank whose process died is the
        cause (its peers only lose their connection to it), so it is reported first even when a peer's
        error arrived before its death did."""
        ready, _ = ray.wait(others, num_returns=len(others), timeout=ERROR_GRACE_S) if others else ([], [])
        failures = [first]
        for ref in ready:
            try:
                ray.get(ref)
            except RayError as err:
                failures.append((self._ranks[index[ref]], err))
        died = [f for f in failures if isinstance(f[1], RayActorError)]
        rank, err = (died or failures)[0]
        error = self._worker_error(rank, err)
        also = sorted(r for r, _ in failures if r != rank)
        if also:
            error.add_note(f"{self._role}.{self._method} failed on ranks {also} as well")
        return error

    def done(self) -> bool:
        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        return len(ready) == len(self.refs)

    def rank0_ref(self) -> ray.ObjectRef:
        """Rank 0's raw result as an ObjectRef, to hand to another group without a round trip via the driver."""
        if self._ranks[0] != 0:
            raise ValueError(f"{self._role}.{self._method}: rank 0 was not called")
        return self.refs[0]

    def _worker_error(self, rank: int, err: RayError) -> WorkerError:
        # Raised by the worker itself, or by the upstream worker whose result was passed in as an argument.
        if isinstance(err, RayTaskError) and isinstance(err.cause, WorkerError):
            return err.cause
        where = WorkerError.where(self._role, rank, self._worker_class, self._method)
        info = self._hosts.infos[rank] if rank < len(self._hosts.infos) else {}
        process = f"pid {info['pid']} on {info['ip']}" if info else "its process"
        if isinstance(err, ActorDiedError):
            message = f"{where} failed: the worker process ({process}) died. {_death_reason(err)}"
        elif isinstance(err, RayActorError):
            message = f"{where} failed: the worker process ({process}) is unreachable. {_death_reason(err)}"
        elif isinstance(err, RayTaskError):
            cause = getattr(err.cause, "client_exc", err.cause)  # RaySystemError wraps the real one
            message = (
                f"{where} failed outside the method, passing arguments or results: {type(cause).__name__}: "
                f"{cause} (worker classes and arguments must be importable and unpicklable in the worker process)"
            )
        else:
            message = f"{where} failed in Ray: {type(err).__name__}: {str(err).splitlines()[0]}"
        return WorkerError(
            message,
            role=self._role,
            rank=rank,
            worker_class=self._worker_class,
            method=self._method,
            died=isinstance(err, RayActorError),
        )


def _death_reason(err: RayActorError) -> str:
    """Ray's explanation without its generic preamble, per-actor field dump and troubleshooting advice."""
    text = getattr(err, "error_msg", None) or str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("\t")]
    reason = " ".join(lines[1:]) or " ".join(lines)
    return reason.split(" Some common causes")[0]


class _Hosts:
    """The Ray actors of one pool (one per rank) and the roles they host; shared by colocated groups."""

    def __init__(self, pool: ResourcePool, roles: dict[str, RoleSpec]):
        self.label = "+".join(roles)
        bundles = pool.bundles()
        if pool.hosted_by is not None:
            raise ValueError(
                f"{pool!r} already hosts the '{pool.hosted_by}' group; give each group its own pool, or put "
                "several roles in one pool with RayWorkerGroup.colocated"
            )
        pool.hosted_by = self.label
        self.pool = pool
        self.class_names = "+".join(spec[0].__name__ for spec in roles.values())
        self.alive = True
        host_cls = ray.remote(type(re.sub(r"\W", "_", f"{self.label}_host"), (WorkerHost,), {}))
        self.handles: list[ActorHandle] = [
            host_cls.options(
                num_cpus=pool.cpus_per_bundle,
                num_gpus=pool.gpus_per_bundle,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            ).remote()
            for pg, i in bundles
        ]
        self.infos: list[dict[str, Any]] = []
        try:
            self.infos = self._all("node_info", list).get(timeout=START_TIMEOUT_S)
            self.master_addr = self.infos[0]["ip"]
            self.master_port = self.infos[0]["free_port"]
            self._all("start", list, lambda rank: (self._rank_env(rank), roles)).get(timeout=START_TIMEOUT_S)
        except BaseException:
            self.shutdown()
            raise

    @property
    def world_size(self) -> int:
        return len(self.handles)

    def _rank_env(self, rank: int) -> dict[str, str]:
        node = self.infos[rank]["node_id"]
        same_node = [r for r, info in enumerate(self.infos) if info["node_id"] == node]
        return {
            "RANK": str(rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(same_node.index(rank)),
            "LOCAL_WORLD_SIZE": str(len(same_node)),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            ROLE_ENV: self.label,
        }

    def _all(self, method: str, collect: Callable, args_of: Callable[[int], tuple] = lambda _: ()) -> Future:
        """A host-level call on every rank (setup steps), failing like a worker call would."""
        refs = [getattr(h, method).remote(*args_of(rank)) for rank, h in enumerate(self.handles)]
        name = "__init__" if method == "start" else method
        return Future(self, self.label, self.class_names, name, list(range(self.world_size)), refs, collect)

    def shutdown(self) -> None:
        if not self.alive:
            return
        self.alive = False
        for handle in self.handles:
            ray.kill(handle, no_restart=True)
        self.pool.remove()


class GroupMethod:
    """A registered worker method as seen on the group: call it, or `.future(...)` it."""

    def __init__(self, group: RayWorkerGroup, name: str, spec: MethodSpec, doc: str | None):
        self._group = group
        self._name = name
        self._spec = spec
        self.__doc__ = doc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        future = self.future(*args, **kwargs)
        return future.get(timeout=self._group.call_timeout_s) if self._spec.blocking else future

    def future(self, *args: Any, **kwargs: Any) -> Future:
        return self._group._submit(self._name, self._spec, args, kwargs)

    def __repr__(self) -> str:
        return f"<{self._group.role}.{self._name} ({self._spec.dispatch.value})>"


class RayWorkerGroup:
    """One Ray actor per bundle of `pool`, each building `worker_cls(*args, **kwargs)` as rank i of the group.

    The group owns its pool: `shutdown()` kills the actors and removes the pool's placement groups (and so
    does a failed start).
    """

    def __init__(self, pool: ResourcePool, worker_cls: type[Worker], role: str, /, *args: Any, **kwargs: Any):
        roles = {role: _role_spec(role, (worker_cls, args, kwargs))}
        self._attach(_Hosts(pool, roles), role, worker_cls)

    @classmethod
    def colocated(
        cls, pool: ResourcePool, roles: Mapping[str, tuple[type[Worker], tuple, dict[str, Any]] | tuple]
    ) -> dict[str, RayWorkerGroup]:
        """Several roles in one process per bundle; returns one group per role, in the order given.

        Each value is `(worker_cls, args, kwargs)` (`args` and `kwargs` may be left off). Roles are built in
        that order in each process; shutting down any of the groups shuts down all of them.
        """
        if not roles:
            raise ValueError("RayWorkerGroup.colocated: give at least one role")
        specs = {role: _role_spec(role, spec) for role, spec in roles.items()}
        hosts = _Hosts(pool, specs)
        groups = {}
        for role, (worker_cls, _, _) in specs.items():
            group = cls.__new__(cls)
            group._attach(hosts, role, worker_cls)
            groups[role] = group
        return groups

    def _attach(self, hosts: _Hosts, role: str, worker_cls: type[Worker]) -> None:
        # Blocking calls that run longer raise WorkerError(timed_out=True); None: wait forever.
        self.call_timeout_s: float | None = None
        self._hosts = hosts
        self._role = role
        self._worker_cls = worker_cls
        for name, spec in registered_methods(worker_cls).items():
            if hasattr(RayWorkerGroup, name):
                raise ValueError(
                    f"{worker_cls.__name__}.{name} is registered but RayWorkerGroup already has an attribute "
                    f"'{name}'; rename the worker method"
                )
            setattr(self, name, GroupMethod(self, name, spec, getattr(worker_cls, name).__doc__))

    # ------------------------------------------------------------------ description
    @property
    def role(self) -> str:
        return self._role

    @property
    def worker_cls(self) -> type[Worker]:
        return self._worker_cls

    @property
    def world_size(self) -> int:
        return self._hosts.world_size

    @property
    def pool(self) -> ResourcePool:
        return self._hosts.pool

    @property
    def actor_handles(self) -> list[ActorHandle]:
        """The Ray actor of each rank (shared with colocated groups)."""
        return list(self._hosts.handles)

    @property
    def master_addr(self) -> str:
        return self._hosts.master_addr

    @property
    def master_port(self) -> int:
        return self._hosts.master_port

    @property
    def worker_info(self) -> list[dict[str, Any]]:
        """Per rank: node `ip`, `node_id` and process `pid`."""
        keys = ("ip", "node_id", "pid")
        return [{k: info[k] for k in keys} for info in self._hosts.infos]

    def __repr__(self) -> str:
        state = "" if self._hosts.alive else ", shut down"
        return f"RayWorkerGroup({self._role!r}, {self._worker_cls.__name__}, world_size={self.world_size}{state})"

    # ------------------------------------------------------------------ calls
    def _submit(self, method: str, spec: MethodSpec, args: tuple, kwargs: dict[str, Any]) -> Future:
        if not self._hosts.alive:
            raise WorkerError(
                f"{self._role} worker group was shut down; cannot call {method}",
                role=self._role,
                method=method,
            )
        args = tuple(_resolved(a) for a in args)
        kwargs = {k: _resolved(v) for k, v in kwargs.items()}
        calls = plan_calls(
            method, spec, self.world_size, args, kwargs, is_remote_ref=lambda x: isinstance(x, ray.ObjectRef)
        )
        refs = [
            self._hosts.handles[c.rank].call.remote((self._role, method, c.chunk), *c.args, **c.kwargs)
            for c in calls
        ]
        return Future(
            self._hosts,
            self._role,
            self._worker_cls.__name__,
            method,
            [c.rank for c in calls],
            refs,
            lambda results: collect_results(spec, results),
        )

    def kill_worker(self, rank: int) -> None:
        """SIGKILL rank `rank`'s process and wait until Ray sees it dead (fault-injection tests): the group's
        next call fails the way it would after a real crash."""
        ref = self._hosts.handles[rank].kill_process.remote()
        try:
            ray.get(ref)
        except RayActorError:
            return
        raise RuntimeError(f"{self._role} worker rank {rank} survived SIGKILL")

    def shutdown(self) -> None:
        """Kill the actors and remove the pool's placement groups (idempotent)."""
        self._hosts.shutdown()


def _resolved(value: Any) -> Any:
    return value.get() if isinstance(value, Future) else value


def _role_spec(role: str, spec: tuple) -> RoleSpec:
    if not isinstance(role, str) or not role:
        raise ValueError(f"worker group role must be a non-empty string, got {role!r}")
    if not isinstance(spec, tuple) or not 1 <= len(spec) <= 3:
        raise ValueError(f"role '{role}': expected (worker_cls, args, kwargs), got {spec!r}")
    worker_cls = spec[0]
    args = spec[1] if len(spec) > 1 else ()
    kwargs = spec[2] if len(spec) > 2 else {}
    if not (isinstance(worker_cls, type) and issubclass(worker_cls, Worker)):
        raise TypeError(f"role '{role}': {worker_cls!r} is not a subclass of sfpo_rl.controller.Worker")
    return worker_cls, tuple(args), dict(kwargs)
