"""How the step-time and weight-sync benchmarks read a trainer's metrics.jsonl rows."""

from __future__ import annotations

import pytest

from sfpo_rl.bench.step_time import breakdown_table
from sfpo_rl.bench.trainer_runs import phase_breakdown, step_share
from sfpo_rl.bench.workload import parse_size


def _step(step: int, generate: float, update: float, sync: float, other: float) -> dict:
    phases = {"generate": generate, "reward": 0.5, "old_log_prob": 1.0, "advantage": 0.01, "update": update}
    return {
        "step": step,
        **{f"timing/{k}": v for k, v in phases.items()},
        "timing/sync": sync,
        "timing/step": sum(phases.values()) + sync + other,
        "sync/load_weights_mb": 3.0,
        "sync/load_weights_s": sync / 2,
    }


ROWS = [
    {"step": 0, "val/acc": 0.5, "timing/validate": 9.0},  # validation only: no timing/step
    _step(1, generate=50.0, update=40.0, sync=5.0, other=1.0),  # first step: one-off costs, left out
    _step(2, generate=4.0, update=8.0, sync=1.0, other=0.2),
    _step(3, generate=6.0, update=10.0, sync=2.0, other=0.4),
    _step(4, generate=5.0, update=12.0, sync=3.0, other=0.3),
]


def test_phase_breakdown_takes_medians_after_the_first_step():
    b = phase_breakdown(ROWS)
    assert b["generate"] == 5.0 and b["update"] == 10.0 and b["sync"] == 2.0
    assert b["other"] == pytest.approx(0.3)
    assert b["step"] == pytest.approx(6.0 + 0.5 + 1.0 + 0.01 + 10.0 + 2.0 + 0.4)  # step 3 is the median step
    assert "ref_log_prob" not in b  # a phase the runs did not have
    only_first = phase_breakdown(ROWS[:2])
    assert only_first["generate"] == 50.0  # a single step is used as is


def test_phase_breakdown_without_training_steps_is_an_error():
    with pytest.raises(ValueError, match="no training steps"):
        phase_breakdown(ROWS[:1])


def test_breakdown_table_gives_seconds_and_percent_of_step_per_algorithm():
    headers, rows = breakdown_table(
        {"grpo": {"update": 1.0, "step": 4.0}, "sfpo": {"update": 4.0, "generate": 2.0, "step": 8.0}}
    )
    assert headers == ["phase", "grpo s", "grpo %", "sfpo s", "sfpo %"]
    by_phase = {r[0]: r[1:] for r in rows}
    assert list(by_phase) == ["generate", "update", "step"]
    assert by_phase["update"] == [1.0, 25.0, 4.0, 50.0]
    assert by_phase["generate"] == [None, None, 2.0, 25.0]


def test_step_share_is_the_median_per_step_ratio():
    share = step_share(ROWS)
    ratios = sorted(r["timing/sync"] / r["timing/step"] for r in ROWS[2:])
    assert share["fraction"] == pytest.approx(ratios[1])
    assert share["sync_s"] == 2.0 and share["mb"] == 3.0 and share["load_s"] == 1.0


def test_parse_size():
    assert parse_size(" 1024x8") == (1024, 8)
    with pytest.raises(ValueError, match="'512' is not WIDTHxLAYERS"):
        parse_size("512")
