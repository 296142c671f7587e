"""The study's figures: seed-mean validation accuracy with a band of +-1 standard error over seeds, against
rollouts and against training wall-clock, one panel per learning rate; and every arm at its best lr."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sfpo_rl.experiments.analysis import mean_curve
from sfpo_rl.experiments.report import Cells
from sfpo_rl.trainer.learning_curve import Curve

AXES = {"rollouts": "rollouts (samples generated)", "seconds": "training wall-clock (s, mean over seeds)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, curves: Sequence[Curve], axis: str, label: str, color: str) -> None:
    x, mean = mean_curve(curves, axis)
    ax.plot(x, 100 * mean, color=color, label=f"{label} ({len(curves)} seeds)", marker=".")
    if len(curves) > 1:
        se = np.std([c.acc for c in curves], axis=0, ddof=1) / np.sqrt(len(curves))
        ax.fill_between(x, 100 * (mean - se), 100 * (mean + se), color=color, alpha=0.2, linewidth=0)


def plot_study(cells: Cells, best_lr: Mapping[str, float], arms: Sequence[str], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    colors = {arm: f"C{i}" for i, arm in enumerate(arms)}
    lrs = sorted({lr for _, lr in cells})
    paths = []
    for axis, label in AXES.items():
        fig, panels = plt.subplots(1, len(lrs), figsize=(5.5 * len(lrs), 4.5), sharey=True, squeeze=False)
        for ax, lr in zip(panels[0], lrs):
            for arm in arms:
                if (arm, lr) in cells:
                    _band(ax, list(cells[(arm, lr)].values()), axis, arm, colors[arm])
            ax.set_title(f"lr {lr:g}")
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        panels[0][0].set_ylabel("validation accuracy (%), band: +-1 s.e. over seeds")
        panels[0][-1].legend(fontsize=8)
        paths.append(out_dir / f"val_acc_vs_{axis}.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)

    fig, panels = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (axis, label) in zip(panels, AXES.items()):
        for arm, lr in best_lr.items():
            _band(ax, list(cells[(arm, lr)].values()), axis, f"{arm} @ {lr:g}", colors[arm])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("validation accuracy (%)")
    panels[0].set_title("each arm at its best learning rate")
    panels[1].legend(fontsize=8)
    paths.append(out_dir / "best_lr.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths
