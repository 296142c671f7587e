"""GRPO vs SFPO on the built-in task: same model, data, batch, seeds and step budget; then an SFPO ablation.

    python -m sfpo_rl.experiments.compare --out results/compare             # 3 seeds x {grpo, sfpo} + ablation
    python -m sfpo_rl.experiments.compare --out /tmp/cmp --quick             # 1 seed, 3 steps, no ablation
    python -m sfpo_rl.experiments.compare --out results/compare -- rollout.n=4   # extra trainer overrides

Every run is a normal `sfpo-rl-train` job in `<out>/runs/<variant>_seed<s>`. A finished run (summary.json) is
reused and an interrupted one resumes from its last checkpoint, so the whole experiment can be re-run after a
crash. The analysis reads only the runs' metrics.jsonl and writes `<out>/compare.json`, `<out>/compare.md`
and PNG plots. Headline numbers follow the paper: GRPO's best validation accuracy, and the rollouts and
training wall-clock SFPO needs to first reach it, as a ratio to what GRPO needed (per seed and mean).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sfpo_rl.trainer.tracking import read_jsonl


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]


MAIN = (Variant("grpo", ("algorithm=grpo",)), Variant("sfpo", ("algorithm=sfpo",)))
ABLATION = (
    Variant("sfpo_K1", ("algorithm=sfpo", "algorithm.sfpo.inner_steps=1")),
    Variant("sfpo_K5", ("algorithm=sfpo", "algorithm.sfpo.inner_steps=5")),
    Variant("sfpo_alpha0.5", ("algorithm=sfpo", "algorithm.sfpo.alpha=0.5")),
    Variant("sfpo_alpha1.0", ("algorithm=sfpo", "algorithm.sfpo.alpha=1.0")),
    Variant("sfpo_no_switch", ("algorithm=sfpo", "algorithm.sfpo.adaptive_switch=false")),
)


@dataclass
class Curve:
    """One run's validation points (at cumulative rollouts / training seconds) and per-step entropy."""

    val_steps: list[int] = field(default_factory=list)
    val_rollouts: list[float] = field(default_factory=list)
    val_seconds: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    entropy_steps: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    switch_step: int | None = None  # first step SFPO ran as a plain update after being switched off


def load_curve(run_dir: str | Path) -> Curve:
    curve = Curve()
    rollouts = seconds = 0.0
    for row in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        rollouts = row.get("perf/rollouts", rollouts)  # absent on step 0 (validation before training)
        seconds = row.get("perf/train_seconds", seconds)
        if row.get("val/acc") is not None:
            curve.val_steps.append(row["step"])
            curve.val_rollouts.append(float(rollouts))
            curve.val_seconds.append(float(seconds))
            curve.val_acc.append(float(row["val/acc"]))
        if row.get("actor/entropy") is not None:
            curve.entropy_steps.append(row["step"])
            curve.entropy.append(float(row["actor/entropy"]))
        if curve.switch_step is None and row.get("sfpo/switched_off") == 1.0:
            curve.switch_step = row["step"]
    return curve


def first_reach(xs: Sequence[float], accs: Sequence[float], target: float) -> float | None:
    """The first x at which accuracy reaches `target` (None: never)."""
    for x, acc in zip(xs, accs):
        if acc >= target - 1e-9:
            return float(x)
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return numerator / denominator if denominator > 0 else math.inf


def compare_seed(grpo: Curve, sfpo: Curve) -> dict[str, Any]:
    """The paper's efficiency figures for one seed: how much sooner SFPO reaches GRPO's best accuracy."""
    best = max(grpo.val_acc)
    out: dict[str, Any] = {"grpo_best_acc": best}
    for axis in ("rollouts", "seconds"):
        grpo_cost = first_reach(getattr(grpo, f"val_{axis}"), grpo.val_acc, best)
        sfpo_cost = first_reach(getattr(sfpo, f"val_{axis}"), sfpo.val_acc, best)
        out[f"grpo_{axis}_to_best"] = grpo_cost
        out[f"sfpo_{axis}_to_grpo_best"] = sfpo_cost
        out[f"{axis}_speedup"] = _ratio(grpo_cost, sfpo_cost)  # > 1: SFPO needs less
    return out


def _mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": len(finite)}


