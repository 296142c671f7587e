"""The GRPO-vs-SFPO analysis on hand-made runs: curves read from metrics.jsonl, first-reach costs and ratios."""

import json

import pytest

from sfpo_rl.experiments.compare import Curve, compare_seed, first_reach, load_curve, markdown, summarize


def curve(rollouts, seconds, accs):
    return Curve(val_steps=list(range(len(accs))), val_rollouts=rollouts, val_seconds=seconds, val_acc=accs)


def test_load_curve_reads_validation_points_entropy_and_switch(tmp_path):
    rows = [
        {"step": 0, "val/acc": 0.1},
        {"step": 1, "perf/rollouts": 64, "perf/train_seconds": 2.0, "actor/entropy": 0.9, "sfpo/switched_off": 0.0},
        {"step": 2, "perf/rollouts": 128, "perf/train_seconds": 4.5, "actor/entropy": 0.8, "val/acc": 0.25,
         "sfpo/switched_off": 1.0},
        {"step": 3, "perf/rollouts": 192, "perf/train_seconds": 6.0, "actor/entropy": 0.7, "sfpo/switched_off": 1.0},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = load_curve(tmp_path)
    assert (c.val_steps, c.val_rollouts, c.val_seconds, c.val_acc) == (
        [0, 2],
        [0.0, 128.0],
        [0.0, 4.5],
        [0.1, 0.25],
    )
    assert (c.entropy_steps, c.entropy, c.switch_step) == ([1, 2, 3], [0.9, 0.8, 0.7], 2)


def test_first_reach_is_the_first_point_at_or_above_the_target():
    assert first_reach([0, 10, 20, 30], [0.1, 0.3, 0.2, 0.3], 0.3) == 10
    assert first_reach([0, 10], [0.1, 0.2], 0.5) is None


def test_speedup_is_grpo_cost_to_its_best_over_sfpo_cost_to_reach_it():
    grpo = curve([0, 100, 200, 300], [0, 10, 20, 30], [0.1, 0.2, 0.3, 0.3])
    sfpo = curve([0, 100, 200, 300], [0, 12, 24, 36], [0.1, 0.32, 0.35, 0.4])
    r = compare_seed(grpo, sfpo)
    assert (
        r["grpo_best_acc"] == 0.3
        and r["grpo_rollouts_to_best"] == 200
        and r["sfpo_rollouts_to_grpo_best"] == 100
    )
    assert r["rollouts_speedup"] == pytest.approx(2.0)
    assert r["seconds_speedup"] == pytest.approx(20 / 12)


def test_summary_averages_seeds_where_sfpo_reached_and_reports_the_rest():
    grpo = {
        0: curve([0, 100, 200], [0, 10, 20], [0.1, 0.2, 0.3]),
        1: curve([0, 100, 200], [0, 10, 20], [0.1, 0.4, 0.2]),
    }
    sfpo = {
        0: curve([0, 100, 200], [0, 10, 20], [0.1, 0.3, 0.3]),
        1: curve([0, 100, 200], [0, 10, 20], [0.1, 0.2, 0.3]),
    }
    s = summarize({"grpo": grpo, "sfpo": sfpo})
    assert s["per_seed"][1]["sfpo_rollouts_to_grpo_best"] is None
    assert s["mean"]["rollouts_speedup"] == {"mean": 2.0, "std": 0.0, "n": 1}
    assert s["sfpo_reached_grpo_best"] == 1
    assert s["variants"]["grpo"]["best_acc"]["mean"] == pytest.approx(0.35)
    assert s["variants"]["sfpo"]["final_acc"]["mean"] == pytest.approx(0.3)
    table = markdown(s)
    assert "| 1 | 0.400 | 100 | never |" in table and "in 1 of 2 seeds" in table
