"""Faults injected into one short real training job (`sfpo-rl-train`: real Ray, vLLM, FSDP2 over gloo, reward
worker), run in four launches on one run dir so every launch but the first resumes with trainer.resume=auto:

  A  steps 1-2 (step 2's SFPO fast trajectory poisoned with NaN), the rollout worker SIGKILLed as step 3 starts
  B  resumes at 2, step 3, the reward worker SIGKILLed as step 4 starts (its rollouts already generated)
     (A and B allow no worker restarts, so they stop as a run whose restarts are used up does)
  C  resumes at 3, step 4, actor rank 1 SIGKILLed as step 5 starts (rank 0 then loses its FSDP peer)
     then flip bytes in a DCP shard of checkpoint 4
  D  falls back to checkpoint 3, steps 4-6, with restarts allowed: the reward worker SIGKILLed as step 4
     starts and the rollout worker as step 5 starts are replaced and the steps go on; steps 5 and 6 are
     poisoned whole: 2 in a row stop the run

The driver itself sends each SIGKILL (`faults.worker_kill`) at a fixed point of the run, so the test
does not race the training loop. Each killed launch must exit non-zero with a message naming the role and
rank (no traceback) and leave its last checkpoint intact; each resume must continue from the last intact
checkpoint without losing or repeating a step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from sfpo_rl.trainer.checkpoint import MANIFEST, CheckpointManager
from sfpo_rl.trainer.tracking import read_jsonl
from sfpo_rl.workers.checkpoint import SafeFileSystemReader

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:torch.distributed is disabled"
    ),  # checkpoints read back in one process
]

TRAIN = [sys.executable, "-m", "sfpo_rl.trainer.main"]
JOB = [
    "data.train_batch_size=4",
    "rollout.n=2",
    "actor.batching.ppo_mini_batch_size=8",  # one optimizer step per pass
    "algorithm.sfpo.inner_steps=2",
    "trainer.total_steps=8",
    "trainer.save_every=1",
    "trainer.keep_last=2",
    "trainer.val_before_train=false",
    "trainer.val_every=0",
    "trainer.export_hf=false",
    "trainer.logger=[console]",
    "trainer.max_consecutive_nonfinite=2",
    "faults.nonfinite_loss=[2:fast1,5,6]",
]
LAUNCH_TIMEOUT_S = 600
KILLS = {"A": ("rollout", 0, 2), "B": ("reward", 0, 3), "C": ("actor", 1, 4)}  # role, rank, last checkpoint
NO_RESTARTS = "trainer.max_worker_restarts=0"
D_KILLS = "faults.worker_kill=[4:reward:0,5:rollout:0]"


def launch(run_dir: Path, cache: Path, name: str, kill: tuple[str, int, int] | None, *overrides: str) -> dict:
    """One `sfpo-rl-train` launch; with `kill` = (role, rank, step), that worker is SIGKILLed as step + 1
    starts. Returns exit code, output and the killed pid (from run_dir/workers.json)."""
    (run_dir / "workers.json").unlink(missing_ok=True)
    cmd = [*TRAIN, f"trainer.run_dir={run_dir}", f"model.cache_dir={cache}", *JOB, *overrides]
    if kill is not None:
        role, rank, step = kill
        cmd.append(f"faults.worker_kill=[{step + 1}:{role}:{rank}]")
    out, err = open(run_dir / f"{name}.out", "w"), open(run_dir / f"{name}.err", "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
    try:
        proc.wait(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with_leftovers = proc.poll() is None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything Ray left behind in the job's session
        except ProcessLookupError:
            pass
        proc.wait()
        out.close()
        err.close()
    assert not with_leftovers, f"launch {name} did not end within {LAUNCH_TIMEOUT_S} s"
    killed = None
    if kill is not None:
        killed = json.loads((run_dir / "workers.json").read_text())[kill[0]][kill[1]]["pid"]
    return {
        "code": proc.returncode,
        "stdout": (run_dir / f"{name}.out").read_text(),
        "stderr": (run_dir / f"{name}.err").read_text(),
        "killed_pid": killed,
    }


def model_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint's actor DCP state, read without a process group."""
    reader = SafeFileSystemReader(checkpoint / "actor" / "dcp")
    meta = reader.read_metadata()
    state = {
        key: torch.empty(m.size, dtype=m.properties.dtype)
        for key, m in meta.state_dict_metadata.items()
        if key.startswith("model.") and isinstance(m, TensorStorageMetadata)
    }
    dcp.load(state, storage_reader=reader, no_dist=True)
    return state


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def chain(tmp_path_factory, warmstart_cache, faults):
    run_dir = tmp_path_factory.mktemp("fault_run")
    manager = CheckpointManager(run_dir)
    results = {}
    for name in ("A", "B", "C"):
        role, rank, _ = KILLS[name]
        faults.inject(f"SIGKILL {role} worker rank {rank} mid-run")
        result = launch(run_dir, warmstart_cache, name, KILLS[name], *([NO_RESTARTS] if name != "C" else []))
        result["checkpoints"] = [p.name for p in manager.committed()]
        result["latest"] = manager.latest()  # verified against its manifest
        result["report"] = (
            (run_dir / "failure.txt").read_text() if (run_dir / "failure.txt").is_file() else ""
        )
        results[name] = result
    faults.inject("NaN loss in an SFPO fast pass")
    faults.inject("non-finite updates in a row")

    results["step_4_row"] = read_jsonl(run_dir / "metrics.jsonl")[3]
    step4 = run_dir / "checkpoints" / "step_4"
    results["step_4_weights"] = model_tensors(step4)
    shutil.copytree(step4, run_dir / "step_4_copy")  # for the explicit-resume test
    shard = max((step4 / "actor" / "dcp").glob("*.distcp"), key=lambda p: p.stat().st_size)
    flip_bytes(shard)
    results["flipped"] = shard.relative_to(step4)
    faults.inject("flipped bytes in a checkpoint shard")
    faults.inject("SIGKILL reward worker, restarted")
    faults.inject("SIGKILL rollout worker, restarted")
    results["D"] = launch(run_dir, warmstart_cache, "D", None, D_KILLS)
    return run_dir, results


