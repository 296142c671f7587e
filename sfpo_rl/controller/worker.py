"""The worker base class, the error the driver sees when a worker fails, and the Ray actor that hosts workers.

Every rank of a worker group is one Ray actor process running a `WorkerHost`. The host first reports where
it runs (so the group can pick MASTER_ADDR/MASTER_PORT and local ranks), then receives the rank's
environment and builds the worker object(s): one per role, several when roles are colocated in one process.
Group calls go through `WorkerHost.call`, which turns any exception into a `WorkerError` that names the role,
rank, worker class and method and carries the worker-side traceback (without Ray's frames). With
SFPO_RL_WORKER_LOG_DIR in its environment a host writes its process's output to `<dir>/<role>-rank<rank>.log`.
"""

from __future__ import annotations

import os
import signal
import socket
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist

from sfpo_rl.controller.dispatch import take_chunk
from sfpo_rl.utils.console import WORKER_LOG_DIR_ENV, send_output_to

ROLE_ENV = "SFPO_ROLE"

# The workers this process hosts, by role (a worker process runs one WorkerHost; see Worker.colocated).
_HOSTED: dict[str, Worker] = {}


class WorkerError(RuntimeError):
    """A worker failed: an exception in one of its methods (or its __init__), its process died, or a call
    outlived its time limit."""

    def __init__(
        self,
        message: str,
        *,
        role: str | None = None,
        rank: int | None = None,
        worker_class: str | None = None,
        method: str | None = None,
        died: bool = False,
        timed_out: bool = False,
    ):
        super().__init__(message)
        self.role = role
        self.rank = rank
        self.worker_class = worker_class
        self.method = method
        self.died = died  # the worker's process is gone (rather than a method having raised)
        self.timed_out = timed_out  # the call outlived its time limit: the worker may be hung

    @staticmethod
    def where(role: str, rank: int, worker_class: str, method: str) -> str:
        return f"{role} worker rank {rank} ({worker_class}.{method})"


class Worker:
    """Base class of every worker (actor, rollout, reward, reference).

    Inside a group, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and SFPO_ROLE are
    in the environment and `role` is set before the subclass's __init__ runs. Outside a group (a plain
    single-process object, e.g. in a unit test) the rank properties read as rank 0 of 1.
    """

    _sfpo_role: str

    @property
    def role(self) -> str:
        return getattr(self, "_sfpo_role", type(self).__name__)

    @property
    def rank(self) -> int:
        return int(os.environ.get("RANK", "0"))

    @property
    def world_size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", "1"))

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def device(self) -> torch.device:
        """This rank's accelerator, else CPU. Ray gives each GPU actor only its own GPU(s) in
        CUDA_VISIBLE_DEVICES, so with one visible device it is cuda:0 whatever the local rank."""
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank if torch.cuda.device_count() > 1 else 0)

    def colocated(self, role: str) -> Worker:
        """The worker of `role` hosted in this same process (roles placed together with
        `RayWorkerGroup.colocated`), e.g. the actor rank whose weights a colocated rollout engine loads."""
        worker = _HOSTED.get(role)
        if worker is None:
            raise LookupError(
                f"{self.role} worker: no '{role}' worker in this process (it hosts {sorted(_HOSTED)}); place the "
                "roles together with RayWorkerGroup.colocated"
            )
        return worker

    def init_process_group(self, backend: str | None = None, timeout_s: float = 1800.0) -> None:
        """Join this group's default torch.distributed process group (gloo on CPU, nccl on GPU by default).

        Every rank must call it (register the calling method `Dispatch.ALL`). A second call, e.g. from a
        colocated role in the same process, is a no-op: a process has one default group.
        """
        if dist.is_initialized():
            return
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=self.rank,
            world_size=self.world_size,
            timeout=timedelta(seconds=timeout_s),
        )


def _worker_traceback(exc: BaseException) -> str:
    """The exception's traceback without the host's own frame (the first one)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


class WorkerHost:
    """The Ray actor of one rank; hosts the worker object of each role placed in this process."""

    def __init__(self) -> None:
        self._workers: dict[str, Any] = {}
        self._rank = -1

    def node_info(self) -> dict[str, Any]:
        """Where this rank runs, and a port that is free on its node (rank 0's becomes MASTER_PORT)."""
        with socket.socket() as s:
            s.bind(("", 0))
            free_port = s.getsockname()[1]
        return {
            "ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "free_port": free_port,
        }

    def start(self, env: dict[str, str], roles: dict[str, tuple[type, tuple, dict]]) -> None:
        """Set the rank's environment, then build each role's worker in order."""
        os.environ.update(env)
        self._rank = rank = int(env["RANK"])
        if os.environ.get(WORKER_LOG_DIR_ENV):  # before the workers import and load anything
            send_output_to(Path(os.environ[WORKER_LOG_DIR_ENV]) / f"{'+'.join(roles)}-rank{rank}.log")
        for role, (cls, args, kwargs) in roles.items():
            try:
                worker = cls.__new__(cls)
                worker._sfpo_role = role  # visible to the subclass's __init__
                worker.__init__(*args, **kwargs)
            except Exception as exc:
                raise self._error(role, rank, cls.__name__, "__init__", exc) from None
            self._workers[role] = _HOSTED[role] = worker

    def kill_process(self) -> None:
        """SIGKILL this process, as an OOM killer or a lost node would (fault-injection tests)."""
        os.kill(os.getpid(), signal.SIGKILL)

    def call(self, _sfpo_route: tuple[str, str, tuple[int, int] | None], *args: Any, **kwargs: Any) -> Any:
        """Run `role.method(*args, **kwargs)`; route = (role, method, chunk) where chunk=(i, n) means
        "keep chunk i of n of the first argument" (data sent whole as an ObjectRef)."""
        role, method, chunk = _sfpo_route
        worker = self._workers[role]
        try:
            if chunk is not None:
                args = (take_chunk(args[0], *chunk), *args[1:])
            return getattr(worker, method)(*args, **kwargs)
        except Exception as exc:
            raise self._error(role, self._rank, type(worker).__name__, method, exc) from None

    @staticmethod
    def _error(role: str, rank: int, worker_class: str, method: str, exc: Exception) -> WorkerError:
        where = WorkerError.where(role, rank, worker_class, method)
        message = (
            f"{where} raised {type(exc).__name__}: {exc}\n"
            f"--- worker traceback (pid {os.getpid()}) ---\n{_worker_traceback(exc)}"
        )
        return WorkerError(message, role=role, rank=rank, worker_class=worker_class, method=method)
