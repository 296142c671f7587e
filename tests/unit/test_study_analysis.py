"""The study's analysis on synthetic curves with known answers: curves read from metrics.jsonl, interpolated
first-reach costs, reach ratios and their bootstrap intervals, t / Welch intervals, drops, Fisher's exact test,
the largest gap and the equivalence rule against hand-worked values; verdicts, best lrs, the decision rules of
the stability study's files; the first study's report reproduced from its committed curves, and every committed
study report equal to the analysis of the curves beside it."""

import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from sfpo_rl.experiments.analysis import (
    Interval,
    bootstrap_reach_ratio,
    collapse_test,
    difference_ci,
    drop,
    equivalence,
    largest_gap,
    mean_ci,
    reach,
    reach_ratio,
    step_values,
)
from sfpo_rl.experiments.plots import plot_study
from sfpo_rl.experiments.records import RunRecord, read_curves
from sfpo_rl.experiments.report import _decision_lines, decide, markdown, summarize, verdict
from sfpo_rl.experiments.study import Decision, load_study
from sfpo_rl.trainer.learning_curve import Curve, load_curve, plot_learning_curve

ROOT = Path(__file__).resolve().parents[2]


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


def records(cells):
    """RunRecords from {(arm, lr text): {seed: curve}}."""
    return [RunRecord(arm, lr, seed, c) for (arm, lr), runs in cells.items() for seed, c in runs.items()]


def study_file(tmp_path, name, **changes):
    """A committed study file with some fields changed (e.g. lrs filled in)."""
    raw = yaml.safe_load((ROOT / name).read_text())
    raw.update(changes)
    path = tmp_path / Path(name).name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_study(path)


def test_drop_is_the_largest_fall_from_the_running_peak():
    # Running peak 0.3, 0.5, 0.5, 0.5, 0.5: falls 0, 0, 0.3, 0.1, 0.4.
    assert drop([0.3, 0.5, 0.2, 0.4, 0.1]) == pytest.approx(0.4)
    assert drop([0.1, 0.2, 0.3]) == 0.0
    assert drop([0.5, 0.4, 0.45, 0.0]) == pytest.approx(0.5)


def test_fisher_exact_test_matches_the_hand_computed_hypergeometric_p():
    # 5 of 5 against 0 of 5: only the observed table and its mirror are as extreme; each has 1 / C(10, 5).
    t = collapse_test([True] * 5, [False] * 5)
    assert (t.collapsed, t.runs, t.baseline_collapsed, t.baseline_runs) == (5, 5, 0, 5)
    assert t.p == pytest.approx(2 / 252)
    # 3 of 5 against 0 of 5: P(X = k) = C(5, k) C(5, 3 - k) / C(10, 3) = 10, 50, 50, 10 (/120); as extreme: k = 0, 3.
    assert collapse_test([True] * 3 + [False] * 2, [False] * 5).p == pytest.approx(20 / 120)
    assert collapse_test([False] * 3, [False] * 3).p == 1.0


def test_largest_gap_is_signed_and_names_its_step():
    arm = [curve([0.1, 0.3, 0.5, 0.5, 0.6]), curve([0.1, 0.3, 0.3, 0.5, 0.6])]  # mean 0.1 0.3 0.4 0.5 0.6
    base = [curve([0.1, 0.2, 0.2, 0.45, 0.65])]
    gap, step = largest_gap(arm, base)
    assert gap == pytest.approx(0.2) and step == 10
    gap, step = largest_gap(base, arm)
    assert gap == pytest.approx(-0.2) and step == 10


def test_equivalence_is_supported_only_inside_the_margin_everywhere():
    inside, crossing, outside = (
        Interval(0.0, -0.03, 0.04),
        Interval(0.02, -0.01, 0.07),
        Interval(0.1, 0.06, 0.14),
    )
    assert equivalence([inside, inside], 0.05) == "supported"
    assert equivalence([inside, crossing], 0.05) == "inconclusive"
    assert equivalence([inside, outside], 0.05) == "contradicted"
    assert equivalence([Interval(-0.1, -0.14, -0.06)], 0.05) == "contradicted"
    assert equivalence([Interval(0.0, math.nan, math.nan)], 0.05) == "inconclusive"


