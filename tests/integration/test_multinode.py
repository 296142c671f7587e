"""Multi-node training on a real two-node Ray cluster started on this machine with `ray start` (a head and a
worker node, each its own raylet and object store), joined by the trainer through `ray.address=...` exactly
as on a cluster. Where the machine allows it (root, `ip netns`), the worker node runs in its own network
namespace behind a veth pair, so the two nodes are separate network hosts with their own addresses and every
byte between them (Ray, object transfers, gloo collectives) crosses that link.

The actor's two FSDP ranks must land on different nodes (`trainer.nnodes=2`, `resources.actor_ranks_per_node=1`)
and train together over gloo; the GCS actor table, not the trainer's own report, is the evidence of where
they ran. Also here: the Slurm launcher run on a two-node "allocation", and the local default's isolation."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray

from sfpo_rl.trainer.tracking import read_jsonl

pytestmark = pytest.mark.slow

RAY_CLI = str(Path(sys.executable).with_name("ray"))
NODE_CPUS = 4  # logical CPUs per node: 1 actor rank + 1 rollout engine (+ the reward worker) fit on either
JOIN_TIMEOUT_S = 90
TRAIN_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ray_env() -> dict[str, str]:
    """Every process of a test cluster shares one token. Ray >= 2.5x turns token auth on for `ray start
    --head` whenever ~/.ray/auth_token exists (any local ray.init() writes one) but not for joining nodes
    and drivers, which are then refused: set the mode and token explicitly, as the sbatch script does."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@dataclass
class Hosts:
    head_ip: str
    worker_ip: str
    worker_prefix: list[str] = field(default_factory=list)  # runs a command on the worker's host
    ifname: str | None = None  # the link between the hosts (same name on both), for GLOO_SOCKET_IFNAME


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=30)


