"""Worker groups on a real local Ray instance: dispatch, futures, ObjectRef arguments, failures, torch.distributed,
colocation and shutdown."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
import ray
import torch
import torch.distributed as dist

from sfpo_rl.controller import (
    Dispatch,
    RayWorkerGroup,
    ResourcePool,
    ResourcePoolError,
    Worker,
    WorkerError,
    init_ray,
    register,
)
from sfpo_rl.protocol import Batch

pytestmark = pytest.mark.slow

# Ray workers cannot import this test module by name (pytest put its folder on the driver's sys.path only),
# so the worker classes below travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class TagWorker(Worker):
    """Tags rows with the rank that handled them; small probes for every dispatch mode."""

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.calls = 0

    @register(dispatch=Dispatch.DP_SPLIT)
    def tag(self, batch: Batch) -> Batch:
        out = batch.select(keys=["x"], non_tensor_keys=["name"])
        out["rank"] = torch.full((len(batch),), self.rank, dtype=torch.long)
        out["x"] = batch["x"] + self.offset
        return out

    @register(dispatch=Dispatch.DP_SPLIT)
    def tag_list(self, items: list) -> list:
        return [(self.rank, item) for item in items]

    @register(dispatch=Dispatch.DP_SPLIT)
    def row_stats(self, batch: Batch) -> dict[str, float]:
        return {"rank": self.rank, "rows": len(batch)}

    @register(dispatch=Dispatch.ALL)
    def count_call(self) -> int:
        self.calls += 1
        return self.calls

    @register(dispatch=Dispatch.RANK0)
    def count_call_rank0(self) -> int:
        self.calls += 1
        return self.rank

    @register(dispatch=Dispatch.ALL)
    def env(self) -> dict[str, str]:
        keys = (
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
            "SFPO_ROLE",
            "SFPO_TEST_MARKER",
        )
        return {k: os.environ.get(k) for k in keys}

    @register(dispatch=Dispatch.ALL)
    def length(self, batch: Batch, scale: int = 1) -> int:
        return len(batch) * scale

    @register(dispatch=Dispatch.ALL)
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return time.monotonic()

    @register(dispatch=Dispatch.ALL)
    def fail_on(self, ranks: list[int]) -> int:
        if self.rank in ranks:
            raise ValueError(f"boom from rank {self.rank}")
        return self.rank

    @register(dispatch=Dispatch.ALL)
    def exit_on(self, rank: int) -> int:
        if self.rank == rank:
            os._exit(3)
        return self.rank

    @register(dispatch=Dispatch.ALL)
    def raise_then_exit(self, rank: int) -> int:
        """Every other rank raises at once; `rank` dies a moment later (a peer's error arrives first)."""
        if self.rank != rank:
            raise ConnectionResetError(f"rank {self.rank} lost its peer")
        time.sleep(0.3)
        os._exit(3)

    @register(dispatch=Dispatch.ALL)
    def all_reduce_sum(self) -> float:
        self.init_process_group()
        t = torch.tensor([self.rank + 1.0], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item()

    @register(dispatch=Dispatch.ALL)
    def whoami(self) -> tuple[str, int, int]:
        return self.role, self.rank, os.getpid()


class RolloutProbe(Worker):
    """A second role, colocated with TagWorker in the colocation test."""

    def __init__(self, name: str):
        self.name = name

    @register(dispatch=Dispatch.ALL)
    def whoami(self) -> tuple[str, int, int]:
        return self.role, self.rank, os.getpid()


class FailingInit(Worker):
    def __init__(self, bad_rank: int):
        if self.rank == bad_rank:
            raise RuntimeError(f"cannot load model on rank {self.rank}")

    @register(dispatch=Dispatch.ALL)
    def ping(self) -> int:
        return self.rank


@pytest.fixture(scope="module")
def ray_local() -> bool:
    """Ray for this module; True when this module started it (another module may have left one running)."""
    started = not ray.is_initialized()
    init_ray(num_cpus=8, env_vars={"SFPO_TEST_MARKER": "from-init-ray"})
    yield started
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def trio(ray_local):
    """Three ranks, so uneven splits (7 rows -> 3, 2, 2) are visible."""
    group = RayWorkerGroup(ResourcePool([3], name="trio"), TagWorker, "actor", offset=100)
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def colocated(ray_local):
    pool = ResourcePool([2], name="coloc")
    groups = RayWorkerGroup.colocated(
        pool, {"actor": (TagWorker, (), {"offset": 0}), "rollout": (RolloutProbe, ("engine",))}
    )
    yield groups
    groups["actor"].shutdown()


def _wait_until_dead(handle, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(handle.node_info.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError(f"actor {handle} still answers {timeout_s} s after it was killed")


def _process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _rows(n: int) -> Batch:
    return Batch.from_dict({"x": torch.arange(n), "name": [f"row{i}" for i in range(n)]})


def test_dp_split_reassembles_in_rank_order_with_uneven_chunks(trio):
    out = trio.tag(_rows(7))
    assert out["x"].tolist() == [100 + i for i in range(7)]
    assert out["rank"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert list(out["name"]) == [f"row{i}" for i in range(7)]
    # fewer rows than ranks: the last rank gets an empty chunk and the order still holds
    assert trio.tag(_rows(2))["rank"].tolist() == [0, 1]


def test_dp_split_list_and_dict_results(trio):
    assert trio.tag_list(list("abcde")) == [(0, "a"), (0, "b"), (1, "c"), (1, "d"), (2, "e")]
    # a non-Batch, non-list result (metrics) comes back as the list of per-rank results
    assert trio.row_stats(_rows(8)) == [
        {"rank": 0, "rows": 3},
        {"rank": 1, "rows": 3},
        {"rank": 2, "rows": 2},
    ]


def test_all_and_rank0_semantics(trio):
    before = trio.count_call()
    assert trio.count_call_rank0() == 0
    after = trio.count_call()
    # RANK0 ran on rank 0 only; ALL ran on every rank and returned one result per rank
    assert [a - b for a, b in zip(after, before)] == [2, 1, 1]
    assert trio.length(_rows(5), scale=2) == [10, 10, 10]


def test_rank_environment(trio):
    envs = trio.env()
    assert [e["RANK"] for e in envs] == ["0", "1", "2"]
    assert {e["WORLD_SIZE"] for e in envs} == {"3"}
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2"]  # one node
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {(trio.master_addr, str(trio.master_port))}
    assert trio.master_addr == "127.0.0.1"  # the local default keeps Ray on loopback
    assert {e["SFPO_ROLE"] for e in envs} == {"actor"}


def test_init_ray_env_vars_reach_the_workers(ray_local, trio):
    if not ray_local:
        pytest.skip("Ray was started before this module, without its env_vars")
    assert {e["SFPO_TEST_MARKER"] for e in trio.env()} == {"from-init-ray"}


def test_futures_overlap_across_groups(trio, colocated):
    start = time.monotonic()
    a = trio.sleep.future(1.0)
    b = colocated["actor"].sleep.future(1.0)
    assert not a.done()
    ends = a.get() + b.get()
    elapsed = time.monotonic() - start
    assert len(ends) == 5
    assert elapsed < 1.8, f"two 1 s calls on different groups took {elapsed:.2f} s: they did not overlap"


def test_objectref_arguments(trio):
    ref = ray.put(_rows(7))
    out = trio.tag(ref)  # each rank fetches the batch and keeps its own chunk
    assert out["rank"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert out["x"].tolist() == [100 + i for i in range(7)]
    assert trio.length(ref, scale=ray.put(3)) == [21, 21, 21]
    # a future's rank-0 result handed to the next call without passing through the driver
    first = trio.tag.future(_rows(4))
    assert trio.length(first.rank0_ref()) == [2, 2, 2]
    # a failed upstream result passed on as a ref: the error names the worker that actually failed
    failed = trio.fail_on.future([0])
    with pytest.raises(WorkerError) as info:
        trio.length(failed.rank0_ref())
    assert (info.value.rank, info.value.method) == (0, "fail_on")
    # a Future argument stands for its collected value
    assert trio.length(trio.tag.future(_rows(6))) == [6, 6, 6]


def test_worker_exception_names_role_rank_and_class(trio):
    with pytest.raises(WorkerError) as info:
        trio.fail_on([1])
    err = info.value
    assert (err.role, err.rank, err.worker_class, err.method) == ("actor", 1, "TagWorker", "fail_on")
    assert not err.died  # an exception is not a dead process: the trainer does not restart the worker
    message = str(err)
    assert message.startswith("actor worker rank 1 (TagWorker.fail_on) raised ValueError: boom from rank 1")
    assert "in fail_on" in message  # the worker-side traceback
    assert "ray::" not in message  # not Ray's wrapper dump
    assert trio.fail_on([]) == [0, 1, 2]  # an exception does not kill the workers
    with pytest.raises(WorkerError) as info:
        trio.fail_on([0, 2])
    others = {0, 2} - {info.value.rank}
    assert info.value.__notes__ == [f"actor.fail_on failed on ranks {sorted(others)} as well"]


@contextlib.contextmanager
def _throwaway_group(role: str, ranks: int) -> Iterator[RayWorkerGroup]:
    """A group for a test that kills its workers."""
    group = RayWorkerGroup(ResourcePool([ranks], name=f"throwaway-{role}"), TagWorker, role)
    try:
        yield group
    finally:
        group.shutdown()


def test_dead_workers_give_a_clear_error(ray_local):
    with _throwaway_group("reward", 2) as group:
        with pytest.raises(
            WorkerError,
            match=r"^reward worker rank 1 \(TagWorker\.exit_on\) failed: the worker "
            r"process \(pid \d+ on 127\.0\.0\.1\) died",
        ) as info:
            group.exit_on(1)
        assert info.value.rank == 1 and info.value.died
        ray.kill(group.actor_handles[0])
        _wait_until_dead(group.actor_handles[0])  # ray.kill is asynchronous
        with pytest.raises(
            WorkerError, match=r"^reward worker rank 0 \(TagWorker\.count_call_rank0\) .* died.*ray\.kill"
        ):
            group.count_call_rank0()


def test_a_dead_rank_is_reported_as_the_cause_before_its_peers_errors(ray_local):
    with _throwaway_group("actor", 3) as group:
        with pytest.raises(
            WorkerError, match=r"^actor worker rank 2 \(TagWorker\.raise_then_exit\) .* died"
        ) as info:
            group.raise_then_exit(2)
        assert info.value.__notes__ == ["actor.raise_then_exit failed on ranks [0, 1] as well"]


def test_a_call_past_the_groups_time_limit_is_reported_as_hung(ray_local):
    with _throwaway_group("reward", 2) as group:
        group.call_timeout_s = 0.5
        with pytest.raises(WorkerError) as info:
            group.sleep(30)
        assert str(info.value) == (
            "reward worker rank 0 (TagWorker.sleep) did not finish within 0.5 s (ranks [0, 1] still running); "
            "it may be hung"
        )
        assert info.value.timed_out and not info.value.died


def test_kill_worker_sigkills_the_rank_and_the_next_call_names_it(ray_local):
    with _throwaway_group("rollout", 2) as group:
        pid = group.worker_info[1]["pid"]
        group.kill_worker(1)
        # Ray sees the socket close before the kernel has torn the process down, so give the exit a moment:
        # the process must go, not just be marked dead by Ray
        deadline = time.monotonic() + 10
        while _process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _process_alive(pid)
        with pytest.raises(
            WorkerError, match=rf"^rollout worker rank 1 \(TagWorker\.count_call\) .*pid {pid}.* died"
        ):
            group.count_call()


def test_exception_in_init_fails_the_group_and_frees_the_pool(ray_local):
    free_before = ray.available_resources().get("CPU", 0)
    pool = ResourcePool([2], name="bad_init")
    with pytest.raises(WorkerError) as info:
        RayWorkerGroup(pool, FailingInit, "ref", 1)
    err = info.value
    assert (err.role, err.rank, err.worker_class, err.method) == ("ref", 1, "FailingInit", "__init__")
    assert "RuntimeError: cannot load model on rank 1" in str(err)
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < free_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == free_before


def test_torch_distributed_across_ranks(trio):
    # gloo all_reduce across the three actor processes: every rank sees 1 + 2 + 3
    assert trio.all_reduce_sum.future().get(timeout=120) == [6.0, 6.0, 6.0]


def test_colocated_roles_share_each_process(colocated):
    actor, rollout = colocated["actor"], colocated["rollout"]
    assert (actor.role, rollout.role, actor.world_size) == ("actor", "rollout", 2)
    actor_ids, rollout_ids = actor.whoami(), rollout.whoami()
    assert [(role, rank) for role, rank, _ in actor_ids] == [("actor", 0), ("actor", 1)]
    assert [(role, rank) for role, rank, _ in rollout_ids] == [("rollout", 0), ("rollout", 1)]
    assert [pid for *_, pid in actor_ids] == [pid for *_, pid in rollout_ids]  # same process per rank
    assert actor_ids[0][2] != actor_ids[1][2]  # one process per rank
    assert actor.tag(_rows(3))["rank"].tolist() == [0, 0, 1]


def test_shutdown_kills_actors_and_removes_placement_groups(ray_local):
    pool = ResourcePool([2], name="short_lived")
    group = RayWorkerGroup(pool, TagWorker, "reward")
    pg_ids = [pg.id.hex() for pg, _ in pool.bundles()]
    handles = group.actor_handles
    group.shutdown()
    group.shutdown()  # idempotent
    table = ray.util.placement_group_table()
    assert {table[i]["state"] for i in pg_ids} == {"REMOVED"}
    for handle in handles:
        _wait_until_dead(handle)
    with pytest.raises(WorkerError, match="reward worker group was shut down"):
        group.whoami()
    with pytest.raises(ResourcePoolError, match="'short_lived' was removed"):
        RayWorkerGroup(pool, TagWorker, "reward")


def test_a_pool_hosts_one_group(trio):
    with pytest.raises(ValueError, match="already hosts the 'actor' group"):
        RayWorkerGroup(trio.pool, TagWorker, "critic")


def test_init_ray_is_idempotent_and_checks_its_arguments(ray_local):
    node, cpus = ray.get_runtime_context().get_node_id(), ray.cluster_resources()["CPU"]
    init_ray(num_cpus=1)  # already running: no second instance, resources unchanged
    assert (ray.get_runtime_context().get_node_id(), ray.cluster_resources()["CPU"]) == (node, cpus)
    with pytest.raises(ValueError, match="num_cpus/num_gpus describe a local Ray instance"):
        init_ray(address="auto", num_cpus=2)