def test_verdicts_claim_a_difference_only_when_the_whole_interval_does():
    fewer, higher = Interval(0.5, 0.4, 0.9), Interval(0.1, 0.02, 0.2)
    assert verdict({"rollouts": fewer, "final": higher}) == "fewer rollouts; higher final"
    assert verdict({"rollouts": Interval(2.0, 1.2, math.inf), "final": Interval(-0.1, -0.2, -0.01)}) == (
        "more rollouts; lower final"
    )
    assert verdict({"rollouts": Interval(0.9, 0.5, 1.1), "final": Interval(0.0, -0.1, 0.1)}) == (
        "rollouts: no difference shown; final: no difference shown"
    )
    assert verdict({"rollouts": Interval(None, 0.5, math.inf, never=0.6)}) == "rollouts: no difference shown"
    assert verdict({"rollouts": Interval(0.5, math.nan, math.nan), "final": higher}) == "too few seeds"
    assert verdict({"drop": Interval(-0.1, -0.2, -0.05)}) == "loses less from its peak"
    assert verdict({"drop": Interval(0.1, -0.2, 0.3)}) == "drop: no difference shown"
    assert verdict({"collapse": collapse_test([False] * 5, [True] * 5)}) == "collapses less often"
    assert (
        verdict({"collapse": collapse_test([True] * 3, [False] * 3)}) == "collapse rate: no difference shown"
    )


def test_summary_compares_pairs_and_best_lrs(tmp_path):
    grpo = {("grpo", lr): {s: curve([0.1, 0.2, 0.3, 0.4, 0.4 + 0.1 * (lr == "3e-4") + 0.01 * s]) for s in range(3)}
            for lr in ("1e-4", "3e-4")}  # fmt: skip
    sfpo = {("sfpo", "1e-4"): {s: curve([0.1, 0.4, 0.5, 0.5, 0.5 + 0.01 * s]) for s in range(3)}}
    matched = {("grpo_x4", "1e-4"): {s: curve([0.1, 0.4, 0.4, 0.4, 0.4]) for s in range(3)}}
    study = study_file(tmp_path, "results/compare/study.yaml", learning_rates=["1e-4", "3e-4"])
    summary = summarize(study, records({**grpo, **sfpo, **matched}))
    assert summary["best_lr"] == {"grpo": "3e-4", "sfpo": "1e-4", "grpo_x4": "1e-4"}
    same_lr, matched_rows, best = (c["rows"] for c in summary["comparisons"])
    v = same_lr["sfpo@1e-4"]
    assert v["final"]["estimate"] == pytest.approx(0.5 - 0.4)
    assert v["rollouts"]["estimate"] == pytest.approx((640 + 0.1 * 640) / 2560)  # mean 0.41 reached at 704
    assert v["verdict"] == "fewer rollouts; higher final"
    assert matched_rows["sfpo@1e-4"]["baseline"] == "grpo_x4"
    # At their best lrs GRPO peaks at 0.51 (seed mean) and SFPO at 0.51: reached at the last point.
    assert best["sfpo"]["rollouts"]["estimate"] == pytest.approx(1.0)
    table = markdown(study, summary, records({**grpo, **sfpo, **matched}))
    assert "| sfpo | 1e-4 | 3 | 10.0 |" in table and "sfpo@1e-4 (vs grpo_x4)" in table
    assert "The best lr of sfpo, grpo_x4 is the grid's smallest, 1e-4" in table
    assert "The best lr of grpo is the grid's largest, 3e-4" in table


def pilot_records(drops_at):
    """One seed of grpo / grpo_x4 / grpo_x8 at each pilot lr; `drops_at[(arm, lr)]` points lost after the peak."""
    cells = {}
    for arm in ("grpo", "grpo_x4", "grpo_x8"):
        for lr in ("3e-4", "1e-3", "3e-3"):
            fall = drops_at.get((arm, lr), 0) / 100
            cells[(arm, lr)] = {0: curve([0.3, 0.6, 0.8, 0.8 - fall, 0.8 - fall / 2])}
    return records(cells)