def _add_netns(name: str) -> bool:
    """False without root, without `ip`, or without CAP_NET_ADMIN (an unprivileged container)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError:
        return False
    return True


@contextmanager
def two_hosts() -> Iterator[Hosts]:
    """A network namespace joined to this one by a veth pair (named alike on both sides; addresses from a
    per-process /24 so concurrent runs do not collide), or, without root / `ip netns`, this machine's
    address for both nodes."""
    pid = os.getpid()
    netns, link = f"sfpo_mn_{pid}", f"sfmn{pid % 100000}"
    subnet = f"10.{100 + pid % 100}.{pid // 100 % 250}"
    if not _add_netns(netns):
        yield Hosts(ray.util.get_node_ip_address(), ray.util.get_node_ip_address())
        return
    try:
        _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
        _ip("link", "set", f"{link}p", "netns", netns)
        _ip("link", "set", f"{link}p", "name", link, netns=netns)
        _ip("addr", "add", f"{subnet}.1/24", "dev", link)
        _ip("link", "set", link, "up")
        _ip("addr", "add", f"{subnet}.2/24", "dev", link, netns=netns)
        _ip("link", "set", link, "up", netns=netns)
        _ip("link", "set", "lo", "up", netns=netns)
        yield Hosts(f"{subnet}.1", f"{subnet}.2", ["ip", "netns", "exec", netns], link)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)  # also removes the veth pair
        subprocess.run(["ip", "link", "del", link], capture_output=True)  # if the move into it failed


@dataclass
class Cluster:
    address: str
    node_ids: list[str]
    hosts: Hosts
    env: dict[str, str]


@contextmanager
def two_node_cluster() -> Iterator[Cluster]:
    """Each node is a `ray start --block` in its own session, so teardown kills exactly its process groups
    (worker first, so it need not wait for a head that is gone), never other Ray instances on the machine
    (no `ray stop`). A private --temp-dir keeps the cluster out of /tmp/ray, where a plain `ray.init()`
    elsewhere on the machine would find and join it."""
    temp_dir = tempfile.mkdtemp(prefix="sfmn", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = _ray_env()
    procs: dict[str, subprocess.Popen] = {}
    with two_hosts() as hosts:
        address = f"{hosts.head_ip}:{_free_port()}"
        common = [f"--num-cpus={NODE_CPUS}", "--num-gpus=0", "--block", "--disable-usage-stats"]
        commands = {
            "head": [RAY_CLI, "start", "--head", f"--node-ip-address={hosts.head_ip}"]
            + [f"--port={address.split(':')[1]}", f"--temp-dir={temp_dir}", "--include-dashboard=false"],
            "worker": [*hosts.worker_prefix, RAY_CLI, "start", f"--address={address}"]
            + [f"--node-ip-address={hosts.worker_ip}"],
        }
        try:
            for name, cmd in commands.items():
                log = open(Path(temp_dir) / f"{name}.log", "w")
                procs[name] = subprocess.Popen(
                    [*cmd, *common], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            # The Slurm launcher's own wait, run as the sbatch script runs it.
            wait = subprocess.run(
                [sys.executable, "-m", "sfpo_rl.launch.slurm", "wait", f"--address={address}", "--nodes=2"]
                + [f"--timeout={JOIN_TIMEOUT_S}"],
                env=env,
                capture_output=True,
                text=True,
            )
            if wait.returncode != 0:
                logs = {name: (Path(temp_dir) / f"{name}.log").read_text()[-2000:] for name in procs}
                pytest.fail(f"Ray nodes did not come up: {wait.stdout} {wait.stderr}; node logs: {logs}")
            assert "2/2 Ray nodes alive" in wait.stdout
            node_ids = _query(address, env, "[n['NodeID'] for n in ray.nodes() if n['Alive']]")
            yield Cluster(address, node_ids, hosts, env)
        finally:
            for name in ("worker", "head"):
                if name in procs:
                    _stop(procs[name])
            shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    _kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)
        proc.wait()


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _query(address: str, env: dict[str, str], expression: str, expect_error: bool = False):
    """Evaluate `expression` in a short-lived driver connected to the cluster (this test process may already
    host a local Ray instance from another module); with expect_error, return the error output instead."""
    script = (
        "import json, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        "from ray._private import state\n"
        "from sfpo_rl.controller import ResourcePool\n"
        f"print(json.dumps({expression}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    if expect_error:
        assert proc.returncode != 0, proc.stdout
        return proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_actor_ranks_train_on_two_nodes(tmp_path, warmstart_cache):
    with two_node_cluster() as cluster:
        assert len(set(cluster.node_ids)) == 2
        link = cluster.hosts.ifname
        cmd = [
            sys.executable,
            "-m",
            "sfpo_rl.trainer.main",
            f"ray.address={cluster.address}",
            "trainer.nnodes=2",
            "resources.actor_ranks_per_node=1",
            "resources.rollout_workers_per_node=1",
            *([f"+ray.env_vars.GLOO_SOCKET_IFNAME={link}"] if link else []),  # as on a multi-homed cluster
            f"trainer.run_dir={tmp_path}",
            f"model.cache_dir={warmstart_cache}",
            "data.train_batch_size=8",
            "rollout.n=4",
            "actor.batching.ppo_mini_batch_size=16",
            "trainer.total_steps=2",
            "trainer.val_before_train=false",
            "trainer.val_every=0",
            "trainer.save_every=2",
            "trainer.logger=[console]",
            "algorithm.sfpo.inner_steps=2",
        ]
        log_path = tmp_path / "train.log"
        with open(log_path, "w") as log:
            train = subprocess.Popen(
                cmd, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                returncode = train.wait(timeout=TRAIN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(train, signal.SIGKILL)
                returncode = train.wait()
        output = log_path.read_text()
        assert returncode == 0, output[-6000:]
        actors = _query(
            cluster.address,
            cluster.env,
            "[(a['ActorClassName'], a['Address']['NodeID'], a['Address']['IPAddress'])"
            " for a in state.actors().values()]",
        )
        # Three one-node entries cannot fit on two nodes, however much room each node has left.
        too_many = _query(
            cluster.address,
            cluster.env,
            "ResourcePool([1, 1, 1], ready_timeout_s=5)",
            expect_error=True,
        )
        assert "ResourcePoolError" in too_many and "one entry per node" in too_many, too_many
        assert "on 2 alive node(s)" in too_many, too_many

    # Each actor rank is one Ray actor of class `actor_host`; one ran on each node (and host).
    actor_nodes = sorted(node for cls, node, _ in actors if cls == "actor_host")
    assert actor_nodes == sorted(cluster.node_ids), actors
    actor_ips = sorted(ip for cls, _, ip in actors if cls == "actor_host")
    assert actor_ips == sorted([cluster.hosts.head_ip, cluster.hosts.worker_ip]), actors
    rollout_nodes = sorted(node for cls, node, _ in actors if cls == "rollout_host")
    assert rollout_nodes == sorted(cluster.node_ids), actors  # one engine per node
    placement = next(line for line in output.splitlines() if "placement: actor:" in line)
    assert placement.count("node ") == 2, placement

    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["sfpo/active"] == 1.0 and r["actor/n_optimizer_steps"] == 2 for r in rows)
    assert all(r["sync/load_weights_tensors"] > 0 for r in rows)  # weights crossed nodes to both engines
    state = json.loads((tmp_path / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["step"] == 2
    rng_files = sorted(p.name for p in (tmp_path / "checkpoints" / "step_2").rglob("rank*.pt"))
    assert rng_files == ["rank0.pt", "rank1.pt"]  # each rank saved its own state, on its own node


SRUN_SHIM = """#!/bin/bash
# srun for a one-machine test: drop srun's options and run the step's command here, as the same process
# (exec), so signalling the step signals the command as real Slurm does.
while (($#)); do
    case "$1" in
        -w | --nodelist | -N | -n) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
exec "$@"
"""

FAKE_TRAINER = """import json, sys, ray
address = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("ray.address="))
ray.init(address=address, logging_level="ERROR")
print("FAKE_TRAINER " + json.dumps({"argv": sys.argv[1:], "alive": sum(n["Alive"] for n in ray.nodes())}))
sys.exit(3)
"""


def test_sbatch_script_starts_joins_passes_overrides_and_tears_down(tmp_path):
    """docker/slurm/sfpo_rl.sbatch on a two-node "allocation" whose nodes both live on this machine: srun is
    a shim that runs each step locally, the trainer a stand-in that reports what it was given and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN_SHIM)
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "fake_train.py").write_text(FAKE_TRAINER)
    temp_dir = tempfile.mkdtemp(prefix="sfsb", dir="/tmp")
    address = f"{ray.util.get_node_ip_address()}:{_free_port()}"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SFPO_PYTHON": sys.executable,
        "TRAIN_CMD": f"{sys.executable} {tmp_path / 'fake_train.py'}",
        "HEAD_IP": address.split(":")[0],
        "RAY_PORT": address.split(":")[1],
        "RAY_TEMP_DIR": temp_dir,
        "GPUS_PER_NODE": "0",
        "CPUS_PER_NODE": "2",
        "JOIN_TIMEOUT_S": str(JOIN_TIMEOUT_S),
    }
    overrides = ["algorithm=grpo", "data.train_files=[a.parquet,b.parquet]", "trainer.experiment_name=my run"]
    script = Path(__file__).resolve().parents[2] / "docker" / "slurm" / "sfpo_rl.sbatch"
    try:
        proc = subprocess.run(
            ["bash", str(script), *overrides], env=env, capture_output=True, text=True, timeout=300
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 3, output[-4000:]  # the trainer's exit status is the job's
        report = json.loads(output.split("FAKE_TRAINER ", 1)[1].splitlines()[0])
        assert report["alive"] == 2
        assert report["argv"] == [f"ray.address={address}", "trainer.nnodes=2", *overrides]
        assert "2 node(s): node1 node2" in output and "Ray nodes stopped" in output
        assert _processes_using(temp_dir) == [], "Ray processes outlived the job"
    finally:
        for pid in _processes_using(temp_dir):  # only if the script's teardown failed
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _processes_using(temp_dir: str, grace_s: float = 15.0) -> list[int]:
    """Pids of processes whose command line names `temp_dir` (every Ray process of that cluster does),
    after giving them `grace_s` to exit."""
    deadline = time.monotonic() + grace_s
    while True:
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if temp_dir.encode() in cmdline.read_bytes():
                    pids.append(int(cmdline.parent.name))
            except OSError:
                continue
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.5)


def test_local_default_never_joins_a_cluster_left_on_the_machine(tmp_path):
    """`ray.address=null` means a private local Ray even when `ray start` recorded a cluster address here
    (a plain ray.init() would join it); `auto` is how to join one."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="sfrt", dir="/tmp"))
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")  # nobody there
        script = (
            "import ray\n"
            "from sfpo_rl.controller import init_ray\n"
            "init_ray(num_cpus=3)\n"
            "print('CPUS', ray.cluster_resources()['CPU'])\n"
        )
        env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "CPUS 3.0" in proc.stdout
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
