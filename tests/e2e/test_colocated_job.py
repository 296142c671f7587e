"""The main job with `resources.placement=colocated`, as a user runs it: each of the 2 FSDP ranks' processes
also hosts a vLLM CPU engine, fed from its own shards, and (a KL loss is on) the reference policy; the same loop
trains, validates, checkpoints and exports, and a run continued from its step-2 checkpoint reproduces step 3
and the final weights bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from small_run import THREE_STEPS, assert_same_step, assert_same_weights, finished, train_cmd

from sfpo_rl.trainer.tracking import read_jsonl

pytestmark = pytest.mark.slow  # starts Ray, vLLM and torch.distributed

COLOCATED_RUN = (
    "resources.placement=colocated",
    *THREE_STEPS,
    "algorithm.sfpo.inner_steps=2",
    "actor.loss.use_kl_loss=true",
)


def train(run_dir: Path, cache_dir: Path, *overrides: str):
    return finished(train_cmd(run_dir, cache_dir, *COLOCATED_RUN, *overrides))


@pytest.fixture(scope="module")
def colocated_run(tmp_path_factory, warmstart_cache):
    run_dir = tmp_path_factory.mktemp("colocated_run")
    return run_dir, train(run_dir, warmstart_cache)


def test_colocated_run_trains_with_an_engine_in_each_actor_process(colocated_run):
    run_dir, proc = colocated_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    train_rows = rows[1:]
    assert all(r["sfpo/active"] == 1.0 and r["actor/n_optimizer_steps"] == 2 for r in train_rows)
    assert all(r["sync/load_weights_tensors"] > 0 and r["sync/buckets"] >= 1 for r in train_rows)
    assert all(
        r["actor/kl_loss"] >= 0 for r in train_rows
    )  # reference log-probs came from the same processes
    assert rows[3]["perf/rollouts"] == 96 and "val/acc" in rows[0] and "val/acc" in rows[3]

    workers = json.loads((run_dir / "workers.json").read_text())
    pids = [[rank["pid"] for rank in workers[role]] for role in ("actor", "ref", "rollout")]
    assert pids[0] == pids[1] == pids[2] and len(set(pids[0])) == 2  # two processes, each hosting all three
    assert "placement: actor+ref+rollout: node" in proc.stdout
    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert {
        "actor+ref+rollout-rank0.log",
        "actor+ref+rollout-rank1.log",
    } <= logs and "rollout-rank0.log" not in logs
    assert (run_dir / "final_model" / "model.safetensors").is_file()


def test_a_colocated_run_continued_from_a_checkpoint_matches_the_uninterrupted_run(
    colocated_run, warmstart_cache, tmp_path
):
    run_dir, _ = colocated_run
    proc = train(tmp_path, warmstart_cache, f"trainer.resume={run_dir / 'checkpoints' / 'step_2'}")
    assert "at step 2" in proc.stdout
    resumed, uninterrupted = (
        read_jsonl(tmp_path / "metrics.jsonl")[-1],
        read_jsonl(run_dir / "metrics.jsonl")[-1],
    )
    assert resumed["step"] == uninterrupted["step"] == 3
    assert_same_step(resumed, uninterrupted, min_keys=30)
    assert_same_weights(tmp_path, run_dir)
