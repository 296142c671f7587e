"""The verifier pool survives its children being SIGKILLed (as the OOM killer would): while idle between two
batches (costs nothing) and in the middle of a batch (costs the sample being scored, counted as an error)."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import pytest

from sfpo_rl.rewards import RewardScorer
from sfpo_rl.rewards.verifier_pool import ERROR, OK

SLOW = textwrap.dedent(
    """
    import os
    import time

    def score(solution_str, ground_truth, extra_info=None):
        if solution_str == "slow":  # tell the test which process is busy, then wait to be killed
            with open(extra_info["marker"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
        return float(solution_str == ground_truth)
    """
)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # dead once /proc shows it a zombie or gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} survived SIGKILL")


@pytest.mark.parametrize("victims", [[0], [0, 1]])
def test_a_child_killed_while_idle_costs_nothing(victims):
    scorer = RewardScorer({"num_processes": 2})
    responses = [f"\\boxed{{{i}}}" for i in range(12)]
    truths = [str(i if i % 3 else i + 1) for i in range(12)]
    try:
        first = scorer.score(responses, truths, ["arith"] * 12)
        for c in victims:
            kill(scorer._pool._children[c].proc.pid)
        again = scorer.score(responses, truths, ["arith"] * 12)  # raised BrokenPipeError before the fix
        assert again == first and all(o.status == OK for o in again)
        assert [o.acc for o in again] == [bool(i % 3) for i in range(12)]
        assert scorer._pool.restarts == len(victims)
        assert all(child.proc.poll() is None for child in scorer._pool._children)
    finally:
        scorer.close()


def test_a_child_killed_mid_batch_costs_only_the_sample_it_held(tmp_path):
    custom = tmp_path / "slow.py"
    custom.write_text(SLOW)
    marker = tmp_path / "busy.pid"
    responses = ["a", "b", "slow", "c", "d", "e"]
    truths = ["a", "x", "slow", "c", "d", "x"]
    scorer = RewardScorer({"custom_function": f"{custom}:score", "timeout_s": 120, "num_processes": 1})

    def kill_when_busy() -> None:
        while not marker.exists() or not marker.read_text():
            time.sleep(0.01)
        kill(int(marker.read_text()))

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    try:
        start = time.monotonic()
        outcomes = scorer.score(responses, truths, ["any"] * 6, [{"marker": str(marker)}] * 6)
        elapsed = time.monotonic() - start
        killer.join(timeout=5)
        assert [o.status for o in outcomes] == [OK, OK, ERROR, OK, OK, OK]
        assert "died" in outcomes[2].detail
        assert [o.score for o in outcomes] == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
        assert scorer._pool.restarts == 1
        assert elapsed < 60  # the kill was noticed at once, not after the 120 s limit
        assert [o.score for o in scorer.score(["q"], ["q"], ["any"])] == [1.0]  # the new child works
    finally:
        scorer.close()