def assert_clear_stop(result: dict, *needles: str) -> None:
    assert result["code"] == 3, result["stderr"][-3000:]
    for needle in needles:
        assert needle in result["stderr"], result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_killed_worker_stops_the_run_naming_role_and_rank(chain, faults, name):
    run_dir, results = chain
    role, rank, step = KILLS[name]
    result = results[name]
    with faults.survives(f"SIGKILL {role} worker rank {rank} mid-run"):
        last = run_dir / "checkpoints" / f"step_{step}"
        assert_clear_stop(
            result,
            f"{role} worker rank {rank}",
            f"pid {result['killed_pid']}",
            "died",
            f"the last complete checkpoint is {last}; run again with trainer.resume=auto",
        )
        assert f"{role} worker rank {rank}" in result["report"]
        if role != "actor":  # a dead actor rank is never restarted: its state is only in the checkpoint
            assert "no worker restarts left (trainer.max_worker_restarts=0)" in result["stderr"]
        # The run stopped inside the next step, and the checkpoint before the kill is complete and intact.
        assert result["checkpoints"] == [f"step_{step}", f"step_{step - 1}"]
        path, state = result["latest"]
        assert path == last and state["step"] == step


def test_dead_rollout_and_reward_workers_are_replaced_and_the_step_redone(chain, faults):
    run_dir, results = chain
    d = results["D"]["stdout"]
    for step, role, restart in ((4, "reward", 1), (5, "rollout", 2)):
        with faults.survives(f"SIGKILL {role} worker, restarted"):
            assert (
                f"[sfpo_rl] step {step}: {role} worker rank 0 died; restarting the {role} workers and redoing the "
                f"step's work (restart {restart} of 2)" in d
            )
    rows = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
    assert [rows[s]["train/worker_restarts"] for s in (4, 5, 6)] == [1, 2, 2]
    # The redone step 4 is launch C's step 4 exactly: the same rollouts, rewards and update (its weights are
    # compared in test_corrupted_checkpoint_is_refused_and_resume_falls_back).
    same = ("reward/mean", "response_length/mean", "adv/max", "actor/pg_loss", "sfpo/slow_loss")
    assert {k: rows[4][k] for k in same} == {k: results["step_4_row"][k] for k in same}


def test_resume_continues_from_the_last_complete_checkpoint_without_losing_a_step(chain):
    run_dir, results = chain
    for name, step in (("B", 2), ("C", 3)):
        assert (
            f"resumed from {run_dir / 'checkpoints' / f'step_{step}'} at step {step}"
            in results[name]["stdout"]
        )
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # nothing lost, nothing logged twice
    assert rows[-1]["perf/rollouts"] == 6 * 8


