"""The study's statistics: pure functions of runs' validation curves (only `load_curve` reads a file).

A cell is one (arm, learning rate) with a curve per seed. Every run of the study validates at the same steps
and generates the same number of rollouts per step, so a cell's seed-mean curve is the mean accuracy at each
validation step; its time axis is the seeds' mean training wall-clock at that step.

- `reach`: the x (rollouts or seconds) at which a curve first reaches a target accuracy, interpolating
  linearly between validation points (a coarse grid would otherwise round every answer to it).
- `reach_ratio`: the paper's headline, the rollouts an arm needs to first reach GRPO's best seed-mean
  accuracy divided by the rollouts GRPO needed for it (< 1: fewer). Its confidence interval comes from a
  bootstrap over seeds (each arm's seeds resampled independently, the whole statistic recomputed); a
  resample in which the arm never reaches the target counts as an infinite ratio.
- `mean_ci` / `difference_ci`: Student-t intervals of a seed mean and Welch intervals of a difference of two
  seed means (few seeds: a percentile bootstrap of a mean would be too narrow).
- `drop`: a run's largest fall from its own running peak; `collapse_test`: two cells' collapse counts compared
  with Fisher's exact test; `largest_gap`: where two seed-mean curves are furthest apart; `equivalence`: an
  interval against a +-margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from sfpo_rl.trainer.learning_curve import Curve


def reach(xs: Sequence[float], accs: Sequence[float], target: float) -> float | None:
    """The first x at which the piecewise-linear curve through (xs, accs) reaches `target` (None: never)."""
    if accs[0] >= target:
        return float(xs[0])
    for x0, x1, a0, a1 in zip(xs, xs[1:], accs, accs[1:]):
        if a1 >= target:  # a0 < target <= a1
            return float(x0 + (target - a0) / (a1 - a0) * (x1 - x0))
    return None


def mean_curve(curves: Sequence[Curve], axis: str = "rollouts") -> tuple[np.ndarray, np.ndarray]:
    """(x, seed-mean accuracy) at each validation step; x is the seeds' mean of `axis` there."""
    steps = curves[0].steps
    if any(c.steps != steps for c in curves):
        raise ValueError("the runs of a cell must validate at the same steps (an unfinished run?)")
    return (
        np.mean([c.axis(axis) for c in curves], axis=0),
        np.mean([c.acc for c in curves], axis=0),
    )


def reach_ratio(baseline: Sequence[Curve], arm: Sequence[Curve], axis: str = "rollouts") -> float | None:
    """`arm`'s cost to first reach `baseline`'s best seed-mean accuracy over `baseline`'s own cost to reach it
    (None: the arm never reaches it; NaN: the baseline is best before spending anything)."""
    base_x, base_acc = mean_curve(baseline, axis)
    target = float(base_acc.max())
    base_cost = reach(base_x, base_acc, target)
    arm_cost = reach(*mean_curve(arm, axis), target)
    if arm_cost is None:
        return None
    return arm_cost / base_cost if base_cost > 0 else math.nan


@dataclass(frozen=True)
class Interval:
    estimate: float | None  # None: never reached (a ratio)
    low: float
    high: float
    never: float = 0.0  # fraction of bootstrap resamples in which the arm never reached the target


def bootstrap_reach_ratio(
    baseline: Sequence[Curve],
    arm: Sequence[Curve],
    axis: str = "rollouts",
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    estimate = reach_ratio(baseline, arm, axis)
    if min(len(baseline), len(arm)) < 2:  # nothing to resample: no interval is claimed
        return Interval(estimate, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(resamples):
        base = [baseline[i] for i in rng.integers(len(baseline), size=len(baseline))]
        other = [arm[i] for i in rng.integers(len(arm), size=len(arm))]
        ratio = reach_ratio(base, other, axis)
        ratios.append(math.inf if ratio is None else ratio)
    ratios = np.array([r for r in ratios if not math.isnan(r)])
    tail = (1 - confidence) / 2
    low, high = (
        np.quantile(ratios, [tail, 1 - tail], method="inverted_cdf") if len(ratios) else (math.nan, math.nan)
    )
    never = float(np.mean(np.isinf(ratios))) if len(ratios) else math.nan
    return Interval(estimate, float(low), float(high), never)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean with its Student-t interval (a single value: an interval of zero width is not claimed, NaN)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan)
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half)


def difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean(a) - mean(b) with Welch's interval (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * se
    return Interval(diff, diff - half, diff + half)


def best_acc(curve: Curve) -> float:
    return max(curve.acc)


def final_acc(curve: Curve) -> float:
    return curve.acc[-1]


def best_mean_acc(curves: Sequence[Curve]) -> float:
    """The peak of the seed-mean curve: how an arm's learning rates are ranked (see PROTOCOL.md)."""
    return float(mean_curve(curves)[1].max())


def drop(accs: Sequence[float]) -> float:
    """The largest fall from the running peak, max over t of (max(acc[0..t]) - acc[t])."""
    peak, worst = -math.inf, 0.0
    for acc in accs:
        peak = max(peak, acc)
        worst = max(worst, peak - acc)
    return worst


@dataclass(frozen=True)
class CollapseTest:
    collapsed: int
    runs: int
    baseline_collapsed: int
    baseline_runs: int
    p: float  # two-sided Fisher exact test of the 2x2 table (collapsed / not, arm / baseline)


def collapse_test(collapsed: Sequence[bool], baseline_collapsed: Sequence[bool]) -> CollapseTest:
    a, b = sum(collapsed), sum(baseline_collapsed)
    table = [[a, len(collapsed) - a], [b, len(baseline_collapsed) - b]]
    return CollapseTest(
        a, len(collapsed), b, len(baseline_collapsed), float(stats.fisher_exact(table).pvalue)
    )


def largest_gap(arm: Sequence[Curve], baseline: Sequence[Curve]) -> tuple[float, int]:
    """(arm's seed-mean minus the baseline's, at the validation step where its magnitude is largest; that step)."""
    _, arm_acc = mean_curve(arm)
    _, base_acc = mean_curve(baseline)
    if arm[0].steps != baseline[0].steps:
        raise ValueError("the two cells must validate at the same steps")
    gaps = arm_acc - base_acc
    i = int(np.argmax(np.abs(gaps)))
    return float(gaps[i]), arm[0].steps[i]


def equivalence(intervals: Sequence[Interval], margin: float) -> str:
    """A hypothesis that two arms track each other within +-margin: "contradicted" when any interval lies wholly
    outside [-margin, margin], "supported" when every interval lies inside it, "inconclusive" otherwise (and
    when an interval could not be computed)."""
    if any(i.low > margin or i.high < -margin for i in intervals):
        return "contradicted"
    if all(-margin <= i.low and i.high <= margin for i in intervals):
        return "supported"
    return "inconclusive"
