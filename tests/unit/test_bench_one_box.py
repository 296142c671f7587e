"""The one-box and weight-sync benchmarks' own arithmetic: the single-process baseline's response masks and
padding, reading a metrics file that is being written, the targets, and the per-process peak-memory meter."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from sfpo_rl.bench.memory import PeakMemory
from sfpo_rl.bench.one_box import process_label, targets
from sfpo_rl.bench.rollout_batches import left_padded
from sfpo_rl.bench.single_process import response_mask
from sfpo_rl.bench.trainer_runs import training_rows


def test_response_mask_keeps_tokens_up_to_and_including_the_first_eos():
    responses = torch.tensor([[5, 0, 1, 0], [5, 6, 7, 8], [0, 3, 3, 3]])
    assert response_mask(responses, eos_id=0).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_prompts_are_left_padded():
    ids, mask = left_padded([[7, 8, 9], [4]], pad_id=1)
    assert ids.tolist() == [[7, 8, 9], [1, 1, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_a_metrics_line_being_written_is_not_read_and_validation_rows_are_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "val/acc": 0.1}, {"step": 1, "timing/step": 2.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 2, "timing/st')
    assert training_rows(path) == [rows[1]]
    assert training_rows(tmp_path / "missing.jsonl") == []


def test_targets_compare_colocated_with_the_baseline_and_the_split_run():
    base = {"step_s": 2.0, "update_s": 1.0, "startup_s": 8.0, "pss_peak_gib": 0.8, "sync_s": None}
    split = {"step_s": 3.0, "update_s": 1.5, "sync_s": 0.3, "startup_s": 40.0, "pss_peak_gib": 3.0}
    colocated = {"step_s": 2.0, "update_s": 1.1, "sync_s": 0.09, "startup_s": 21.0, "pss_peak_gib": 1.9}
    met = targets({"colocated": colocated, "split": split, "single_process": base})
    assert met == {
        "step <= single process": True,
        "update <= single process": False,
        "sync <= split / 3": True,
        "start-up <= split / 2": False,
        "PSS < 2 GiB": True,
    }


# Allocates 64 MiB (touched), frees it, and says so; waits on stdin around it so the meter brackets exactly that.
ALLOCATE_AND_FREE = """
import sys
print("ready", flush=True)
sys.stdin.readline()
block = b"x" * (64 * 2**20)
del block
print("freed", flush=True)
sys.stdin.readline()
"""


def test_peak_memory_sees_what_another_process_allocated_and_freed():
    # A fresh process, not pytest's own: there an earlier test's freed memory may still be resident, and a new
    # block that reuses it raises no high-water mark (CI saw extra_mb == 0.0 that way).
    child = subprocess.Popen(
        [sys.executable, "-c", ALLOCATE_AND_FREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "ready\n"
        with PeakMemory({"child": child.pid}) as memory:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "freed\n"
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert 60 <= memory.result["child"]["extra_mb"] <= 100


def test_processes_are_named_by_ray_title_module_or_script():
    venv = "/work/.venv/bin/python"
    assert process_label(["ray::actor_rollout_host.call", "", ""]) == "ray::actor_rollout_host.call"
    assert process_label([venv, "-m", "sfpo_rl.rewards.verifier_process", "44"]) == (
        "python -m sfpo_rl.rewards.verifier_process"
    )
    assert process_label([venv, "-u", "/site-packages/ray/_private/log_monitor.py", "--x"]) == (
        "python log_monitor.py"
    )
    assert process_label(["/site-packages/ray/core/src/ray/raylet/raylet", "--raylet_socket"]) == "raylet"
    assert (
        process_label([venv, "-B", "-c", "from multiprocessing.resource_tracker import main"]) == "python -c"
    )
    assert process_label([]) == ""