def test_the_pilot_rule_picks_the_smallest_lr_at_which_a_multi_epoch_arm_collapses(tmp_path):
    study = load_study(ROOT / "results/stability/pilot.yaml")
    # grpo collapses at 3e-4 (it does not count), grpo_x4 loses 9.9 at 1e-3 (not >= 10), grpo_x8 loses 12 at 3e-3.
    found = pilot_records({("grpo", "3e-4"): 30, ("grpo_x4", "1e-3"): 9.9, ("grpo_x8", "3e-3"): 12})
    (decision,) = summarize(study, found)["decisions"]
    assert (
        decision["l_star"] == "3e-3"
        and decision["next_lrs"] == ["0.001", "0.003"]
        and not decision["missing"]
    )
    assert decision["drops_by_lr"]["1e-3"]["grpo_x4"] == [pytest.approx(9.9)]
    summary = summarize(study, found)
    assert (
        summary["runs"]["grpo_lr3e-4_seed0"]["collapsed"]
        and not summary["runs"]["grpo_x4_lr1e-3_seed0"]["collapsed"]
    )
    text = markdown(study, summary, found)
    assert "**L* = 3e-3**; the next stage runs at L*/3 = 0.001 and L* = 0.003." in text
    assert "| grpo_x8_lr3e-3_seed0 | 80.0 | 74.0 | 12.0 | yes | 0.4 | finished |" in text

    (none,) = summarize(study, pilot_records({("grpo", "3e-3"): 50}))["decisions"]
    assert none["l_star"] is None and none["next_lrs"] == []
    partial = [r for r in found if r.name != "grpo_x4_lr3e-4_seed0"]
    assert summarize(study, partial)["decisions"][0]["missing"] == ["grpo_x4_lr3e-4_seed0"]


def stage1_records(final_and_drop):
    """5 seeds per cell at one lr; (final, drop) per seed for each arm: curve 0.3 -> peak -> final."""
    cells = {}
    for arm, runs in final_and_drop.items():
        cells[(arm, "1e-3")] = {
            s: curve([0.3, 0.5, (final + dropped) / 100, final / 100, final / 100])
            for s, (final, dropped) in enumerate(runs)
        }
    return records(cells)


def test_stage_1_decides_stabilisation_by_the_protocols_rule(tmp_path):
    study = study_file(tmp_path, "results/stability/study.yaml", learning_rates=["1e-3"])
    steady = [(80 + s, 1 + 0.5 * s) for s in range(5)]  # drops 1-3 points
    collapsing = [(60 + s, 20 + s) for s in range(5)]  # drops 20-24 points: all collapse
    found = stage1_records({"grpo_x4": collapsing, "sfpo_k3_a0.8": steady, "grpo_x8": steady, "sfpo_k7_a0.5": steady,
                            "sfpo_k7_a0.2": [(70 + s, 1 + 0.5 * s) for s in range(5)]})  # fmt: skip
    summary = summarize(study, found)
    json.dumps(summary)  # the report's JSON, rewritten after every run: no numpy scalars
    rows = summary["comparisons"][0]["rows"]
    k3 = rows["sfpo_k3_a0.8@1e-3"]
    assert k3["collapse"]["p"] == pytest.approx(2 / 252) and k3["drop"]["high"] < 0
    assert k3[
        "verdict"
    ] == "higher final; loses less from its peak; collapses less often; rollouts: no difference shown" or (
        k3["verdict"].startswith("higher final; loses less from its peak; collapses less often; ")
    )
    (decision,) = summary["decisions"]
    assert decision["cells"]["sfpo_k3_a0.8@1e-3"]["stabilises"]
    assert not decision["cells"]["sfpo_k7_a0.5@1e-3"]["stabilises"]  # same as its baseline
    k7_02 = decision["cells"]["sfpo_k7_a0.2@1e-3"]
    assert k7_02["ends_lower"] and not k7_02["stabilises"]  # ends 10 points lower
    assert decision["shown_at"] == ["sfpo_k3_a0.8@1e-3"]
    text = markdown(study, summary, found)
    assert "- sfpo_k7_a0.2@1e-3 against grpo_x8: not shown to stabilise (ends lower)" in text
    assert (
        "The reposition is shown to stabilise aggressive steps at: sfpo_k3_a0.8@1e-3 (against grpo_x4).**"
        in text
    )


