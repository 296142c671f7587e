"""A study's summary (a JSON-able dict) and its markdown report, from its runs.

The cells are (arm, lr) with a curve per seed. Each comparison of the study file compares arms with baselines at
the same lr or at their best lrs (an arm's best lr: the one whose seed-mean curve has the highest peak), on the
endpoints the file lists, and states a verdict by its decision rules: a difference is claimed only when its whole
95% interval (or Fisher's p < 0.05) says so, otherwise "no difference shown". The study's decisions (the lr a
pilot picks, whether a reposition stabilises, an equivalence hypothesis) and notes the tables need (a best lr at
the grid's edge, SFPO's switch-off, an arm that almost reaches its target) follow, then the runs' provenance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from sfpo_rl.experiments.analysis import (
    CollapseTest,
    Interval,
    best_acc,
    best_mean_acc,
    bootstrap_reach_ratio,
    collapse_test,
    difference_ci,
    drop,
    equivalence,
    final_acc,
    largest_gap,
    mean_ci,
    step_means,
    step_values,
)
from sfpo_rl.experiments.records import FINISHED, RunRecord
from sfpo_rl.experiments.study import Comparison, Decision, StepMetric, Study
from sfpo_rl.trainer.learning_curve import PHASES, Curve

Cells = Mapping[tuple[str, str], Mapping[int, Curve]]  # (arm, lr as written) -> seed -> curve
P_THRESHOLD = 0.05


def cells_of(records: Sequence[RunRecord]) -> dict[tuple[str, str], dict[int, Curve]]:
    cells: dict[tuple[str, str], dict[int, Curve]] = {}
    for record in sorted(records, key=lambda r: r.seed):
        cells.setdefault(record.cell, {})[record.seed] = record.curve
    return cells


def _cell_order(cells: Cells) -> list[tuple[str, str]]:
    return sorted(cells, key=lambda cell: (cell[0], float(cell[1])))


# ---------------------------------------------------------------------------------------------- statistics
def run_drop(curve: Curve) -> float:
    """In points."""
    return 100 * drop(curve.acc)


def cell_summary(runs: Mapping[int, Curve], collapse_at: float | None) -> dict[str, Any]:
    curves = list(runs.values())
    summary = {
        "seeds": sorted(runs),
        "start_acc": float(np.mean([c.acc[0] for c in curves])),
        "best_acc": asdict(mean_ci([best_acc(c) for c in curves])),
        "final_acc": asdict(mean_ci([final_acc(c) for c in curves])),
        "best_mean_acc": best_mean_acc(curves),
        "val_se": float(np.nanmean([se for c in curves for se in c.acc_se])),
        "seconds_per_step": {
            phase: float(np.mean([c.phase_seconds[phase] for c in curves])) for phase in PHASES
        },
        "train_seconds": float(np.mean([c.seconds[-1] for c in curves])),
        "switch_steps": {seed: c.switch_step for seed, c in runs.items()},
    }
    if collapse_at is not None:
        drops = [run_drop(c) for c in curves]
        summary["drop_pts"] = asdict(mean_ci(drops))
        summary["collapsed"] = sum(d >= collapse_at for d in drops)
    return summary


def versus(
    baseline: Mapping[int, Curve],
    arm: Mapping[int, Curve],
    endpoints: Sequence[str],
    decide: Sequence[str],
    collapse_at: float | None = None,
) -> dict[str, Any]:
    """`arm` against `baseline` on each endpoint (see study.ENDPOINTS), and the verdict of the decided ones."""
    base, other = list(baseline.values()), list(arm.values())
    results: dict[str, Any] = {}
    for endpoint in endpoints:
        if endpoint == "final":
            results[endpoint] = difference_ci([final_acc(c) for c in other], [final_acc(c) for c in base])
        elif endpoint == "best":
            results[endpoint] = difference_ci([best_acc(c) for c in other], [best_acc(c) for c in base])
        elif endpoint == "drop":
            results[endpoint] = difference_ci(
                [run_drop(c) / 100 for c in other], [run_drop(c) / 100 for c in base]
            )
        elif endpoint == "collapse":
            results[endpoint] = collapse_test(
                [run_drop(c) >= collapse_at for c in other], [run_drop(c) >= collapse_at for c in base]
            )
        elif endpoint in ("rollouts", "seconds"):
            results[endpoint] = bootstrap_reach_ratio(base, other, endpoint)
        elif endpoint == "gap":
            gap, step = largest_gap(other, base)
            results[endpoint] = {"points": 100 * gap, "step": step}
    out = {name: value if isinstance(value, dict) else asdict(value) for name, value in results.items()}
    if decide:
        out["verdict"] = verdict({name: results[name] for name in decide})
    return out


def direction(endpoint: str, result: Any) -> int:
    """+1 when the arm is shown better than its baseline on `endpoint` (the whole 95% interval, or Fisher's p,
    says so), -1 when shown worse, 0 otherwise."""
    if endpoint == "collapse":
        if result.p >= P_THRESHOLD:
            return 0
        less = result.collapsed / result.runs < result.baseline_collapsed / result.baseline_runs
        return 1 if less else -1
    if endpoint in ("rollouts", "seconds"):  # a ratio: below 1 is better
        return 1 if result.high < 1 else -1 if result.low > 1 else 0
    if endpoint == "drop":  # a difference of falls: below 0 is better
        return 1 if result.high < 0 else -1 if result.low > 0 else 0
    return 1 if result.low > 0 else -1 if result.high < 0 else 0  # final / best: a difference of accuracies


PHRASES = {  # endpoint: (shown better, shown worse, not shown)
    "collapse": ("collapses less often", "collapses more often", "collapse rate: no difference shown"),
    "rollouts": ("fewer rollouts", "more rollouts", "rollouts: no difference shown"),
    "drop": ("loses less from its peak", "loses more from its peak", "drop: no difference shown"),
    "final": ("higher final", "lower final", "final: no difference shown"),
    "best": ("higher best", "lower best", "best: no difference shown"),
}


def _phrase(endpoint: str, result: Any) -> str:
    better, worse, neither = PHRASES[endpoint]
    return {1: better, -1: worse, 0: neither}[direction(endpoint, result)]


def verdict(results: Mapping[str, Any]) -> str:
    """The decision rules: a difference is claimed only when its whole 95% interval (or Fisher's p) says so."""
    if any(isinstance(r, Interval) and math.isnan(r.low) for r in results.values()):
        return "too few seeds"
    return "; ".join(_phrase(endpoint, result) for endpoint, result in results.items())


def best_lrs(study: Study, cells: Cells) -> dict[str, str]:
    """Each arm's best lr: the highest peak of its seed-mean curve (ties: the larger lr)."""
    lrs = sorted(study.learning_rates, key=lambda lr: lr.value, reverse=True)
    best = {}
    for arm in study.arms:
        scores = {lr.text: best_mean_acc(list(cells[(arm.name, lr.text)].values())) for lr in lrs
                  if (arm.name, lr.text) in cells}  # fmt: skip
        if scores:
            best[arm.name] = max(scores, key=scores.get)
    return best


def comparison_rows(
    comparison: Comparison, cells: Cells, best: Mapping[str, str], collapse_at: float | None
) -> dict[str, dict[str, Any]]:
    rows = {}
    compare = dict(endpoints=comparison.endpoints, decide=comparison.decide, collapse_at=collapse_at)
    if comparison.kind == "best_lr":
        for arm, base in comparison.pairs:
            if arm in best and base in best:
                rows[arm] = {"baseline": base, "lr": best[arm], "baseline_lr": best[base],
                             **versus(cells[(base, best[base])], cells[(arm, best[arm])], **compare)}  # fmt: skip
        return rows
    for arm, lr in _cell_order(cells):
        for pair_arm, base in comparison.pairs:
            if pair_arm == arm and (base, lr) in cells:
                rows[f"{arm}@{lr}"] = {
                    "baseline": base,
                    "lr": lr,
                    **versus(cells[(base, lr)], cells[(arm, lr)], **compare),
                }
    return rows


def step_metric_cell(metric: StepMetric, runs: Mapping[int, Curve]) -> dict[str, Any]:
    """`metric` over a cell's runs: per window, the mean of the runs' means with its Student-t 95% interval over
    seeds and the largest value any run logged; the steps that meet the metric's count condition (all steps);
    the seed mean at each step. Runs that never logged it are named, not counted."""
    logged = {seed: c for seed, c in runs.items() if step_values(c, metric.metric)}
    curves = list(logged.values())
    windows = []
    for first, last in metric.windows:
        per_run = [step_values(c, metric.metric, first, last) for c in curves]
        per_run = [values for values in per_run if values]
        windows.append({
            "first": first,
            "last": last,
            "mean": asdict(mean_ci([float(np.mean(v)) for v in per_run])) if per_run else None,
            "max": max(max(v) for v in per_run) if per_run else None,
        })  # fmt: skip
    cell: dict[str, Any] = {
        "seeds": sorted(logged),
        "not_logged": sorted(set(runs) - set(logged)),
        "windows": windows,
    }
    if metric.count is not None:
        per_seed = {
            seed: sum(map(metric.count.counts, step_values(c, metric.metric))) for seed, c in logged.items()
        }
        total = sum(len(step_values(c, metric.metric)) for c in curves)
        cell["count"] = {"steps": sum(per_seed.values()), "of": total, "per_seed": per_seed}
    steps, means, _ = step_means(curves, metric.metric)
    cell["per_step"] = {"steps": steps, "mean": means}
    return cell


def step_metric_summaries(study: Study, cells: Cells) -> list[dict[str, Any]]:
    return [
        {
            "name": m.name,
            "metric": m.metric,
            "label": m.label,
            "percent": m.percent,
            "count_label": m.count.label if m.count else None,
            "cells": {
                f"{arm}@{lr}": step_metric_cell(m, cells[(arm, lr)])
                for arm, lr in _cell_order(cells)
                if arm in m.arms
            },
        }  # fmt: skip
        for m in study.step_metrics
    ]


# ---------------------------------------------------------------------------------------------- decisions
def decide(
    decision: Decision, study: Study, records: Sequence[RunRecord], comparisons: Sequence[dict]
) -> dict:
    if decision.rule == "smallest_collapse_lr":
        return _smallest_collapse_lr(decision, study, records)
    comparison = comparisons[decision.comparison]
    rows = comparison["rows"]
    if decision.rule == "stabilises":
        return _stabilises(rows)
    if decision.rule == "improves":
        return _improves(decision, comparison)
    return _equivalence(decision, study, rows)


def _improves(decision: Decision, comparison: Mapping[str, Any]) -> dict[str, Any]:
    """Per row: the claim holds when the arm is shown better on one of the comparison's decided endpoints and
    worse on none; it fails (the counterclaim) when the arm is shown worse on any; otherwise no difference is
    shown."""
    outcomes = {}
    for key, row in comparison["rows"].items():
        results = {
            e: CollapseTest(**row[e]) if e == "collapse" else Interval(**row[e]) for e in comparison["decide"]
        }
        directions = [direction(e, r) for e, r in results.items()]
        outcome = (
            "too few seeds"
            if row["verdict"] == "too few seeds"
            else "fails"
            if -1 in directions
            else "holds"
            if 1 in directions
            else "no difference shown"
        )
        outcomes[key] = {"baseline": row["baseline"], "outcome": outcome, "verdict": row["verdict"]}
    return {
        "rule": "improves",
        "claim": decision.claim,
        "counterclaim": decision.counterclaim,
        "rows": outcomes,
    }


def _smallest_collapse_lr(decision: Decision, study: Study, records: Sequence[RunRecord]) -> dict[str, Any]:
    done = {r.name: r for r in records}
    by_lr, missing, l_star = {}, [], None
    for lr in sorted(study.learning_rates, key=lambda lr: lr.value):
        by_lr[lr.text] = {}
        for arm in decision.arms:
            for seed in range(study.arm(arm).seeds):
                record = done.get(f"{arm}_lr{lr.text}_seed{seed}")
                if record is None:
                    missing.append(f"{arm}_lr{lr.text}_seed{seed}")
                    continue
                by_lr[lr.text].setdefault(arm, []).append(run_drop(record.curve))
        if l_star is None and any(d >= study.collapse_at for drops in by_lr[lr.text].values() for d in drops):
            l_star = lr
    return {
        "rule": decision.rule,
        "arms": list(decision.arms),
        "collapse_at": study.collapse_at,
        "drops_by_lr": by_lr,
        "l_star": None if l_star is None else l_star.text,
        "next_lrs": [] if l_star is None else [f"{l_star.value / d:.3g}" for d in decision.divisors],
        "divisors": list(decision.divisors),
        "missing": missing,
    }


def _stabilises(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """At an lr, an arm stabilises when it collapses less often (Fisher p < 0.05) or loses less from its peak
    (the drop interval below 0) than its baseline, and does not end lower (the final interval not below 0)."""
    cells = {}
    for key, row in rows.items():
        collapse, fell, final = row["collapse"], row["drop"], row["final"]
        fewer = collapse["p"] < P_THRESHOLD and (
            collapse["collapsed"] / collapse["runs"]
            < collapse["baseline_collapsed"] / collapse["baseline_runs"]
        )
        less_drop = fell["high"] < 0
        lower = final["high"] < 0
        cells[key] = {"baseline": row["baseline"], "collapses_less": fewer, "loses_less": less_drop,
                      "ends_lower": lower, "stabilises": (fewer or less_drop) and not lower}  # fmt: skip
    return {
        "rule": "stabilises",
        "cells": cells,
        "shown_at": [k for k, c in cells.items() if c["stabilises"]],
    }


def _equivalence(decision: Decision, study: Study, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    pairs = {}
    for key, row in rows.items():
        arm = key.rsplit("@", 1)[0]
        pairs.setdefault((arm, row["baseline"]), {})[row["lr"]] = row["final"]
    margin = decision.margin / 100
    results = {}
    for (arm, base), finals in pairs.items():
        outcome = equivalence([Interval(**i) for i in finals.values()], margin)
        missing = [lr.text for lr in study.learning_rates if lr.text not in finals]
        if missing and outcome == "supported":
            outcome = "inconclusive"
        results[f"{arm} vs {base}"] = {"outcome": outcome, "lrs": list(finals), "missing_lrs": missing}
    return {"rule": "equivalence", "margin_pts": decision.margin, "pairs": results}


# ---------------------------------------------------------------------------------------------- notes
def notes(study: Study, records: Sequence[RunRecord], cells: Cells, summary: Mapping[str, Any]) -> list[str]:
    """What a reader of the tables must know that the tables do not say by themselves."""
    found = []
    if len(study.learning_rates) > 1 and any(c.kind == "best_lr" for c in study.comparisons):
        found += _grid_edges(study, summary["best_lr"])
    for (arm, lr), runs in ((cell, cells[cell]) for cell in _cell_order(cells)):
        found += _switch_off(study.arm(arm).label, arm, lr, runs)
    for comparison in summary["comparisons"]:
        for key, row in comparison["rows"].items():
            if "rollouts" in row:
                found += _almost_reached(key, row, cells)
    halted = [r.name for r in records if r.status != FINISHED]
    if halted:
        found.append(
            f"Stopped for non-finite training (counted as having lost everything: accuracy 0 from the stop on, "
            f"drop = peak): {', '.join(halted)}."
        )
    if study.shared_machine:
        found.append(
            "Wall-clock: other work shared the machine while these runs trained, so the seconds columns and the "
            "wall-clock figure are reported, not decided on."
        )
    return found + list(study.notes)


def _grid_edges(study: Study, best: Mapping[str, str]) -> list[str]:
    ordered = sorted(study.learning_rates, key=lambda lr: lr.value)
    found = []
    for edge, word, beyond in ((ordered[-1], "largest", "larger"), (ordered[0], "smallest", "smaller")):
        arms = [arm for arm, lr in best.items() if lr == edge.text]
        if arms:
            who = (
                "Every arm's best lr is" if len(arms) == len(best) else f"The best lr of {', '.join(arms)} is"
            )
            found.append(
                f"{who} the grid's {word}, {edge.text}: the edge of the grid, not a best lr located inside it (no "
                f'{beyond} lr was run), so "at its best lr" means "at the grid\'s edge".'
            )
    return found


def _switch_off(label: str, arm: str, lr: str, runs: Mapping[int, Curve]) -> list[str]:
    switched = {seed: c for seed, c in runs.items() if c.switch_step is not None}
    if not switched:
        return []
    first = min(c.switch_step for c in switched.values())
    curve = next(iter(runs.values()))
    before = max(i for i, step in enumerate(curve.steps) if step < first)

    def gain(curves: Sequence[Curve]) -> float:
        return 100 * float(np.mean([c.acc[-1] - c.acc[before] for c in curves]))

    others = [c for seed, c in runs.items() if seed not in switched]
    steps = ", ".join(str(c.switch_step) for c in switched.values())
    text = (
        f"{arm} ({label}) at lr {lr}: SFPO's entropy switch-off fired in {len(switched)} of {len(runs)} runs "
        f"(steps {steps}); from then on those runs trained as plain GRPO. From step {curve.steps[before]} to the "
        f"end they gained {gain(list(switched.values())):+.1f} points on average"
    )
    return [text + (f", the other runs {gain(others):+.1f}." if others else ".")]


def _almost_reached(key: str, row: Mapping[str, Any], cells: Cells) -> list[str]:
    ratio = row["rollouts"]
    if ratio["estimate"] is not None or not 0 < ratio["never"] < 1:
        return []
    arm, lr = key.rsplit("@", 1) if "@" in key else (key, row["lr"])
    base_lr = row.get("baseline_lr", row["lr"])
    target = best_mean_acc(list(cells[(row["baseline"], base_lr)].values()))
    peak = best_mean_acc(list(cells[(arm, lr)].values()))
    return [
        f"{key} against {row['baseline']}: the arm's seed-mean curve peaks {100 * (target - peak):.2f} points below "
        f"the target ({row['baseline']}'s best seed-mean accuracy, {100 * target:.1f}%), so the ratio's estimate is "
        f'"never"; {100 * (1 - ratio["never"]):.0f}% of the bootstrap resamples do reach it.'
    ]


# ---------------------------------------------------------------------------------------------- provenance
def provenance(records: Sequence[RunRecord], warnings: Sequence[str]) -> dict[str, Any]:
    launches = [launch for r in records for launch in r.launches]
    commits: dict[str, int] = {}
    for r in records:
        for commit in {launch.get("commit") for launch in r.launches} or {None}:
            commits[commit or "not recorded"] = commits.get(commit or "not recorded", 0) + 1

    def distinct(key: str) -> list[Any]:
        values = []
        for launch in launches:
            if launch.get(key) is not None and launch[key] not in values:
                values.append(launch[key])
        return values

    return {
        "runs": len(records),
        "commits": commits,
        "dirty_runs": sorted(r.name for r in records if any(launch.get("dirty") for launch in r.launches)),
        "reconstructed_runs": sum(any("reconstructed" in launch for launch in r.launches) for r in records),
        "unrecorded_runs": sum(not r.launches for r in records),
        "weights_sha256": distinct("weights_sha256"),
        "hosts": distinct("host"),
        "versions": distinct("versions"),
        "warnings": list(warnings),
    }


# ---------------------------------------------------------------------------------------------- summary
def summarize(study: Study, records: Sequence[RunRecord], warnings: Sequence[str] = ()) -> dict[str, Any]:
    cells = cells_of(records)
    summary: dict[str, Any] = {"cells": {}, "comparisons": []}
    for arm, lr in _cell_order(cells):
        summary["cells"][f"{arm}@{lr}"] = {
            "arm": arm,
            "lr": lr,
            **cell_summary(cells[(arm, lr)], study.collapse_at),
        }
    if study.collapse_at is not None:
        summary["runs"] = {
            r.name: {
                "arm": r.arm,
                "lr": r.lr,
                "seed": r.seed,
                "status": r.status,
                "peak": 100 * max(r.curve.acc),
                "final": 100 * r.curve.acc[-1],
                "drop": run_drop(r.curve),
                "train_seconds": r.curve.seconds[-1],
                "collapsed": run_drop(r.curve) >= study.collapse_at,
            }  # fmt: skip
            for r in sorted(records, key=lambda r: (r.arm, float(r.lr), r.seed))
        }
    summary["best_lr"] = best_lrs(study, cells)
    for comparison in study.comparisons:
        summary["comparisons"].append(
            {
                "title": comparison.title,
                "kind": comparison.kind,
                "label": comparison.label,
                "baselines": sorted({base for _, base in comparison.pairs}),
                "endpoints": list(comparison.endpoints),
                "decide": list(comparison.decide),
                "rows": comparison_rows(comparison, cells, summary["best_lr"], study.collapse_at),
            }  # fmt: skip
        )
    summary["decisions"] = [decide(d, study, records, summary["comparisons"]) for d in study.decisions]
    if study.step_metrics:
        summary["step_metrics"] = step_metric_summaries(study, cells)
    summary["notes"] = notes(study, records, cells, summary)
    summary["provenance"] = provenance(records, warnings)
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


def _endpoint_cell(endpoint: str, value: Mapping[str, Any]) -> str:
    if endpoint in ("final", "best", "drop"):
        return _diff_ci(value)
    if endpoint in ("rollouts", "seconds"):
        return _ratio_ci(value)
    if endpoint == "collapse":
        return f"{value['collapsed']}/{value['runs']} vs {value['baseline_collapsed']}/{value['baseline_runs']}, p={value['p']:.3g}"
    return f"{value['points']:+.1f} at step {value['step']}"


def _endpoint_header(endpoint: str, label: str, previous: str | None) -> str:
    return {
        "final": "final acc diff (pts)",
        "best": "best acc diff (pts)",
        "drop": "drop diff (pts)",
        "collapse": f"collapsed (arm vs {label}; Fisher p)",
        "rollouts": f"rollouts to {label}'s best (ratio)",
        "seconds": "training seconds to it (ratio)"
        if previous == "rollouts"
        else f"training seconds to {label}'s best (ratio)",
        "gap": "largest gap of the seed-mean curves (pts)",
    }[endpoint]


def _versus_rows(comparison: Mapping[str, Any]) -> list[str]:
    endpoints, label = comparison["endpoints"], comparison["label"]
    headers = [
        ("vs " + label + ": " if i == 0 else "") + _endpoint_header(e, label, endpoints[i - 1] if i else None)
        for i, e in enumerate(endpoints)
    ]
    if comparison["decide"]:
        headers.append("verdict (protocol rules)")
    lines = ["| arm @ lr | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    several = len(comparison["baselines"]) > 1
    for key, row in comparison["rows"].items():
        name = f"{key} (vs {row['baseline']})" if several else key
        values = [_endpoint_cell(e, row[e]) for e in endpoints]
        if comparison["decide"]:
            values.append(row["verdict"])
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return lines


def _cells_table(summary: Mapping[str, Any], collapse_at: float | None) -> list[str]:
    extra = collapse_at is not None
    lines = [
        "| arm | lr | seeds | start | best | final | peak of mean curve | s/step (generate / update / sync) "
        "| switch-off steps |" + (" drop (pts) | collapsed |" if extra else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if extra else ""),
    ]
    for c in summary["cells"].values():
        t = c["seconds_per_step"]
        switches = [s for s in c["switch_steps"].values() if s is not None]
        row = (
            f"| {c['arm']} | {c['lr']} | {len(c['seeds'])} | {_pct(c['start_acc'])} | {_acc_ci(c['best_acc'])} | "
            f"{_acc_ci(c['final_acc'])} | {_pct(c['best_mean_acc'])} | {sum(t.values()):.2f} "
            f"({t['generate']:.2f} / {t['update']:.2f} / {t['sync']:.2f}) | "
            f"{', '.join(map(str, switches)) or '-'} |"
        )
        if extra:
            d = c["drop_pts"]
            drop_text = f"{d['estimate']:.1f}" + (
                "" if math.isnan(d["low"]) else f" [{d['low']:.1f}, {d['high']:.1f}]"
            )
            row += f" {drop_text} | {c['collapsed']}/{len(c['seeds'])} |"
        lines.append(row)
    return lines


def _runs_table(summary: Mapping[str, Any], collapse_at: float) -> list[str]:
    lines = [
        "",
        f"### Runs: peak, final, drop (largest fall from the running peak, points); collapsed: drop >= {collapse_at:g}",
        "",
        "| run | peak | final | drop | collapsed | training wall-clock (min) | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["runs"].items():
        lines.append(
            f"| {name} | {r['peak']:.1f} | {r['final']:.1f} | {r['drop']:.1f} | {'yes' if r['collapsed'] else 'no'} "
            f"| {r['train_seconds'] / 60:.1f} | {r['status']} |"
        )
    return lines


def _decision_lines(decision: Mapping[str, Any]) -> list[str]:
    if decision["rule"] == "smallest_collapse_lr":
        arms = " or ".join(decision["arms"])
        lines = [
            f"- L* = the smallest lr at which {arms} has drop >= {decision['collapse_at']:g} points. Drops by lr: "
            + "; ".join(
                f"{lr}: "
                + ", ".join(f"{arm} " + "/".join(f"{d:.1f}" for d in drops) for arm, drops in arms_.items())
                for lr, arms_ in decision["drops_by_lr"].items()
                if arms_
            )
            + "."
        ]
        if decision["l_star"] is None:
            lines.append(f"- **No run of {arms} collapsed at any lr of this grid: L* is not defined by it.**")
        else:
            nexts = " and ".join(
                ("L*" if d == 1 else f"L*/{d:g}") + f" = {lr}"
                for d, lr in zip(decision["divisors"], decision["next_lrs"])
            )
            lines.append(f"- **L* = {decision['l_star']}**; the next stage runs at {nexts}.")
        if decision["missing"]:
            lines.append(f"- Provisional: not finished yet: {', '.join(decision['missing'])}.")
        return lines
    if decision["rule"] == "stabilises":
        lines = []
        for key, c in decision["cells"].items():
            why = [w for w, on in (("collapses less often", c["collapses_less"]),
                                  ("loses less from its peak", c["loses_less"])) if on]  # fmt: skip
            lines.append(
                f"- {key} against {c['baseline']}: "
                + (
                    "**stabilises** (" + " and ".join(why) + ", does not end lower)"
                    if c["stabilises"]
                    else "not shown to stabilise" + (" (ends lower)" if c["ends_lower"] else "")
                )  # fmt: skip
            )
        # Several stabilises decisions (one per comparison) must say which baselines each is against.
        against = ", ".join(dict.fromkeys(c["baseline"] for c in decision["cells"].values()))
        shown = [f"{key} (against {decision['cells'][key]['baseline']})" for key in decision["shown_at"]]
        lines.append(
            f"- **The reposition is shown to stabilise aggressive steps at: {', '.join(shown)}.**"
            if shown
            else "- **This study did not show that the reposition stabilises aggressive steps at any lr"
            + (f" (against {against})" if against else "")
            + ".**"
        )
        return lines
    if decision["rule"] == "improves":
        said = {"holds": decision["claim"], "fails": decision["counterclaim"]}
        return [
            f"- {key} against {r['baseline']}: **{said.get(r['outcome'], r['outcome'])}** ({r['verdict']})"
            for key, r in decision["rows"].items()
        ]
    return [
        f"- {pair}: **{r['outcome']}** (final-accuracy interval against +-{decision['margin_pts']:g} points at lr "
        f"{', '.join(r['lrs']) or 'none'}"
        + (f"; not finished: lr {', '.join(r['missing_lrs'])}" if r["missing_lrs"] else "")
        + ")"
        for pair, r in decision["pairs"].items()
    ]


def _step_metric_lines(metric: Mapping[str, Any]) -> list[str]:
    """One table per step metric: each cell's window means [95% t over seeds] and maxima, and its count."""
    scale, unit = (100, "%") if metric["percent"] else (1, "")

    def value(x: float | None) -> str:
        return "n/a" if x is None or math.isnan(x) else f"{scale * x:.{1 if metric['percent'] else 2}f}{unit}"

    def mean(i: Mapping[str, Any] | None) -> str:
        if i is None:
            return "n/a"
        return value(i["estimate"]) + (
            "" if math.isnan(i["low"]) else f" [{value(i['low'])}, {value(i['high'])}]"
        )

    cells = metric["cells"]
    if not cells:
        return []
    windows = next(iter(cells.values()))["windows"]
    headers = [h for w in windows for h in (f"steps {w['first']}-{w['last']}: mean [95% t]", "max")]
    if metric["count_label"]:
        headers.append(f"{metric['count_label']} (per seed)")
    lines = [
        "",
        f"### Per step: {metric['label']} (`{metric['metric']}`; descriptive, no decision)",
        "",
        "| arm @ lr | seeds | " + " | ".join(headers) + " |",
        "|---" * (len(headers) + 2) + "|",
    ]
    for key, cell in cells.items():
        values = [x for w in cell["windows"] for x in (mean(w["mean"]), value(w["max"]))]
        if metric["count_label"]:
            c = cell["count"]
            values.append(f"{c['steps']} of {c['of']} ({'/'.join(str(n) for n in c['per_seed'].values())})")
        seeds = str(len(cell["seeds"])) + (
            f" (not logged by seed {', '.join(map(str, cell['not_logged']))})" if cell["not_logged"] else ""
        )
        lines.append(f"| {key} | {seeds} | " + " | ".join(values) + " |")
    return lines


def _provenance_lines(study: Study, summary: Mapping[str, Any], records: Sequence[RunRecord]) -> list[str]:
    p = summary["provenance"]
    lines = ["", "### Runs: provenance, wall-clock and load", ""]
    commits = "; ".join(f"{commit[:12]} ({n} runs)" for commit, n in p["commits"].items())
    lines.append(f"- {p['runs']} runs. Commit: {commits}.")
    if p["reconstructed_runs"]:
        example = next(launch for r in records for launch in r.launches if "reconstructed" in launch)
        lines.append(
            f"- The provenance of {p['reconstructed_runs']} runs was reconstructed {example['reconstructed']}."
        )
    if p["unrecorded_runs"]:
        lines.append(f"- No provenance recorded for {p['unrecorded_runs']} runs.")
    if p["dirty_runs"]:
        lines.append(f"- Trained from a checkout with uncommitted changes: {', '.join(p['dirty_runs'])}.")
    lines.append(
        f"- Starting weights (sha256): {', '.join(w[:16] for w in p['weights_sha256']) or 'not recorded'}."
    )
    lines.append(f"- Hosts: {', '.join(p['hosts']) or 'not recorded'}.")
    versions = "; ".join(", ".join(f"{k} {v}" for k, v in v.items()) for v in p["versions"])
    lines.append(f"- Versions: {versions or 'not recorded'}.")
    lines += [f"- **{w}**" for w in p["warnings"]]
    if not any(r.wall_clock_s is not None or r.load_avg_1m for r in records):
        return lines + ["- Wall-clock and load average: not recorded for these runs."]
    lines += [
        "",
        "| arm | lr | runs | wall-clock per run, min (mean; first start to finish) | launches | load average 1 min "
        "(mean / max) |",
        "|---|---|---|---|---|---|",
    ]
    by_cell: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        by_cell.setdefault(r.cell, []).append(r)
    for arm, lr in _cell_order(by_cell):
        runs = sorted(by_cell[(arm, lr)], key=lambda r: r.seed)
        walls = [r.wall_clock_s for r in runs if r.wall_clock_s is not None]
        loads = [r.load_avg_1m for r in runs if r.load_avg_1m]
        cores = {launch.get("cpu_count") for r in runs for launch in r.launches} - {None}
        wall = "not recorded"
        if walls:
            wall = f"{np.mean(walls) / 60:.1f}" + (
                f" ({len(walls)} of {len(runs)})" if len(walls) < len(runs) else ""
            )
        load = "not recorded"
        if loads:
            load = f"{np.mean([x['mean'] for x in loads]):.1f} / {max(x['max'] for x in loads):.1f}"
            load += f" on {', '.join(map(str, sorted(cores)))} cores" if cores else ""
        launches = "/".join(str(_launches(r)) for r in runs)
        lines.append(f"| {arm} | {lr} | {len(runs)} | {wall} | {launches} | {load} |")
    return lines


def _launches(record: RunRecord) -> str:
    recorded = [launch for launch in record.launches if "reconstructed" not in launch]
    return str(len(recorded)) if recorded else "?"


def markdown(study: Study, summary: Mapping[str, Any], records: Sequence[RunRecord]) -> str:
    lines = [
        "Accuracy in percent: mean over seeds [95% Student-t interval]; differences: Welch 95% interval; ratios:"
        " the arm's cost to first reach the baseline's best seed-mean accuracy over the baseline's own cost"
        " (< 1: the arm needs less), [95% bootstrap interval over seeds].",
        "",
        *_cells_table(summary, study.collapse_at),
    ]
    if study.collapse_at is not None:
        lines += _runs_table(summary, study.collapse_at)
    for comparison in summary["comparisons"]:
        lines += ["", f"### {comparison['title']}", ""]
        if comparison["kind"] == "best_lr":
            lines += [
                "Best learning rates (peak of the seed-mean curve): "
                + ", ".join(f"{arm} {lr}" for arm, lr in summary["best_lr"].items()),
                "",
            ]
        lines += _versus_rows(comparison)
    if summary["decisions"]:
        lines += ["", "### Decisions (the protocol's rules)", ""]
        for decision in summary["decisions"]:
            lines += _decision_lines(decision)
    for metric in summary.get("step_metrics", []):
        lines += _step_metric_lines(metric)
    lines += [
        "",
        "### Arms",
        "",
        "| arm | label (figures, README) | overrides | seeds |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a.name} | {a.label} | `{' '.join(a.overrides)}` | {a.seeds} |" for a in study.arms]
    lines.append("")
    lines.append(f"Every run: `{' '.join(study.overrides)}` " if study.overrides else "Every run: ")
    lines[-1] += (
        f"`actor.optimizer.lr=<lr> trainer.seed=<seed> data.seed=<seed> trainer.total_steps={study.steps}`."
    )
    if summary["notes"]:
        lines += ["", "### Notes the tables need", ""] + [f"- {note}" for note in summary["notes"]]
    lines += _provenance_lines(study, summary, records)
    protocol = f"; protocol: {study.protocol}" if study.protocol else ""
    lines += ["", f'Generated by `sfpo-rl-study {study.shown_path}` ("{study.name}"{protocol}).']
    return "\n".join(lines) + "\n"