def summarize(curves: dict[str, dict[int, Curve]]) -> dict[str, Any]:
    """Per-variant final / best accuracy over seeds, and the GRPO-vs-SFPO figures per seed and on average."""
    variants = {
        name: {
            "final_acc": _mean_std([c.val_acc[-1] for c in runs.values()]),
            "best_acc": _mean_std([max(c.val_acc) for c in runs.values()]),
            "start_acc": _mean_std([c.val_acc[0] for c in runs.values()]),
            "switch_steps": {seed: c.switch_step for seed, c in runs.items()},
        }
        for name, runs in curves.items()
    }
    out: dict[str, Any] = {"variants": variants}
    if "grpo" in curves and "sfpo" in curves:
        seeds = sorted(set(curves["grpo"]) & set(curves["sfpo"]))
        per_seed = {seed: compare_seed(curves["grpo"][seed], curves["sfpo"][seed]) for seed in seeds}
        out["per_seed"] = per_seed
        out["mean"] = {
            key: _mean_std([row[key] for row in per_seed.values()])
            for key in ("grpo_best_acc", "rollouts_speedup", "seconds_speedup")
        }
        out["sfpo_reached_grpo_best"] = sum(
            r["sfpo_rollouts_to_grpo_best"] is not None for r in per_seed.values()
        )
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "never"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| variant | start acc | final acc (mean ± std) | best acc (mean ± std) | seeds |",
        "|---|---|---|---|---|",
    ]
    for name, v in summary["variants"].items():
        lines.append(
            f"| {name} | {_fmt(v['start_acc']['mean'])} | {_fmt(v['final_acc']['mean'])} ± "
            f"{_fmt(v['final_acc']['std'])} | {_fmt(v['best_acc']['mean'])} ± {_fmt(v['best_acc']['std'])} | "
            f"{v['final_acc']['n']} |"
        )
    if "per_seed" in summary:
        lines += [
            "",
            "| seed | GRPO best acc | GRPO rollouts to it | SFPO rollouts to it | rollout ratio | "
            "GRPO s to it | SFPO s to it | wall-clock ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for seed, r in summary["per_seed"].items():
            lines.append(
                f"| {seed} | {_fmt(r['grpo_best_acc'])} | {_fmt(r['grpo_rollouts_to_best'], 0)} | "
                f"{_fmt(r['sfpo_rollouts_to_grpo_best'], 0)} | {_fmt(r['rollouts_speedup'], 2)} | "
                f"{_fmt(r['grpo_seconds_to_best'], 0)} | {_fmt(r['sfpo_seconds_to_grpo_best'], 0)} | "
                f"{_fmt(r['seconds_speedup'], 2)} |"
            )
        m = summary["mean"]
        lines.append(
            f"| mean | {_fmt(m['grpo_best_acc']['mean'])} | | | {_fmt(m['rollouts_speedup']['mean'], 2)} | | | "
            f"{_fmt(m['seconds_speedup']['mean'], 2)} |"
        )
        lines.append(
            f"\nSFPO reached GRPO's best accuracy in {summary['sfpo_reached_grpo_best']} of "
            f"{len(summary['per_seed'])} seeds; ratios average the seeds where it did (> 1: SFPO needs less)."
        )
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, dict[int, Curve]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = {name: f"C{i}" for i, name in enumerate(curves)}
    for axis, label in (("rollouts", "rollouts (samples generated)"), ("seconds", "training wall-clock (s)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, runs in curves.items():
            for i, c in enumerate(runs.values()):
                ax.plot(
                    getattr(c, f"val_{axis}"),
                    c.val_acc,
                    color=colors[name],
                    alpha=0.8,
                    label=name if i == 0 else None,
                    marker=".",
                )
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(out_dir / f"val_acc_vs_{axis}.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        for i, c in enumerate(runs.values()):
            ax.plot(c.entropy_steps, c.entropy, color=colors[name], alpha=0.8, label=name if i == 0 else None)
            if c.switch_step is not None:
                ax.axvline(c.switch_step, color=colors[name], linestyle="--", alpha=0.6)
    ax.set_xlabel("step (dashed: SFPO switched off)")
    ax.set_ylabel("policy entropy (training pass)")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(out_dir / "entropy.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def run_variant(variant: Variant, seed: int, steps: int, out_dir: Path, extra: Sequence[str]) -> Path:
    """Train one (variant, seed) unless it already finished; an interrupted run resumes from its checkpoint."""
    run_dir = out_dir / "runs" / f"{variant.name}_seed{seed}"
    if (run_dir / "summary.json").is_file():
        print(f"[compare] {run_dir.name}: finished earlier, reused", flush=True)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "sfpo_rl.trainer.main",
        f"trainer.run_dir={run_dir}", f"trainer.total_steps={steps}",
        f"trainer.seed={seed}", f"data.seed={seed}",
        "trainer.logger=[console]", "trainer.export_hf=false",
        *variant.overrides, *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    print(f"[compare] {run_dir.name}: training {steps} steps (log: {run_dir}/train.log)", flush=True)
    with open(run_dir / "train.log", "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        raise RuntimeError(f"run {run_dir.name} failed (exit {proc.returncode}); log tail:\n{tail}")
    print(f"[compare] {run_dir.name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return run_dir


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/compare"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per run (default: the config's)"
    )
    parser.add_argument("--no-ablation", action="store_true", help="only GRPO vs SFPO")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 steps, no ablation (for tests)")
    parser.add_argument("overrides", nargs="*", help="extra trainer overrides, after --")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.no_ablation = args.seeds[:1], args.steps or 3, True
    extra = list(args.overrides)
    steps = args.steps or int(_config_value("trainer.total_steps", extra))
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    plan = [(v, s) for s in args.seeds for v in MAIN]  # GRPO and SFPO of a seed back to back: similar load
    if not args.no_ablation:
        plan += [(v, args.seeds[0]) for v in ABLATION]
    print(f"[compare] {len(plan)} runs of {steps} steps into {out_dir}", flush=True)
    curves: dict[str, dict[int, Curve]] = {}
    for variant, seed in plan:
        run_dir = run_variant(variant, seed, steps, out_dir, extra)
        curves.setdefault(variant.name, {})[seed] = load_curve(run_dir)

    summary = summarize(curves)
    summary["setup"] = {"steps": steps, "seeds": args.seeds, "overrides": extra,
                        "variants": {v.name: list(v.overrides) for v, _ in plan}}  # fmt: skip
    summary["curves"] = {name: {seed: asdict(c) for seed, c in runs.items()} for name, runs in curves.items()}
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    (out_dir / "compare.md").write_text(table)
    plots = plot({k: v for k, v in curves.items() if k in ("grpo", "sfpo")}, out_dir)
    print(table)
    print(
        f"[compare] wrote {out_dir / 'compare.json'}, {out_dir / 'compare.md'}, {', '.join(p.name for p in plots)}"
    )
    return summary


def _config_value(key: str, overrides: Sequence[str]) -> Any:
    """A value of the composed default config (with `overrides`), e.g. the default number of steps."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sfpo_rl.trainer.main import CONFIG_DIR  # registers the schema

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.select(cfg, key)


if __name__ == "__main__":
    main()