def test_the_confirmatory_test_reports_the_equivalence_outcome_and_the_largest_gap(tmp_path):
    study = load_study(ROOT / "results/stability/confirm.yaml")

    def cells(offset_by_lr):
        found = {}
        for lr, offset in offset_by_lr.items():
            found[("grpo_x2", lr)] = {s: curve([0.3, 0.5, 0.6, 0.7, 0.7 + 0.01 * s]) for s in range(3)}
            found[("sfpo_k3_a0.33", lr)] = {s: curve([0.3, 0.5, 0.6 + offset, 0.7 + offset, 0.7 + offset + 0.01 * s])
                                            for s in range(3)}  # fmt: skip
        return records(found)

    def outcome(offsets):
        (decision,) = summarize(study, cells(offsets))["decisions"]
        return decision["pairs"]["sfpo_k3_a0.33 vs grpo_x2"]["outcome"]

    assert outcome({"1e-5": 0.01, "3e-5": -0.02}) == "supported"
    assert outcome({"1e-5": 0.01, "3e-5": 0.08}) == "contradicted"
    assert outcome({"1e-5": 0.01}) == "inconclusive"  # 3e-5 not finished: cannot be supported yet
    summary = summarize(study, cells({"1e-5": 0.01, "3e-5": -0.02}))
    gap = summary["comparisons"][0]["rows"]["sfpo_k3_a0.33@3e-5"]["gap"]
    assert gap == {"points": pytest.approx(-2.0), "step": 10}
    assert "sfpo_k3_a0.33 vs grpo_x2: **supported**" in markdown(
        study, summary, cells({"1e-5": 0.01, "3e-5": -0.02})
    )


def analysed(study_file: str):
    """A committed study's file, its summary and its report, analysed from the curves committed beside it."""
    here = os.getcwd()
    os.chdir(ROOT)  # the report names its study file relative to the working directory
    try:
        study = load_study(study_file)
        found = list(read_curves(study.out / "curves.json").values())
        summary = summarize(study, found)
        return study, summary, markdown(study, summary, found)
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def first_study():
    _, summary, text = analysed("results/compare/study.yaml")
    return summary, text


@pytest.mark.timeout(900)  # 2,000 bootstrap resamples for each of 33 comparisons on two axes
def test_the_first_study_reproduces_its_report_from_the_committed_curves(first_study):
    """Today's compare.md (as committed at 270e401, before the study became a file) is reproduced line for line;
    the sections after it are the notes and provenance added since. The committed report is this output."""
    _, text = first_study
    assert text.startswith((ROOT / "tests/unit/data/compare_270e401.md").read_text())
    assert text == (ROOT / "results/compare/compare.md").read_text()


def test_the_first_studys_notes_name_the_grid_edge_the_switch_off_and_the_near_misses(first_study):
    summary, _ = first_study
    notes = "\n".join(summary["notes"])
    assert "Every arm's best lr is the grid's largest, 0.0001: the edge of the grid" in notes
    assert "sfpo (SFPO K=3 a=0.8) at lr 1e-05: SFPO's entropy switch-off fired in 4 of 5 runs" in notes
    assert "they gained +5.0 points on average, the other runs +11.0" in notes
    assert "sfpo@0.0001 against grpo_x4: the arm's seed-mean curve peaks 0.08 points below" in notes
    assert "23% of the bootstrap resamples do reach it" in notes
    assert summary["provenance"]["commits"] == {"a4ab0528ccc010f34c6ee88122318162a7f121fe": 66}
    assert summary["provenance"]["reconstructed_runs"] == 66


