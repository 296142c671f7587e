"""The study's summary (a JSON-able dict) and its markdown tables, from the runs' curves.

`cells[(arm, lr)][seed]` holds one `Curve` per finished run. Arms are compared with GRPO at the same learning
rate, SFPO also with its compute-matched GRPO (as many optimizer steps per batch), and every arm at its own
best learning rate against GRPO at its best (each arm's lr ranked by the peak of its seed-mean curve).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from sfpo_rl.experiments.analysis import (
    Interval,
    best_acc,
    best_mean_acc,
    bootstrap_reach_ratio,
    difference_ci,
    final_acc,
    mean_ci,
)
from sfpo_rl.experiments.study import ARMS_BY_NAME, BASELINE
from sfpo_rl.trainer.learning_curve import PHASES, Curve

Cells = Mapping[tuple[str, float], Mapping[int, Curve]]


def _interval(i: Interval) -> dict[str, Any]:
    return asdict(i)


def cell_summary(runs: Mapping[int, Curve]) -> dict[str, Any]:
    curves = list(runs.values())
    return {
        "seeds": sorted(runs),
        "start_acc": float(np.mean([c.acc[0] for c in curves])),
        "best_acc": _interval(mean_ci([best_acc(c) for c in curves])),
        "final_acc": _interval(mean_ci([final_acc(c) for c in curves])),
        "best_mean_acc": best_mean_acc(curves),
        "val_se": float(np.nanmean([se for c in curves for se in c.acc_se])),
        "seconds_per_step": {
            phase: float(np.mean([c.phase_seconds[phase] for c in curves])) for phase in PHASES
        },
        "train_seconds": float(np.mean([c.seconds[-1] for c in curves])),
        "switch_steps": {seed: c.switch_step for seed, c in runs.items()},
    }


def versus(baseline: Mapping[int, Curve], arm: Mapping[int, Curve]) -> dict[str, Any]:
    """`arm` against `baseline`: final and best accuracy differences, and the cost ratios to reach the
    baseline's best seed-mean accuracy in rollouts and in training seconds."""
    base, other = list(baseline.values()), list(arm.values())
    final = difference_ci([final_acc(c) for c in other], [final_acc(c) for c in base])
    rollouts = bootstrap_reach_ratio(base, other, "rollouts")
    return {
        "final_acc_diff": _interval(final),
        "best_acc_diff": _interval(difference_ci([best_acc(c) for c in other], [best_acc(c) for c in base])),
        "rollouts_ratio": _interval(rollouts),
        "seconds_ratio": _interval(bootstrap_reach_ratio(base, other, "seconds")),
        "verdict": verdict(rollouts, final),
    }


def verdict(rollouts: Interval, final: Interval) -> str:
    """The protocol's decision rules: a difference is claimed only when its whole 95% interval says so."""
    if math.isnan(rollouts.low) or math.isnan(final.low):
        return "too few seeds"
    if rollouts.high < 1:
        speed = "fewer rollouts"
    elif rollouts.low > 1:
        speed = "more rollouts"
    else:
        speed = "rollouts: no difference shown"
    end = (
        "higher final" if final.low > 0 else "lower final" if final.high < 0 else "final: no difference shown"
    )
    return f"{speed}; {end}"


def best_lrs(cells: Cells) -> dict[str, float]:
    by_arm: dict[str, dict[float, float]] = {}
    for (arm, lr), runs in cells.items():
        by_arm.setdefault(arm, {})[lr] = best_mean_acc(list(runs.values()))
    return {arm: max(scores, key=scores.get) for arm, scores in by_arm.items()}


def summarize(cells: Cells) -> dict[str, Any]:
    summary: dict[str, Any] = {"cells": {}, "versus_grpo": {}, "versus_matched": {}, "best_lr": {}}
    for (arm, lr), runs in sorted(cells.items()):
        key = f"{arm}@{lr:g}"
        summary["cells"][key] = {"arm": arm, "lr": lr, **cell_summary(runs)}
        if arm != BASELINE and (BASELINE, lr) in cells:
            summary["versus_grpo"][key] = versus(cells[(BASELINE, lr)], runs)
        matched = ARMS_BY_NAME[arm].matched_to if arm in ARMS_BY_NAME else None
        if matched and (matched, lr) in cells:
            summary["versus_matched"][key] = {"matched_to": matched, **versus(cells[(matched, lr)], runs)}
    lrs = best_lrs(cells)
    summary["best_lr"] = {"lr": lrs, "versus_grpo": {}}
    if BASELINE in lrs:
        base = cells[(BASELINE, lrs[BASELINE])]
        for arm, lr in lrs.items():
            if arm != BASELINE:
                summary["best_lr"]["versus_grpo"][arm] = versus(base, cells[(arm, lr)])
    return summary


