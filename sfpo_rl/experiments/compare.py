"""The GRPO-vs-SFPO study on the built-in task: a learning-rate grid, several seeds per cell, compute-matched
GRPO baselines and the K=7 regime (the design is `sfpo_rl.experiments.study`, the protocol
results/compare/PROTOCOL.md).

    python -m sfpo_rl.experiments.compare                          # the whole study (make compare), resumable
    python -m sfpo_rl.experiments.compare --max-seeds 1            # one seed of every cell
    python -m sfpo_rl.experiments.compare --analyze-only           # tables and plots from what has finished
    python -m sfpo_rl.experiments.compare --quick --runs /tmp/q --out /tmp/q   # smoke test: 2 short runs

Every run is a normal `sfpo-rl-train` job in `<runs>/<arm>_lr<lr>_seed<s>`. A finished run (summary.json) is
reused and an interrupted one resumes from its last checkpoint, so the command can be re-run after a crash or
a reboot; a failed run is reported and the others go on. A run already recorded in `<out>/curves.json` counts
as finished too, so the study continues on another machine from the committed results. After every run the report is rewritten from all
finished runs: `<out>/compare.json` (every statistic), `<out>/compare.md` (the tables), `<out>/curves.json`
(every run's curve: the raw data, enough to redo the analysis without the runs) and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sfpo_rl.experiments.plots import plot_study
from sfpo_rl.experiments.report import Cells, best_lrs, markdown, summarize
from sfpo_rl.experiments.study import ARMS, ARMS_BY_NAME, LEARNING_RATES, Run, plan
from sfpo_rl.trainer.learning_curve import Curve, load_curve

# The smoke test: the headline pair at one lr, a few steps, a small validation set.
QUICK = ("trainer.total_steps=3", "trainer.val_every=3", "data.val_max_samples=32", "trainer.save_every=0")


def run_training(run: Run, run_dir: Path, extra: Sequence[str]) -> int:
    """One study run as a `sfpo-rl-train` subprocess (output in run_dir/train.log); its exit code."""
    cmd = [
        sys.executable, "-m", "sfpo_rl.trainer.main",
        f"trainer.run_dir={run_dir}", "trainer.logger=[console]", "trainer.export_hf=false",
        *run.overrides(), *extra,
    ]  # fmt: skip
    with open(run_dir / "train.log", "a") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def run_study(
    runs: Sequence[Run],
    runs_dir: Path,
    extra: Sequence[str],
    after_each: Callable[[], None] = lambda: None,
    train: Callable[[Run, Path, Sequence[str]], int] = run_training,
    recorded: Cells | None = None,
) -> list[str]:
    """Train every run that has not finished, in order, rewriting the report after each; returns the names of
    runs that failed (the others still ran)."""
    failed = []
    todo = [r for r in runs if not _finished(r, runs_dir, recorded or {})]
    print(
        f"[compare] {len(runs)} runs planned, {len(runs) - len(todo)} finished earlier, {len(todo)} to go",
        flush=True,
    )
    spent: list[float] = []
    for i, run in enumerate(todo, 1):
        run_dir = runs_dir / run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        eta = f", about {(len(todo) - i + 1) * sum(spent) / len(spent) / 3600:.1f} h left" if spent else ""
        print(f"[compare] {i}/{len(todo)} {run.name} (log {run_dir / 'train.log'}){eta}", flush=True)
        start = time.perf_counter()
        code = train(run, run_dir, extra)
        spent.append(time.perf_counter() - start)
        if code != 0:
            failed.append(run.name)
            print(f"[compare] {run.name} FAILED (exit {code}); see {run_dir / 'train.log'}", flush=True)
            continue
        print(f"[compare] {run.name} done in {spent[-1] / 60:.1f} min", flush=True)
        after_each()
    return failed


def _finished(run: Run, runs_dir: Path, recorded: Cells) -> bool:
    """Finished here (its run directory has a summary) or recorded before (curves.json)."""
    return (runs_dir / run.name / "summary.json").is_file() or run.seed in recorded.get(
        (run.arm.name, run.lr), {}
    )


def _curve(run: Run, runs_dir: Path, recorded: Cells) -> Curve | None:
    if (runs_dir / run.name / "summary.json").is_file():
        return load_curve(runs_dir / run.name)
    return recorded.get((run.arm.name, run.lr), {}).get(run.seed)


def collect(runs: Sequence[Run], runs_dir: Path, recorded: Cells | None = None) -> Cells:
    """The curves of every finished or recorded run, by (arm, lr) and seed."""
    cells: dict[tuple[str, float], dict[int, Curve]] = {}
    for run in runs:
        if (curve := _curve(run, runs_dir, recorded or {})) is not None:
            cells.setdefault((run.arm.name, run.lr), {})[run.seed] = curve
    return cells


def write_report(cells: Cells, out_dir: Path, setup: dict[str, Any]) -> dict[str, Any] | None:
    if not cells:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"setup": setup, **summarize(cells)}
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "compare.md").write_text(markdown(summary))
    curves = {
        f"{arm}@{lr:g}": {seed: asdict(c) for seed, c in runs.items()} for (arm, lr), runs in cells.items()
    }
    (out_dir / "curves.json").write_text(json.dumps(curves) + "\n")
    arms = [arm.name for arm in ARMS if any(name == arm.name for name, _ in cells)]
    plot_study(cells, best_lrs(cells), arms, out_dir)
    return summary


def cells_from_curves_file(path: Path) -> Cells:
    cells: dict[tuple[str, float], dict[int, Curve]] = {}
    for key, runs in json.loads(path.read_text()).items():
        arm, lr = key.rsplit("@", 1)
        cells[(arm, float(lr))] = {int(seed): Curve(**c) for seed, c in runs.items()}
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/compare"), help="report directory")
    parser.add_argument("--runs", type=Path, default=Path("outputs/compare"), help="where the runs train")
    parser.add_argument("--max-seeds", type=int, default=None, help="at most this many seeds per cell")
    parser.add_argument(
        "--arms", nargs="+", default=None, choices=list(ARMS_BY_NAME), help="a subset of arms"
    )
    parser.add_argument("--analyze-only", action="store_true", help="no training: report what has finished")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: GRPO and SFPO, 1 seed, 1 lr, 3 steps"
    )
    parser.add_argument("overrides", nargs="*", help="extra trainer overrides for every run, after --")
    args = parser.parse_args(argv)

    arms = [ARMS_BY_NAME[a] for a in args.arms] if args.arms else list(ARMS)
    lrs, extra = LEARNING_RATES, list(args.overrides)
    if args.quick:
        arms, lrs, args.max_seeds = [ARMS_BY_NAME["grpo"], ARMS_BY_NAME["sfpo"]], lrs[-1:], 1
        extra = [*QUICK, *extra]
    runs = plan(arms, lrs, args.max_seeds)
    runs_dir, out_dir = args.runs.resolve(), args.out.resolve()
    setup = {
        "arms": {a.name: list(a.overrides) for a in arms},
        "learning_rates": list(lrs),
        "seeds": {a.name: min(a.seeds, args.max_seeds or a.seeds) for a in arms},
        "extra_overrides": extra,
    }

    curves_file = out_dir / "curves.json"
    recorded = cells_from_curves_file(curves_file) if curves_file.is_file() else {}

    def report() -> None:
        cells = collect(runs, runs_dir, recorded)
        if write_report(cells, out_dir, setup) is not None:
            print(
                f"[compare] report: {out_dir / 'compare.md'} ({sum(map(len, cells.values()))} runs)",
                flush=True,
            )

    failed = (
        [] if args.analyze_only else run_study(runs, runs_dir, extra, after_each=report, recorded=recorded)
    )
    report()
    if failed:
        print(
            f"[compare] {len(failed)} run(s) failed: {', '.join(failed)}; run again to retry them", flush=True
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
