"""A study's figures: validation accuracy against rollouts and against training wall-clock, one column per learning
rate. Each arm (its label from the study file) is drawn as its seed mean with a 95% Student-t band of the mean and
every seed's own curve faint behind it. The bottom row zooms into the last third of the budget with its own
y-limits, so differences of a point near the ceiling stay visible. The wall-clock figure carries a warning about
the machine's load. `best_lr.png` (each arm at its best lr) is drawn only when the arms' best lrs differ:
otherwise it would repeat one column. A step metric the study asks to plot gets `per_step_<name>.png`: its seed
mean against the training step, with the same band and faint seeds, one column per learning rate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from sfpo_rl.experiments.analysis import mean_curve, step_means
from sfpo_rl.experiments.records import RunRecord
from sfpo_rl.experiments.report import Cells, cells_of
from sfpo_rl.experiments.study import StepMetric, Study
from sfpo_rl.trainer.learning_curve import Curve

AXES = {"rollouts": "rollouts (samples generated)", "seconds": "training wall-clock (s)"}
BEST_LR_FILE = "best_lr.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, curves: Sequence[Curve], axis: str, label: str, color: str) -> tuple[float, list[float]]:
    """Seed mean, 95% band and faint seeds on `ax`. Returns where the last third of the validation points begins
    on the x axis and the y values drawn from there on (the zoom's limits)."""
    x, mean = mean_curve(curves, axis)
    tail = slice((2 * len(x)) // 3, None)
    shown = list(100 * mean[tail])
    for c in curves:
        ax.plot(c.axis(axis), 100 * np.asarray(c.acc), color=color, alpha=0.25, linewidth=0.8)
        shown += list(100 * np.asarray(c.acc)[tail])
    ax.plot(
        x,
        100 * mean,
        color=color,
        marker=".",
        linewidth=1.8,
        label=f"{label} ({len(curves)} seed{'' if len(curves) == 1 else 's'})",
    )
    if len(curves) > 1:
        half = stats.t.ppf(0.975, len(curves) - 1) * np.std([c.acc for c in curves], axis=0, ddof=1)
        low, high = 100 * (mean - half / np.sqrt(len(curves))), 100 * (mean + half / np.sqrt(len(curves)))
        ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)
        shown += list(low[tail]) + list(high[tail])
    return float(x[tail][0]), shown


def _load_warning(study: Study, records: Sequence[RunRecord]) -> str:
    loads = [r.load_avg_1m for r in records if r.load_avg_1m]
    cores = {launch.get("cpu_count") for r in records for launch in r.launches} - {None}
    recorded = (
        f"recorded 1-min load average: mean {np.mean([x['mean'] for x in loads]):.1f}, max "
        f"{max(x['max'] for x in loads):.1f}"
        + (f" on {'/'.join(map(str, sorted(cores)))} cores" if cores else "")
        if loads
        else "load not recorded"
    )
    shared = "other work shared the machine while these runs trained; " if study.shared_machine else ""
    return f"Warning: wall-clock depends on the machine's load: {shared}{recorded}. Reported, not decided on."


def plot_study(
    study: Study, records: Sequence[RunRecord], best_lr: Mapping[str, str], out_dir: Path
) -> list[Path]:
    plt = _pyplot()
    cells = cells_of(records)
    arms = [arm for arm in study.arms if any(cell[0] == arm.name for cell in cells)]
    colors = {arm.name: f"C{i}" for i, arm in enumerate(study.arms)}
    lrs = [
        lr
        for lr in sorted(study.learning_rates, key=lambda lr: lr.value)
        if any(c[1] == lr.text for c in cells)
    ]
    paths = []
    for axis, axis_label in AXES.items():
        fig, panels = plt.subplots(2, len(lrs), figsize=(5.2 * len(lrs), 8.5), squeeze=False)
        for col, lr in enumerate(lrs):
            present = [arm for arm in arms if (arm.name, lr.text) in cells]
            full, zoom = panels[0][col], panels[1][col]
            for arm in present:
                _draw(full, list(cells[(arm.name, lr.text)].values()), axis, arm.label, colors[arm.name])
            # The zoom: each arm's last third of validation points, with y-limits fitted to what is drawn there.
            starts, shown = [], []
            for arm in present:
                start, values = _draw(
                    zoom, list(cells[(arm.name, lr.text)].values()), axis, arm.label, colors[arm.name]
                )
                starts.append(start)
                shown += values
            x_max = max(max(c.axis(axis)) for arm in present for c in cells[(arm.name, lr.text)].values())
            zoom.set_xlim(min(starts), x_max * 1.01)
            pad = max(0.5, 0.08 * (max(shown) - min(shown)))
            zoom.set_ylim(min(shown) - pad, max(shown) + pad)
            full.set_title(f"lr {lr.text}")
            zoom.set_title(f"lr {lr.text}: last third, zoomed (own y-axis)")
            for ax in (full, zoom):
                ax.set_xlabel(axis_label)
                ax.grid(alpha=0.3)
        panels[0][0].set_ylabel("validation accuracy (%)")
        panels[1][0].set_ylabel("validation accuracy (%)")
        handles, labels = panels[0][-1].get_legend_handles_labels()
        _finish(fig, study, records, axis, handles, labels)
        paths.append(out_dir / f"val_acc_vs_{axis}.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    paths += _plot_best_lr(plt, study, records, cells, best_lr, colors, out_dir)
    for metric in study.step_metrics:
        if metric.plot:
            paths.append(_plot_step_metric(plt, study, metric, cells, lrs, colors, out_dir))
    return paths


def _plot_step_metric(
    plt, study: Study, metric: StepMetric, cells: Cells, lrs, colors, out_dir: Path
) -> Path:
    scale = 100 if metric.percent else 1
    fig, panels = plt.subplots(1, len(lrs), figsize=(6.5 * len(lrs), 4.5), squeeze=False)
    for ax, lr in zip(panels[0], lrs):
        for arm in study.arms:
            if arm.name not in metric.arms or (arm.name, lr.text) not in cells:
                continue
            curves = list(cells[(arm.name, lr.text)].values())
            for c in curves:
                ax.plot(c.train_steps, scale * np.asarray(c.step_values.get(metric.metric, [np.nan] * len(c.train_steps))),
                        color=colors[arm.name], alpha=0.2, linewidth=0.8)  # fmt: skip
            steps, mean, half = (np.asarray(x, dtype=float) for x in step_means(curves, metric.metric))
            if not len(steps):
                continue
            ax.plot(steps, scale * mean, color=colors[arm.name], linewidth=1.8,
                    label=f"{arm.label} ({len(curves)} seed{'' if len(curves) == 1 else 's'})")  # fmt: skip
            if len(curves) > 1:
                ax.fill_between(steps, scale * (mean - half), scale * (mean + half), color=colors[arm.name],
                                alpha=0.18, linewidth=0)  # fmt: skip
        ax.set_title(f"lr {lr.text}")
        ax.set_xlabel("training step")
        ax.set_ylabel(metric.label + (" (%)" if metric.percent else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(
        f"{study.name}: {metric.label} (`{metric.metric}`) per step\nseed mean (line), 95% t-interval of the mean "
        "(band), each seed (faint)",
        fontsize=10,
    )
    fig.tight_layout()
    path = out_dir / f"per_step_{metric.name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _finish(fig, study: Study, records: Sequence[RunRecord], axis: str, handles, labels) -> None:
    title = f"{study.name}: seed mean (line), 95% t-interval of the mean (band), each seed (faint)"
    if axis == "seconds":
        title += "\n" + _load_warning(study, records)
    fig.suptitle(title, fontsize=10, color="black" if axis == "rollouts" else "darkred")
    fig.legend(
        handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=9, bbox_to_anchor=(0.5, -0.03)
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))


def _plot_best_lr(plt, study, records, cells: Cells, best_lr, colors, out_dir: Path) -> list[Path]:
    path = out_dir / BEST_LR_FILE
    if len(set(best_lr.values())) <= 1:  # one lr for every arm: the figure would repeat that lr's column
        path.unlink(missing_ok=True)
        return []
    fig, panels = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (axis, axis_label) in zip(panels, AXES.items()):
        for arm in study.arms:
            if arm.name in best_lr:
                curves = list(cells[(arm.name, best_lr[arm.name])].values())
                _draw(ax, curves, axis, f"{arm.label} @ {best_lr[arm.name]}", colors[arm.name])
        ax.set_xlabel(axis_label)
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("validation accuracy (%)")
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, bbox_to_anchor=(0.5, -0.06)
    )
    fig.suptitle(
        f"{study.name}: each arm at its best lr\n{_load_warning(study, records)} (right panel)", fontsize=10
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]