# ---------------------------------------------------------------------------------------------- markdown
def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _acc_ci(i: Mapping[str, Any]) -> str:
    if math.isnan(i["low"]):
        return f"{_pct(i['estimate'])}"
    return f"{_pct(i['estimate'])} [{_pct(i['low'])}, {_pct(i['high'])}]"


def _diff_ci(i: Mapping[str, Any]) -> str:
    if math.isnan(i["low"]):
        return f"{100 * i['estimate']:+.1f}"
    return f"{100 * i['estimate']:+.1f} [{100 * i['low']:+.1f}, {100 * i['high']:+.1f}]"


def _ratio(value: float) -> str:
    return "never" if math.isinf(value) else "n/a" if math.isnan(value) else f"{value:.2f}"


def _ratio_ci(i: Mapping[str, Any]) -> str:
    estimate = "never" if i["estimate"] is None else _ratio(i["estimate"])
    if math.isnan(i["low"]):
        return estimate
    never = f"; never in {100 * i['never']:.0f}% of resamples" if i["never"] else ""
    return f"{estimate} [{_ratio(i['low'])}, {_ratio(i['high'])}]{never}"


def _versus_rows(rows: Mapping[str, Mapping[str, Any]], label: str) -> list[str]:
    lines = [
        f"| arm @ lr | vs {label}: final acc diff (pts) | best acc diff (pts) | rollouts to {label}'s best "
        "(ratio) | training seconds to it (ratio) | verdict (protocol rules) |",
        "|---|---|---|---|---|---|",
    ]
    for key, v in rows.items():
        name = f"{key} (vs {v['matched_to']})" if "matched_to" in v else key
        lines.append(
            f"| {name} | {_diff_ci(v['final_acc_diff'])} | {_diff_ci(v['best_acc_diff'])} | "
            f"{_ratio_ci(v['rollouts_ratio'])} | {_ratio_ci(v['seconds_ratio'])} | {v['verdict']} |"
        )
    return lines


def markdown(summary: Mapping[str, Any]) -> str:
    lines = [
        "Accuracy in percent: mean over seeds [95% Student-t interval]; differences: Welch 95% interval; ratios:"
        " the arm's cost to first reach the baseline's best seed-mean accuracy over the baseline's own cost"
        " (< 1: the arm needs less), [95% bootstrap interval over seeds].",
        "",
        "| arm | lr | seeds | start | best | final | peak of mean curve | s/step (generate / update / sync) "
        "| switch-off steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"].values():
        t = c["seconds_per_step"]
        switches = [s for s in c["switch_steps"].values() if s is not None]
        lines.append(
            f"| {c['arm']} | {c['lr']:g} | {len(c['seeds'])} | {_pct(c['start_acc'])} | {_acc_ci(c['best_acc'])} | "
            f"{_acc_ci(c['final_acc'])} | {_pct(c['best_mean_acc'])} | {sum(t.values()):.2f} "
            f"({t['generate']:.2f} / {t['update']:.2f} / {t['sync']:.2f}) | "
            f"{', '.join(map(str, switches)) or '-'} |"
        )
    lines += [
        "",
        "### Against GRPO at the same learning rate",
        "",
        *_versus_rows(summary["versus_grpo"], "GRPO"),
    ]
    lines += [
        "",
        "### Against GRPO with as many optimizer steps per batch (compute-matched)",
        "",
        *_versus_rows(summary["versus_matched"], "matched GRPO"),
    ]
    best = summary["best_lr"]
    lines += [
        "",
        "### Each arm at its best learning rate against GRPO at its best",
        "",
        "Best learning rates (peak of the seed-mean curve): "
        + ", ".join(f"{arm} {lr:g}" for arm, lr in best["lr"].items()),
        "",
        *_versus_rows(best["versus_grpo"], "GRPO"),
    ]
    return "\n".join(lines) + "\n"