# ---------------------------------------------------------------------------------------------- per-step metrics
def test_load_curve_keeps_the_asked_metrics_per_training_step(tmp_path):
    rows = [
        {"step": 0, "val/acc": 0.1},
        {"step": 1, "perf/rollouts": 128, "reward/mean": 0.2, "sampling/gen_rounds": 1.0,
         "sampling/zero_adv_group_frac": 0.25},
        {"step": 2, "perf/rollouts": 384, "reward/mean": 0.3, "sampling/zero_adv_group_frac": 0.5, "val/acc": 0.3},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = load_curve(tmp_path, ["sampling/zero_adv_group_frac", "sampling/gen_rounds"])
    assert c.rollouts == [0.0, 384.0]  # every rollout generated: step 2 took two rounds
    assert c.step_values["sampling/zero_adv_group_frac"] == [0.25, 0.5]
    rounds = c.step_values["sampling/gen_rounds"]
    assert rounds[0] == 1.0 and math.isnan(rounds[1])  # not logged at step 2
    assert step_values(c, "sampling/gen_rounds") == [1.0] and step_values(
        c, "sampling/zero_adv_group_frac", 2
    ) == [0.5]
    assert load_curve(tmp_path).step_values == {}


def test_the_seed_mean_curve_of_seeds_that_generate_different_rollouts_has_their_mean_x():
    """With dynamic sampling each seed generates its own number of rollouts by a validation step: the seed-mean
    curve is at the seeds' mean rollouts there (not at one seed's, nor the mean of each seed's reach)."""
    grpo = [curve([0.1, 0.2, 0.3, 0.4, 0.5])] * 2  # best 0.5 first at 2560 rollouts
    a = curve([0.1, 0.2, 0.4, 0.6, 0.6], rollouts=[0, 1000, 2000, 3000, 4000])  # alone: 0.5 at 2500
    b = curve([0.1, 0.4, 0.6, 0.6, 0.6], rollouts=[0, 600, 1400, 2200, 3000])  # alone: 0.5 at 1000
    # Mean curve: x 0, 800, 1700, 2600, 3500; accuracy 0.1, 0.3, 0.5, 0.6, 0.6: 0.5 at 1700 (per-seed mean: 1750).
    assert reach_ratio(grpo, [a, b]) == pytest.approx(1700 / 2560)
    # Resamples draw {a, a} (2500), {b, b} (1000) or {a, b} (1700), each with probability >= 1/4.
    i = bootstrap_reach_ratio(grpo, [a, b], resamples=2000)
    assert (i.low, i.high, i.never) == (pytest.approx(1000 / 2560), pytest.approx(2500 / 2560), 0.0)


def stepped(values_by_metric, accs=(0.1, 0.2)):
    """A curve of len(values) training steps with the given per-step metric values."""
    n = len(next(iter(values_by_metric.values())))
    c = curve(list(accs), rollouts=ROLLOUTS[: len(accs)])
    c.train_steps = list(range(1, n + 1))
    c.step_values = {metric: list(values) for metric, values in values_by_metric.items()}
    return c


ZERO_ADV, ROUNDS = "sampling/zero_adv_group_frac", "sampling/gen_rounds"
STEP_STUDY = {
    "name": "per-step",
    "steps": 4,
    "learning_rates": ["1e-4"],
    "seeds": 2,
    "arms": {"grpo": {"overrides": ["algorithm=grpo"]}, "dapo": {"overrides": ["algorithm=dapo"]}},
    "step_metrics": {
        "zero_adv": {"metric": ZERO_ADV, "label": "zero-advantage share", "percent": True,
                     "windows": [[1, 4], [3, 4]], "plot": True},
        "rounds": {"metric": ROUNDS, "label": "rounds per step", "arms": ["dapo"],
                   "count": {"at_least": 3, "label": "steps of 3 rounds or more"}},
        "kept": {"metric": "sampling/groups_kept", "count": {"below": 16, "label": "steps short of 16"}},
    },
}  # fmt: skip


def step_records():
    return records({
        ("grpo", "1e-4"): {0: stepped({ZERO_ADV: [0.0, 0.25, 0.5, 0.75]}),
                           1: stepped({ZERO_ADV: [0.25, 0.25, 0.75, 0.75]})},
        ("dapo", "1e-4"): {0: stepped({ZERO_ADV: [0.5] * 4, ROUNDS: [1, 2, 3, 4], "sampling/groups_kept": [16] * 4}),
                           1: stepped({ZERO_ADV: [0.5] * 4, ROUNDS: [1, 1, 2, 5], "sampling/groups_kept": [16, 16, 16, 9]})},
    })  # fmt: skip


def test_step_metrics_are_summarised_per_arm_over_their_windows(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(STEP_STUDY, sort_keys=False))
    study = load_study(tmp_path / "s.yaml")
    zero, rounds, kept = summarize(study, step_records())["step_metrics"]
    # grpo: run means over steps 1-4 are 0.375 and 0.5; over 3-4, 0.625 and 0.75. Two seeds: t(0.975, 1) =
    # 12.706205, sd = 0.125 / sqrt(2), so the half-width is 12.706205 * 0.125 / 2.
    half = 12.706205 * 0.125 / 2
    first, last = zero["cells"]["grpo@1e-4"]["windows"]
    assert (first["first"], first["last"], first["max"]) == (1, 4, 0.75)
    assert first["mean"]["estimate"] == pytest.approx(0.4375)
    assert first["mean"]["high"] - 0.4375 == pytest.approx(half, rel=1e-6)
    assert last["mean"]["estimate"] == pytest.approx(0.6875) and last["max"] == 0.75
    assert zero["cells"]["grpo@1e-4"]["per_step"] == {
        "steps": [1, 2, 3, 4],
        "mean": [0.125, 0.25, 0.625, 0.75],
    }
    dapo_zero = zero["cells"]["dapo@1e-4"]["windows"][0]["mean"]
    assert (dapo_zero["estimate"], dapo_zero["low"], dapo_zero["high"]) == (0.5, 0.5, 0.5)
    # Rounds, for dapo only: run means 2.5 and 2.25; 3 or more rounds at 2 + 1 of the 8 steps.
    assert list(rounds["cells"]) == ["dapo@1e-4"]
    cell = rounds["cells"]["dapo@1e-4"]
    assert cell["windows"][0]["mean"]["estimate"] == pytest.approx(2.375) and cell["windows"][0]["max"] == 5
    assert cell["count"] == {"steps": 3, "of": 8, "per_seed": {0: 2, 1: 1}}
    # Kept groups: grpo never logs it (named, not counted); dapo's seed 1 was short once.
    assert kept["cells"]["grpo@1e-4"]["not_logged"] == [0, 1] and kept["cells"]["grpo@1e-4"]["seeds"] == []
    assert kept["cells"]["dapo@1e-4"]["count"]["steps"] == 1

    text = markdown(study, summarize(study, step_records()), step_records())
    lo, hi = 100 * (0.4375 - half), 100 * (0.4375 + half)
    assert (
        "### Per step: zero-advantage share (`sampling/zero_adv_group_frac`; descriptive, no decision)"
        in text
    )
    assert "| arm @ lr | seeds | steps 1-4: mean [95% t] | max | steps 3-4: mean [95% t] | max |" in text
    assert f"| grpo@1e-4 | 2 | 43.8% [{lo:.1f}%, {hi:.1f}%] | 75.0% | 68.8% [" in text
    assert "| dapo@1e-4 | 2 | 2.38 [" in text and "| 5.00 | 3 of 8 (2/1) |" in text
    assert "| grpo@1e-4 | 0 (not logged by seed 0, 1) | n/a | n/a | 0 of 0 () |" in text


def test_a_plotted_step_metric_gets_its_figure(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(STEP_STUDY, sort_keys=False))
    study = load_study(tmp_path / "s.yaml")
    paths = plot_study(study, step_records(), {"grpo": "1e-4", "dapo": "1e-4"}, tmp_path)
    figure = tmp_path / "per_step_zero_adv.png"
    assert figure in paths and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "per_step_rounds.png").exists()  # not asked for


