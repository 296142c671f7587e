"""DAPO end to end, as a user runs it: `sfpo-rl-train algorithm=dapo` (dynamic sampling, overlong shaping) and
SFPO on DAPO (`algorithm=dapo algorithm.sfpo.enable=true`, with overlong filtering), each on 2 FSDP ranks with
real vLLM and Ray on the built-in task; then an actor rank killed mid-run, and a resume that matches the
uninterrupted run bit for bit although its steps drew extra generation rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from small_run import THREE_STEPS, assert_same_step, assert_same_weights, finished, run, train_cmd

from sfpo_rl.trainer.tracking import read_jsonl

pytestmark = pytest.mark.slow  # starts Ray, vLLM and torch.distributed

# 8 prompts x 4 samples: at the warm-start's accuracy about a third of the groups are all wrong, so most steps
# need a second generation round.
SFPO_ON_DAPO = [
    "algorithm=dapo",
    "algorithm.sfpo.enable=true",
    "algorithm.sfpo.inner_steps=2",
    "algorithm.overlong_filter=true",
]
TIMEOUT_S = 1200  # the extra generation rounds


def dapo_cmd(run_dir: Path, cache: Path, *overrides: str) -> list[str]:
    return train_cmd(run_dir, cache, *THREE_STEPS, *overrides)


@pytest.fixture(scope="module")
def dapo_run(tmp_path_factory, warmstart_cache):
    run_dir = tmp_path_factory.mktemp("dapo_run")
    return run_dir, finished(dapo_cmd(run_dir, warmstart_cache, "algorithm=dapo"), TIMEOUT_S)


@pytest.fixture(scope="module")
def sfpo_dapo_run(tmp_path_factory, warmstart_cache):
    run_dir = tmp_path_factory.mktemp("sfpo_dapo_run")
    return run_dir, finished(dapo_cmd(run_dir, warmstart_cache, *SFPO_ON_DAPO), TIMEOUT_S)


def test_dapo_trains_on_full_batches_of_groups_that_carry_signal(dapo_run):
    run_dir, proc = dapo_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    steps = rows[1:]
    for r in steps:
        assert r["sampling/groups_kept"] == 8 and r["sampling/groups_padding"] == 0
        assert r["sampling/samples_generated"] == 32 * r["sampling/gen_rounds"]
        # Every generated group is kept, dropped (all right or all wrong) or surplus.
        dropped = r["sampling/groups_dropped"]
        assert r["sampling/groups_dropped_all_right"] + r["sampling/groups_dropped_all_wrong"] == dropped
        assert 8 + dropped + r["sampling/groups_surplus"] == 8 * r["sampling/gen_rounds"]
        assert r["reward/solve_none_or_all"] == 0.0  # no zero-advantage group reached the update
        assert r["actor/n_optimizer_steps"] == 2 and r["sfpo/active"] == 0.0
        assert 0.0 <= r["reward/overlong_frac"] <= 1.0 and r["reward/overlong_penalty"] <= 0.0
    assert max(r["sampling/gen_rounds"] for r in steps) > 1  # the refill happened
    # Rollouts count what was generated, the dropped groups included: in the log, the summary and the console.
    generated = [sum(r["sampling/samples_generated"] for r in steps[: i + 1]) for i in range(3)]
    assert [r["perf/rollouts"] for r in steps] == generated
    assert json.loads((run_dir / "summary.json").read_text())["rollouts"] == generated[-1]
    assert f"rollouts={int(generated[-1])}" in proc.stdout and "rounds=" in proc.stdout
    # The checkpoint's loader position counts every round's prompts (one loader batch per round).
    state = json.loads((run_dir / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["train_loader"]["position"] == sum(r["sampling/gen_rounds"] for r in steps[:2])


def test_sfpo_on_dapo_runs_the_slow_fast_update_on_the_filtered_batch(sfpo_dapo_run):
    run_dir, _ = sfpo_dapo_run
    steps = read_jsonl(run_dir / "metrics.jsonl")[1:]
    for r in steps:
        assert r["sfpo/active"] == 1.0 and "sfpo/reposition_norm" in r
        assert r["sampling/groups_kept"] == 8 and r["reward/solve_none_or_all"] == 0.0
    assert (run_dir / "final_model" / "model.safetensors").is_file()


def test_killed_sfpo_on_dapo_run_resumes_bit_exact(tmp_path, warmstart_cache, sfpo_dapo_run):
    """Actor rank 1 is SIGKILLed as step 3 starts (after the step-2 checkpoint): the launch stops naming it.
    Run again, it resumes at step 2 and its step 3 and final weights equal the uninterrupted run's bit for bit:
    the loader position, extra rounds included, came back from the checkpoint."""
    first = run(
        dapo_cmd(tmp_path, warmstart_cache, *SFPO_ON_DAPO, "faults.worker_kill=[3:actor:1]"), TIMEOUT_S
    )
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-5000:]
    assert "actor worker rank 1" in first.stderr and "died" in first.stderr
    assert f"the last complete checkpoint is {tmp_path / 'checkpoints' / 'step_2'}" in first.stderr
    second = run(dapo_cmd(tmp_path, warmstart_cache, *SFPO_ON_DAPO), TIMEOUT_S)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    assert f"resumed from {tmp_path / 'checkpoints' / 'step_2'} at step 2" in second.stdout
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]

    ref_dir, _ = sfpo_dapo_run
    resumed, uninterrupted = rows[3], read_jsonl(ref_dir / "metrics.jsonl")[3]
    assert "sampling/gen_rounds" in assert_same_step(resumed, uninterrupted, min_keys=40)
    assert resumed["perf/rollouts"] == uninterrupted["perf/rollouts"]
    assert_same_weights(tmp_path, ref_dir)
