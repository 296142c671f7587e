"""A run's learning curve, read back from its metrics.jsonl, and the PNG every run ends with.

`plot_learning_curve` draws the training reward per step and the validation accuracy (with its standard error)
against rollouts, and marks the step at which SFPO switched itself off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sfpo_rl.trainer.run_dir import RunDir
from sfpo_rl.trainer.tracking import read_jsonl

PHASES = ("generate", "reward", "old_log_prob", "advantage", "update", "sync")


@dataclass
class Curve:
    """One run: validation accuracy (and its standard error) at each validation step, with the rollouts
    generated and training seconds spent by then; training reward per step; mean seconds per step of each phase;
    and per step, the values of any metrics asked for (NaN at a step that did not log one)."""

    steps: list[int] = field(default_factory=list)
    rollouts: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    acc_se: list[float] = field(default_factory=list)
    train_steps: list[int] = field(default_factory=list)
    train_rollouts: list[float] = field(default_factory=list)
    train_reward: list[float] = field(default_factory=list)
    switch_step: int | None = None  # the first step run as a plain update after SFPO had been active
    phase_seconds: dict[str, float] = field(default_factory=dict)
    step_values: dict[str, list[float]] = field(default_factory=dict)  # metric -> value at each train step

    def axis(self, name: str) -> list[float]:
        return {"rollouts": self.rollouts, "seconds": self.seconds, "steps": self.steps}[name]


def load_curve(run_dir: str | Path, step_metrics: Sequence[str] = ()) -> Curve:
    """The run's curve; `step_metrics` (metrics.jsonl keys) are kept per training step."""
    curve = Curve(step_values={metric: [] for metric in step_metrics})
    rollouts = seconds = 0.0
    sfpo_was_active = False
    phase_totals = dict.fromkeys(PHASES, 0.0)
    for row in read_jsonl(RunDir(run_dir).metrics):
        rollouts = row.get("perf/rollouts", rollouts)  # absent on step 0 (validation before training)
        seconds = row.get("perf/train_seconds", seconds)
        if row.get("val/acc") is not None:
            curve.steps.append(row["step"])
            curve.rollouts.append(float(rollouts))
            curve.seconds.append(float(seconds))
            curve.acc.append(float(row["val/acc"]))
            curve.acc_se.append(float(row.get("val/acc_se", math.nan)))
        if row.get("reward/mean") is not None:
            curve.train_steps.append(row["step"])
            curve.train_rollouts.append(float(rollouts))
            curve.train_reward.append(float(row["reward/mean"]))
            for metric, values in curve.step_values.items():
                values.append(float(row.get(metric, math.nan)))
            for phase in PHASES:
                phase_totals[phase] += float(row.get(f"timing/{phase}", 0.0))
        active = row.get("sfpo/active")
        if active == 1.0:
            sfpo_was_active = True
        elif active == 0.0 and sfpo_was_active and curve.switch_step is None:
            curve.switch_step = row["step"]
    n = max(len(curve.train_steps), 1)
    curve.phase_seconds = {phase: total / n for phase, total in phase_totals.items()}
    return curve


def plot_learning_curve(run_dir: str | Path, title: str = "") -> Path | None:
    """Write run_dir/learning_curve.png from run_dir/metrics.jsonl; None when there is nothing to draw."""
    run_dir = Path(run_dir)
    curve = load_curve(run_dir)
    if not curve.train_steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(curve.train_rollouts, curve.train_reward, color="C0", alpha=0.6,
            label="training reward (mean per sample)")  # fmt: skip
    if curve.acc:
        se = [0.0 if math.isnan(e) else e for e in curve.acc_se]
        ax.errorbar(curve.rollouts, curve.acc, yerr=se, color="C1", marker="o", capsize=3,
                    label="validation accuracy (+-1 s.e.)")  # fmt: skip
    if curve.switch_step is not None:  # drawn where the first plain step's rollouts begin
        switch_at = curve.train_rollouts[curve.train_steps.index(curve.switch_step) - 1]
        ax.axvline(switch_at, color="C3", linestyle="--",
                   label=f"SFPO switched off (from step {curve.switch_step})")  # fmt: skip
    ax.set_xlabel("rollouts (samples generated)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    path = RunDir(run_dir).learning_curve
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