# ---------------------------------------------------------------------------------------------- the improves rule
def rows_of(**cases):
    """Comparison rows whose rollouts ratio and final difference are the given (estimate, low, high)."""
    rows = {}
    for key, (rollouts, final) in cases.items():
        results = {"rollouts": Interval(*rollouts), "final": Interval(*final)}
        rows[f"{key}@1e-4"] = {"baseline": "base", **{e: asdict(i) for e, i in results.items()},
                               "verdict": verdict(results)}  # fmt: skip
    return rows


def test_the_improves_rule_holds_on_one_better_endpoint_and_fails_on_any_worse_one():
    rows = rows_of(
        fewer=((0.5, 0.4, 0.9), (0.0, -0.1, 0.1)),  # fewer rollouts, final not shown: holds
        higher=((1.0, 0.8, 1.2), (0.05, 0.01, 0.1)),  # higher final: holds
        mixed=((0.5, 0.4, 0.9), (-0.05, -0.1, -0.01)),  # fewer rollouts but lower final: fails
        more=((1.5, 1.1, 2.0), (0.0, -0.1, 0.1)),  # more rollouts: fails
        neither=((0.9, 0.5, 1.2), (0.0, -0.1, 0.1)),
        few=((0.5, math.nan, math.nan), (0.0, math.nan, math.nan)),
    )
    comparison = {"decide": ["rollouts", "final"], "rows": rows}
    rule = Decision("improves", comparison=0, claim="it helps", counterclaim="it costs")
    found = decide(rule, None, [], [comparison])
    assert {k: r["outcome"] for k, r in found["rows"].items()} == {
        "fewer@1e-4": "holds", "higher@1e-4": "holds", "mixed@1e-4": "fails", "more@1e-4": "fails",
        "neither@1e-4": "no difference shown", "few@1e-4": "too few seeds",
    }  # fmt: skip
    lines = _decision_lines(found)
    assert lines[0] == "- fewer@1e-4 against base: **it helps** (fewer rollouts; final: no difference shown)"
    assert lines[2] == "- mixed@1e-4 against base: **it costs** (fewer rollouts; lower final)"
    assert lines[4] == (
        "- neither@1e-4 against base: **no difference shown** (rollouts: no difference shown; final: no difference shown)"
    )


def test_the_dapo_study_reports_its_decisions_and_zero_advantage_share(tmp_path):
    """results/dapo/study.yaml on synthetic runs: sfpo_dapo reaches dapo's best with fewer rollouts (its seeds'
    rollouts differ), ends level with it, and is level with sfpo."""
    here = os.getcwd()
    study = load_study(ROOT / "results/dapo/study.yaml")
    steps = list(range(1, 41))

    def run(accs, per_step, seed):
        c = curve(accs, rollouts=[per_step * s for s in range(0, 41, 5)])
        c.train_steps = steps
        c.step_values = {
            ZERO_ADV: [0.1 * seed + s / 100 for s in steps],
            ROUNDS: [1.0 + (s > 30) for s in steps],
        }
        return c

    rising = [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9]
    fast = [0.1, 0.5, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    found = records({
        ("grpo", "1e-4"): {s: run(rising, 128, s) for s in range(2)},
        ("sfpo", "1e-4"): {s: run(fast, 128, s) for s in range(2)},
        ("dapo", "1e-4"): {s: run(rising, 150 + 20 * s, s) for s in range(2)},
        ("sfpo_dapo", "1e-4"): {s: run(fast, 150 + 20 * s, s) for s in range(2)},
    })  # fmt: skip
    try:
        os.chdir(ROOT)
        summary = summarize(study, found)
        text = markdown(study, summary, found)
    finally:
        os.chdir(here)
    # dapo's target 0.9 at 30 steps x 160 (mean) rollouts; sfpo_dapo's at 15 steps x 160.
    helps, adds = summary["decisions"]
    row = summary["comparisons"][1]["rows"]["sfpo_dapo@1e-4"]
    assert row["rollouts"]["estimate"] == pytest.approx(0.5)
    assert helps["rows"]["sfpo_dapo@1e-4"]["outcome"] == "holds"
    assert "- sfpo_dapo@1e-4 against dapo: **SFPO helps on DAPO here (the paper's claim holds)**" in text
    # Against sfpo: the same accuracy curve at 160 / 128 the rollouts per step: needs more, so DAPO costs SFPO.
    assert summary["comparisons"][2]["rows"]["sfpo_dapo@1e-4"]["rollouts"]["estimate"] == pytest.approx(
        160 / 128
    )
    assert adds["rows"]["sfpo_dapo@1e-4"]["outcome"] == "fails" and "**DAPO costs SFPO**" in text
    zero = summary["step_metrics"][0]["cells"]["grpo@1e-4"]["windows"]
    # Seed s: 0.1 s + step / 100; means over 1-40: 0.205 + 0.1 s; over 31-40: 0.355 + 0.1 s.
    assert [w["mean"]["estimate"] for w in zero] == [pytest.approx(0.255), pytest.approx(0.405)]
    assert summary["step_metrics"][1]["cells"]["dapo@1e-4"]["count"]["steps"] == 0  # never 10 rounds
    assert "### Per step: share of the groups generated with zero advantage" in text


@pytest.mark.parametrize(
    "study_file",
    [
        "results/dapo/study.yaml",
        *(f"results/stability/{s}.yaml" for s in ("pilot", "study", "confirm", "followup", "followup2")),
    ],
)
def test_every_committed_study_report_is_what_its_committed_curves_give(study_file):
    """The README quotes these reports: each must be the analysis of the curves committed beside it, unedited."""
    study, _, text = analysed(study_file)
    assert text == (ROOT / study.out / f"{study.report_name}.md").read_text()


def test_readme_stability_tables_quote_the_committed_reports():
    """Every interval in the README's stability tables is one the committed reports print, not a hand-typed one."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Stability: does the reposition")[1].split("\n### ")[0]
    reports = "".join(p.read_text() for p in (ROOT / "results/stability").glob("*/*.md"))
    rows = [line for line in section.splitlines() if line.startswith(("| 1e-4 |", "| 3e-4 |"))]
    intervals = [i for row in rows for i in re.findall(r"-?\+?[\d.]+ \[[^\]]+\]", row)]
    assert len(intervals) >= 40  # Stage 1's and both follow-ups' comparison tables, every row
    assert [i for i in intervals if i not in reports] == []