def test_corrupted_checkpoint_is_refused_and_resume_falls_back(chain, faults):
    run_dir, results = chain
    with faults.survives("flipped bytes in a checkpoint shard"):
        d = results["D"]["stdout"]
        assert (
            f"skipping checkpoint: checkpoint {run_dir / 'checkpoints' / 'step_4'}: file {results['flipped']} fails its sha256 check"
            in d
        )
        assert f"resumed from {run_dir / 'checkpoints' / 'step_3'} at step 3" in d
        # Step 4 redone from checkpoint 3 gives the same weights as the first time (and replaced the damaged copy).
        redone = model_tensors(run_dir / "checkpoints" / "step_4")
        first = results["step_4_weights"]
        assert redone.keys() == first.keys() and all(torch.equal(redone[k], first[k]) for k in first)
        CheckpointManager(run_dir).verify(run_dir / "checkpoints" / "step_4")


def test_nonfinite_fast_pass_discards_the_fast_trajectory(chain, faults):
    run_dir, _ = chain
    with faults.survives("NaN loss in an SFPO fast pass"):
        rows = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
        step2 = rows[2]
        assert step2["sfpo/fast_skipped_steps"] == 1 and step2["sfpo/fast_restored"] == 1
        assert (
            math.isfinite(step2["sfpo/fast_displacement_norm"]) and step2["sfpo/fast_displacement_norm"] > 0
        )
        assert step2["sfpo/reposition_norm"] == 0  # back at the slow weights before the slow pass
        assert (
            step2["actor/skipped_steps"] == 0 and step2["actor/n_optimizer_steps"] == 1
        )  # the slow pass ran
        assert [rows[s]["train/nonfinite_total"] for s in (1, 2, 3, 4)] == [0, 1, 1, 1]
        assert all(rows[s]["sfpo/fast_restored"] == 0 for s in (1, 3, 4))


def test_nonfinite_updates_in_a_row_stop_the_run_with_the_weights_untouched(chain, faults):
    run_dir, results = chain
    with faults.survives("non-finite updates in a row"):
        assert_clear_stop(
            results["D"],
            "training stopped at step 6: steps 5-6 all met a non-finite loss or gradient "
            "(trainer.max_consecutive_nonfinite=2)",
            f"the last complete checkpoint is {run_dir / 'checkpoints' / 'step_5'}",
        )
        rows = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
        assert [rows[s]["train/nonfinite_in_a_row"] for s in (4, 5, 6)] == [0, 1, 2]
        assert rows[6]["train/nonfinite_total"] == 3  # steps 2, 5, 6: the count survived three resumes
        assert rows[5]["actor/skipped_steps"] == 1 and rows[5]["sfpo/fast_restored"] == 1
        assert "step 5: non-finite loss or gradient" in results["D"]["stdout"]
        # Every update of step 5 was skipped: its checkpoint holds exactly step 4's weights, all finite.
        step4, step5 = (model_tensors(run_dir / "checkpoints" / f"step_{s}") for s in (4, 5))
        assert all(torch.equal(step4[k], step5[k]) for k in step4)
        assert all(torch.isfinite(t).all() for t in step5.values())


def test_manifest_covers_every_actor_file(chain):
    run_dir, _ = chain
    checkpoint = run_dir / "checkpoints" / "step_5"
    listed = set(json.loads((checkpoint / MANIFEST).read_text())["files"])
    on_disk = {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()} - {MANIFEST}
    assert listed == on_disk
    assert {
        "trainer_state.json",
        "actor/dcp/.metadata",
        "actor/scheduler.pt",
        "actor/actor_meta.json",
    } <= listed
    assert {"actor/rng/rank0.pt", "actor/rng/rank1.pt"} <= listed and any(
        f.endswith(".distcp") for f in listed
    )


def test_explicit_resume_from_a_partial_checkpoint_is_refused_before_any_worker_starts(chain, faults):
    run_dir, _ = chain
    damaged = run_dir / "step_4_copy"
    (damaged / "actor" / "actor_meta.json").unlink()
    with faults.bad_input("trainer.resume naming a partial checkpoint"):
        proc = subprocess.run(
            [*TRAIN, f"trainer.run_dir={run_dir / 'explicit'}", f"model.cache_dir={run_dir / 'unused'}"]
            + [f"trainer.resume={damaged}", *JOB],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2
        assert (
            f"checkpoint {damaged}: file actor/actor_meta.json listed in the manifest is missing"
            in proc.stderr
        )
        assert "Traceback" not in proc.stderr and not (run_dir / "unused").exists()  # before any model work
