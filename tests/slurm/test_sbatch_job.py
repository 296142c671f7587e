"""docker/slurm/sfpo_rl.sbatch submitted with `sbatch` to a real Slurm cluster on this machine, as a user submits
it: docker/slurm/local_cluster.sh brings up munge, slurmdbd (on MariaDB, for `sacct`), slurmctld and two slurmd
nodes. The script reads its two-node allocation, starts a Ray head on the first node and a Ray worker on the
second with `srun`, waits for both, runs the trainer on the cluster they form and stops Ray when the job ends.
Slurm's accounting, not the script's own report, says how the job ended and where its steps ran.

The cluster needs root and the Debian packages (installed by the script when missing); where it cannot be
brought up the tests fail, they do not skip."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from sfpo_rl.trainer.tracking import read_jsonl

pytestmark = pytest.mark.slow  # starts Slurm, Ray, vLLM and torch.distributed

REPO = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = REPO / "docker" / "slurm" / "local_cluster.sh"
SBATCH = REPO / "docker" / "slurm" / "sfpo_rl.sbatch"
NODES = ["sfpo1", "sfpo2"]  # local_cluster.sh's node names
CPUS_PER_NODE = 4
JOB_LIMIT_MIN = 20  # Slurm's time limit: a hung job ends as TIMEOUT instead of hanging the suite
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")

# The e2e tests' small run, on one actor rank and one engine per node (the multi-node test's layout).
SMALL_RUN = [
    "resources.actor_ranks_per_node=1",
    "resources.rollout_workers_per_node=1",
    "data.train_batch_size=8",
    "rollout.n=4",
    "actor.batching.ppo_mini_batch_size=16",
    "algorithm.sfpo.inner_steps=2",
    "trainer.total_steps=2",
    "trainer.val_before_train=false",
    "trainer.val_every=2",
    "data.val_max_samples=32",
    "trainer.save_every=0",
    "trainer.export_hf=false",
    "trainer.logger=[console]",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _cluster(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL_CLUSTER), command], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def slurm_env():
    """A two-node Slurm cluster of this test session's own (directory, ports); the environment that reaches it."""
    pid = os.getpid()
    root = f"/tmp/sfsl{pid}"  # short: munge's and MariaDB's sockets live in it
    env = {**os.environ, "SFPO_SLURM_DIR": root, "SFPO_SLURM_PORT_BASE": str(21000 + pid % 400 * 25)}
    env |= {"SFPO_SLURM_NODES": str(len(NODES)), "SFPO_SLURM_CPUS": str(CPUS_PER_NODE)}
    up = _cluster("up", env)
    if up.returncode != 0:
        pytest.fail(f"docker/slurm/local_cluster.sh up failed:\n{up.stdout}{up.stderr}", pytrace=False)
    try:
        yield {**env, "SLURM_CONF": f"{root}/etc/slurm.conf"}
    finally:
        down = _cluster("down", env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not Path(root).exists()


@dataclass
class Job:
    id: str
    state: str
    exit_code: str
    steps: list[dict[str, str]]  # sacct's rows: the job, its batch step and its srun steps
    output: str


def sacct(env: dict[str, str], job_id: str) -> list[dict[str, str]]:
    fields = ["JobID", "JobName", "State", "ExitCode", "NodeList"]
    proc = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, "-o", ",".join(fields)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [dict(zip(fields, line.split("|"))) for line in proc.stdout.splitlines()]


@pytest.fixture
def ray_temp_dir():
    """The job's Ray temp dir: short (Ray's socket paths are length-limited), and named by every Ray process."""
    path = tempfile.mkdtemp(prefix="sfsr", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def submit(env: dict[str, str], workdir: Path, ray_temp_dir: str, *overrides: str) -> Job:
    """sbatch the script on both nodes (no GPUs: the script asks for 8 per node), wait until accounting has
    the job's final state, return it with the job's output."""
    job_env = {
        **env,
        "SFPO_PYTHON": sys.executable,
        "RAY_TEMP_DIR": ray_temp_dir,
        "RAY_PORT": str(_free_port()),
    }
    cmd = ["sbatch", "--parsable", f"--nodes={len(NODES)}", "--gpus-per-node=0", f"--time={JOB_LIMIT_MIN}"]
    cmd += [f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out", str(SBATCH), *overrides]
    job_id = subprocess.run(cmd, env=job_env, capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.monotonic() + JOB_LIMIT_MIN * 60 + 180
    while True:
        rows = sacct(env, job_id)
        job = next((row for row in rows if row["JobID"] == job_id), None)
        if job is not None and job["State"].split()[0] in FINAL_STATES:
            break
        assert time.monotonic() < deadline, f"job {job_id} did not end: {rows}"
        time.sleep(3)
    output = (workdir / f"slurm-{job_id}.out").read_text()
    return Job(job_id, job["State"], job["ExitCode"], rows, output)


def ray_processes(temp_dir: str, grace_s: float = 15.0) -> list[str]:
    """The processes of the job's Ray cluster still alive after `grace_s` (every one names its temp dir)."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if temp_dir in cmdline:
                alive.append(f"{proc.info['pid']}: {cmdline[:200]}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def test_sbatch_trains_on_two_slurm_nodes(slurm_env, tmp_path, ray_temp_dir, warmstart_cache):
    run_dir = tmp_path / "run"
    overrides = (f"trainer.run_dir={run_dir}", f"model.cache_dir={warmstart_cache}", *SMALL_RUN)
    overrides += ("trainer.experiment_name=slurm smoke",)  # a space: the overrides reach Hydra unsplit
    job = submit(slurm_env, tmp_path, ray_temp_dir, *overrides)
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), job.output[-6000:]

    # Slurm ran one Ray node per allocated node: the head's and the worker's `ray start` steps.
    ray_steps = [row for row in job.steps if row["JobName"] == Path(sys.executable).name]
    assert sorted(row["NodeList"] for row in ray_steps) == NODES, job.steps
    # The cluster the script formed, as it and Ray report it, and the trainer's ranks on both of its nodes.
    assert f"[sfpo_rl] 2 node(s): {' '.join(NODES)}; Ray head on {NODES[0]}" in job.output
    assert "[sfpo_rl] 2/2 Ray nodes alive" in job.output
    assert f"0.0/{2 * CPUS_PER_NODE}.0 CPU" in job.output, job.output[-6000:]  # `ray status`, before training
    placement = next(line for line in job.output.splitlines() if "[sfpo_rl] placement: actor" in line)
    assert placement.count("node ") == 2, placement

    assert "experiment_name: slurm smoke" in (run_dir / "config.yaml").read_text()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["sfpo/active"] == 1.0 and row["sync/load_weights_tensors"] > 0 for row in rows)
    assert "val/acc" in rows[-1]
    assert "[sfpo_rl] done: 2 steps" in job.output and "[sfpo_rl] Ray nodes stopped" in job.output
    assert ray_processes(ray_temp_dir) == []


def test_sbatch_job_with_a_misspelt_override_fails_with_the_trainers_exit_code(
    slurm_env, tmp_path, ray_temp_dir
):
    """`gpro` for `grpo`: the trainer refuses the value before any worker starts (a misspelt key is refused
    earlier, by Hydra, whose exit code is 1)."""
    job = submit(
        slurm_env,
        tmp_path,
        ray_temp_dir,
        f"trainer.run_dir={tmp_path / 'run'}",
        "algorithm.adv_estimator=gpro",
    )
    assert (job.state, job.exit_code) == ("FAILED", "2:0"), job.output[-6000:]  # the trainer's bad-input code
    assert "sfpo-rl-train: algorithm.adv_estimator must be one of" in job.output
    assert "[sfpo_rl] 2/2 Ray nodes alive" in job.output  # it failed on a cluster, which was then stopped
    assert "[sfpo_rl] Ray nodes stopped" in job.output
    assert ray_processes(ray_temp_dir) == []
