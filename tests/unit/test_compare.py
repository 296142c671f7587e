"""The study's analysis on synthetic curves with known answers: curves read from metrics.jsonl, interpolated
first-reach costs, reach ratios and their bootstrap intervals, t / Welch intervals, best-lr choice, the report
and the resumable runner's order."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sfpo_rl.experiments import compare
from sfpo_rl.experiments.analysis import (
    Interval,
    bootstrap_reach_ratio,
    difference_ci,
    mean_ci,
    reach,
    reach_ratio,
)
from sfpo_rl.experiments.report import best_lrs, markdown, summarize, verdict
from sfpo_rl.experiments.study import ARMS, ARMS_BY_NAME, plan
from sfpo_rl.trainer.learning_curve import Curve, load_curve, plot_learning_curve

ROLLOUTS = [0, 640, 1280, 1920, 2560]


def curve(accs, seconds=None, rollouts=ROLLOUTS):
    seconds = seconds or [r / 100 for r in rollouts]
    return Curve(
        steps=list(range(0, 5 * len(accs), 5)),
        rollouts=list(rollouts),
        seconds=list(seconds),
        acc=list(accs),
        acc_se=[0.01] * len(accs),
        phase_seconds={
            "generate": 0.5,
            "reward": 0.1,
            "old_log_prob": 0.1,
            "advantage": 0.0,
            "update": 1.0,
            "sync": 0.1,
        },
    )


def test_load_curve_reads_validation_points_rewards_phases_and_the_switch(tmp_path):
    rows = [
        {"step": 0, "val/acc": 0.1, "val/acc_se": 0.01},
        {"step": 1, "perf/rollouts": 64, "perf/train_seconds": 2.0, "reward/mean": 0.2, "sfpo/active": 1.0,
         "timing/update": 1.5, "timing/generate": 0.5},
        {"step": 2, "perf/rollouts": 128, "perf/train_seconds": 4.5, "reward/mean": 0.3, "sfpo/active": 0.0,
         "timing/update": 0.5, "timing/generate": 1.0, "val/acc": 0.25, "val/acc_se": 0.012},
        {"step": 3, "perf/rollouts": 192, "perf/train_seconds": 6.0, "reward/mean": 0.4, "sfpo/active": 0.0},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = load_curve(tmp_path)
    assert (c.steps, c.rollouts, c.seconds, c.acc, c.acc_se) == (
        [0, 2], [0.0, 128.0], [0.0, 4.5], [0.1, 0.25], [0.01, 0.012],
    )  # fmt: skip
    assert (c.train_steps, c.train_reward, c.switch_step) == ([1, 2, 3], [0.2, 0.3, 0.4], 2)
    assert c.phase_seconds["update"] == pytest.approx(2.0 / 3) and c.phase_seconds["generate"] == 0.5


def test_grpo_runs_have_no_switch_off(tmp_path):
    rows = [{"step": s, "sfpo/active": 0.0, "reward/mean": 0.1} for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_curve(tmp_path).switch_step is None


def test_reach_interpolates_between_validation_points():
    assert reach([0, 10, 20], [0.1, 0.3, 0.5], 0.4) == pytest.approx(15.0)
    assert reach([0, 10, 20], [0.1, 0.3, 0.5], 0.3) == 10.0
    assert reach([0, 10, 20], [0.4, 0.3, 0.5], 0.35) == 0.0  # reached before spending anything
    assert reach([0, 10, 20], [0.1, 0.5, 0.2], 0.6) is None


def test_reach_ratio_of_a_curve_that_learns_twice_as_fast_is_one_half():
    # GRPO peaks at 0.5 after 2560 rollouts; the arm climbs the same line twice as fast.
    grpo = [curve([0.1, 0.2, 0.3, 0.4, 0.5])]
    fast = [curve([0.1, 0.3, 0.5, 0.5, 0.5])]
    assert reach_ratio(grpo, fast) == pytest.approx(0.5)
    assert reach_ratio(fast, grpo) is None or reach_ratio(fast, grpo) == pytest.approx(2.0)
    never = [curve([0.1, 0.2, 0.2, 0.2, 0.2])]
    assert reach_ratio(grpo, never) is None


def test_reach_ratio_uses_the_seed_mean_curves():
    # Seed means: GRPO 0.1, 0.2, 0.3, 0.4, 0.4 (best 0.4 first at 1920); arm 0.1, 0.4, ... (reaches at 640).
    grpo = [curve([0.1, 0.1, 0.2, 0.3, 0.3]), curve([0.1, 0.3, 0.4, 0.5, 0.5])]
    arm = [curve([0.1, 0.4, 0.4, 0.4, 0.4]), curve([0.1, 0.4, 0.4, 0.4, 0.4])]
    assert reach_ratio(grpo, arm) == pytest.approx(640 / 1920)
    # On the seconds axis the arm's steps cost twice as much: the ratio doubles.
    slow_arm = [curve(c.acc, seconds=[2 * s for s in c.seconds]) for c in arm]
    assert reach_ratio(grpo, slow_arm, "seconds") == pytest.approx(2 * 640 / 1920)


def test_bootstrap_interval_of_identical_seeds_is_the_point_and_counts_never():
    grpo = [curve([0.1, 0.2, 0.3, 0.4, 0.5])] * 3
    fast = [curve([0.1, 0.3, 0.5, 0.5, 0.5])] * 3
    i = bootstrap_reach_ratio(grpo, fast, resamples=200)
    assert (i.estimate, i.low, i.high, i.never) == (
        pytest.approx(0.5),
        pytest.approx(0.5),
        pytest.approx(0.5),
        0.0,
    )
    # One of two arm seeds never learns: only resamples that draw the other seed twice (1 in 4) reach 0.5.
    mixed = [curve([0.1, 0.3, 0.5, 0.5, 0.5]), curve([0.1, 0.1, 0.1, 0.1, 0.1])]
    i = bootstrap_reach_ratio(grpo, mixed, resamples=2000)
    assert i.estimate is None and 0.7 < i.never < 0.8 and i.low == pytest.approx(0.5) and math.isinf(i.high)


def test_t_and_welch_intervals_match_hand_computed_values():
    # mean 2, sd 1, n 3: half-width t(0.975, 2) * 1 / sqrt(3) = 4.302653 / 1.732051.
    i = mean_ci([1.0, 2.0, 3.0])
    assert (i.estimate, i.high - i.estimate) == (2.0, pytest.approx(4.302653 / math.sqrt(3), rel=1e-5))
    # Equal variances and sizes: Welch's dof = 2 (n - 1) = 4, se = sqrt(2 / 3); t(0.975, 4) = 2.776445.
    d = difference_ci([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert d.estimate == 3.0 and d.high - 3.0 == pytest.approx(2.776445 * math.sqrt(2 / 3), rel=1e-5)
    assert math.isnan(mean_ci([1.0]).low)


def test_summary_compares_with_grpo_matched_and_at_best_lrs():
    grpo = {(("grpo", lr)): {s: curve([0.1, 0.2, 0.3, 0.4, 0.4 + 0.1 * (lr > 1e-4) + 0.01 * s]) for s in range(3)}
            for lr in (1e-4, 3e-4)}  # fmt: skip
    sfpo = {("sfpo", 1e-4): {s: curve([0.1, 0.4, 0.5, 0.5, 0.5 + 0.01 * s]) for s in range(3)}}
    matched = {("grpo_x4", 1e-4): {s: curve([0.1, 0.4, 0.4, 0.4, 0.4]) for s in range(3)}}
    cells = {**grpo, **sfpo, **matched}
    s = summarize(cells)
    assert best_lrs(cells) == {"grpo": 3e-4, "sfpo": 1e-4, "grpo_x4": 1e-4}
    v = s["versus_grpo"]["sfpo@0.0001"]
    assert v["final_acc_diff"]["estimate"] == pytest.approx(0.5 - 0.4)
    assert v["rollouts_ratio"]["estimate"] == pytest.approx(
        (640 + 0.1 * 640) / 2560
    )  # mean 0.41 reached at 704
    assert v["verdict"] == "fewer rollouts; higher final"
    assert s["versus_matched"]["sfpo@0.0001"]["matched_to"] == "grpo_x4"
    # At their best lrs GRPO peaks at 0.51 (seed mean) and SFPO at 0.51: reached at the last point.
    assert s["best_lr"]["versus_grpo"]["sfpo"]["rollouts_ratio"]["estimate"] == pytest.approx(1.0)
    table = markdown(s)
    assert "| sfpo | 0.0001 | 3 | 10.0 |" in table and "sfpo@0.0001 (vs grpo_x4)" in table


def test_plan_is_balanced_seed_by_seed_and_gives_the_headline_pair_five_seeds():
    runs = plan()
    assert len(runs) == len({r.name for r in runs}) == 3 * (5 + 5 + 4 * 3)
    assert runs[0].lr == 1e-4  # the embedded default's lr first
    first_seed_block = runs[: 3 * len(ARMS)]
    assert {r.seed for r in first_seed_block} == {0}
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)
    assert {r.arm.name for r in runs if r.seed == 4} == {"grpo", "sfpo"}
    sfpo = next(r for r in runs if r.arm.name == "sfpo_k7_a0.2")
    assert "algorithm.sfpo.inner_steps=7" in sfpo.overrides() and f"actor.lr={sfpo.lr:g}" in sfpo.overrides()
    assert ARMS_BY_NAME["sfpo"].matched_to == "grpo_x4"


def test_runner_skips_finished_runs_goes_on_after_a_failure_and_reports_each(tmp_path):
    runs = plan([ARMS_BY_NAME["grpo"], ARMS_BY_NAME["sfpo"]], (1e-4,), max_seeds=2)
    (tmp_path / runs[0].name).mkdir()
    (tmp_path / runs[0].name / "summary.json").write_text("{}")
    trained, reports = [], []

    def fake_train(run, run_dir: Path, extra) -> int:
        trained.append(run.name)
        if run.arm.name == "sfpo" and run.seed == 0:
            return 3
        (run_dir / "summary.json").write_text("{}")
        return 0

    failed = compare.run_study(runs, tmp_path, [], after_each=lambda: reports.append(1), train=fake_train)
    assert trained == [r.name for r in runs[1:]]
    assert failed == ["sfpo_lr0.0001_seed0"] and len(reports) == 2


def test_report_round_trips_through_curves_json(tmp_path):
    cells = {
        ("grpo", 1e-4): {0: curve([0.1, 0.2, 0.3, 0.4, 0.5])},
        ("sfpo", 1e-4): {0: curve([0.1, 0.3, 0.5, 0.5, 0.5])},
    }
    summary = compare.write_report(cells, tmp_path, setup={})
    again = compare.cells_from_curves_file(tmp_path / "curves.json")
    assert np.allclose(again[("sfpo", 1e-4)][0].acc, cells[("sfpo", 1e-4)][0].acc)
    assert summarize(again)["versus_grpo"] == summary["versus_grpo"]
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "val_acc_vs_rollouts.png",
        "val_acc_vs_seconds.png",
        "best_lr.png",
    }


def test_learning_curve_png_is_written_with_the_switch_marked(tmp_path):
    rows = [{"step": 0, "val/acc": 0.1, "val/acc_se": 0.01}] + [
        {"step": s, "perf/rollouts": 128 * s, "reward/mean": 0.1 * s, "sfpo/active": float(s < 3)}
        for s in range(1, 5)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = plot_learning_curve(tmp_path, "sfpo")
    assert path == tmp_path / "learning_curve.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_curve(tmp_path).switch_step == 3
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # validation only: nothing to draw
    assert plot_learning_curve(tmp_path) is None


def test_verdicts_claim_a_difference_only_when_the_whole_interval_does():
    assert verdict(Interval(0.5, 0.4, 0.9), Interval(0.1, 0.02, 0.2)) == "fewer rollouts; higher final"
    assert verdict(Interval(2.0, 1.2, math.inf), Interval(-0.1, -0.2, -0.01)) == "more rollouts; lower final"
    assert verdict(Interval(0.9, 0.5, 1.1), Interval(0.0, -0.1, 0.1)) == (
        "rollouts: no difference shown; final: no difference shown"
    )
    assert verdict(Interval(None, 0.5, math.inf, never=0.6), Interval(0.0, -0.1, 0.1)).startswith(
        "rollouts: no"
    )
    assert verdict(Interval(0.5, math.nan, math.nan), Interval(0.1, 0.0, 0.2)) == "too few seeds"


def test_runs_recorded_in_curves_json_count_as_finished_and_stay_in_the_report(tmp_path):
    """The committed results seed a study on another machine: recorded runs are not trained again."""
    runs = plan([ARMS_BY_NAME["grpo"], ARMS_BY_NAME["sfpo"]], (1e-4,), max_seeds=1)
    recorded = {("grpo", 1e-4): {0: curve([0.1, 0.2, 0.3, 0.4, 0.5])}}
    trained = []

    def fake_train(run, run_dir: Path, extra) -> int:
        trained.append(run.name)
        return 3

    compare.run_study(runs, tmp_path, [], train=fake_train, recorded=recorded)
    assert trained == ["sfpo_lr0.0001_seed0"]
    assert compare.collect(runs, tmp_path, recorded) == recorded


def test_a_study_run_is_a_plain_training_job_with_the_arms_overrides(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, stdout, stderr):
        seen["cmd"] = cmd
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(compare.subprocess, "run", fake_run)
    run = next(r for r in plan() if r.arm.name == "sfpo_k7_a0.5" and r.lr == 3e-5 and r.seed == 2)
    assert compare.run_training(run, tmp_path, ["trainer.total_steps=3"]) == 0
    cmd = seen["cmd"]
    assert cmd[1:3] == ["-m", "sfpo_rl.trainer.main"] and f"trainer.run_dir={tmp_path}" in cmd
    assert {"algorithm=sfpo", "algorithm.sfpo.inner_steps=7", "algorithm.sfpo.alpha=0.5", "actor.lr=3e-05",
            "trainer.seed=2", "data.seed=2"} <= set(cmd)  # fmt: skip
    assert cmd[-1] == "trainer.total_steps=3"  # extra overrides come last, so they win
    assert (tmp_path / "train.log").is_file()
