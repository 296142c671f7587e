"""Step-time breakdown per phase for GRPO and SFPO: short runs of the real trainer (`python -m
sfpo_rl.trainer.main`: Ray, vLLM, 2 FSDP ranks, the built-in task and warm-started tiny model), tabulating
the driver's `timing/*` metrics from each run's metrics.jsonl. The warm-started model is resolved once,
before the runs, and both get it (and its data files) by path, so they train the same model on the same data.

Each phase is the driver's wall time for it (generate, reward, old_log_prob, advantage, update, sync);
"other" is the rest of the step (driver bookkeeping, batch unions). The first step is left out of the
medians when there are more: it pays one-off costs (first forward passes, allocator growth).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfpo_rl.bench.common import bench_main, row, run_logged
from sfpo_rl.bench.trainer_runs import breakdown_phases, phase_breakdown, pinned_model, trainer_command

NAME = "step_time"
# The quick run's shapes (those of the end-to-end test): 8 prompts x 4 samples, one mini-batch of 16 twice.
QUICK_OVERRIDES = ("data.train_batch_size=8", "rollout.n=4", "actor.batching.ppo_mini_batch_size=16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="training steps per run; 3 quick, 6 full")
    parser.add_argument("--algorithms", default="grpo,sfpo", help="comma-separated algorithm configs")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache dir of the warm-started tiny model (default: the trainer's, $SFPO_RL_CACHE or "
        "~/.cache/sfpo_rl); the first use builds it (a few minutes)",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs")


def breakdown_table(breakdowns: dict[str, dict[str, float]]) -> tuple[list[str], list[list[Any]]]:
    """Rows phase | <algo> s | <algo> % of step, for every phase any algorithm has."""
    algos = list(breakdowns)
    headers = ["phase"] + [h for a in algos for h in (f"{a} s", f"{a} %")]
    rows = []
    for phase in breakdown_phases(list(breakdowns.values())):
        cells: list[Any] = [phase]
        for a in algos:
            seconds = breakdowns[a].get(phase)
            cells += [seconds, None if seconds is None else 100 * seconds / breakdowns[a]["step"]]
        rows.append(cells)
    return headers, rows


def train(
    run_dir: Path, algorithm: str, steps: int, quick: bool, model: Sequence[str], extra: Sequence[str]
) -> Path:
    """One trainer run into `run_dir` (replaced); returns its metrics.jsonl. Output goes to run_dir.log."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = trainer_command(
        f"algorithm={algorithm}",
        f"trainer.run_dir={run_dir}",
        f"trainer.total_steps={steps}",
        *(QUICK_OVERRIDES if quick else ()),
        *model,
        *extra,
    )
    log = run_dir.with_name(run_dir.name + ".log")
    print(f"[bench] step_time: {' '.join(cmd[1:])} (log: {log})", file=sys.stderr, flush=True)
    returncode = run_logged(cmd, log)
    if returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"trainer run {algorithm} failed (exit {returncode}); end of {log}:\n{tail}")
    return run_dir / "metrics.jsonl"


def measure(args: argparse.Namespace, steps: int, algorithms: list[str]) -> dict[str, dict[str, Any]]:
    """One trainer run per algorithm: its metrics file, wall time and training rows."""
    from sfpo_rl.trainer.tracking import read_jsonl

    model = pinned_model(args.cache_dir)
    runs = {}
    for algo in algorithms:
        start = time.perf_counter()
        metrics = train(args.out / NAME / algo, algo, steps, args.quick, model, args.overrides)
        runs[algo] = {
            "metrics": str(metrics),
            "wall_s": time.perf_counter() - start,
            "steps": read_jsonl(metrics),
        }
    return runs


def summary_rows(breakdowns: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    def share(b: dict[str, float], phase: str) -> str:
        return f"{phase} {100 * b[phase] / b['step']:.0f}%"

    rows = [
        row(f"{a} step", b["step"], "s", ", ".join(share(b, p) for p in ("update", "generate", "sync")))
        for a, b in breakdowns.items()
    ]
    if {"grpo", "sfpo"} <= set(breakdowns):
        g, s = breakdowns["grpo"], breakdowns["sfpo"]
        rows.append(
            row(
                "sfpo / grpo, step time",
                s["step"] / g["step"],
                "x",
                f"update phase {s['update'] / g['update']:.2f}x (K+1 passes)",
            )
        )
    return rows


def report(args: argparse.Namespace, steps: int, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    breakdowns = {algo: phase_breakdown(r["steps"]) for algo, r in runs.items()}
    used = f"steps 2-{steps}" if steps > 1 else "step 1"
    overrides = f"{' '.join(QUICK_OVERRIDES if args.quick else ())} {' '.join(args.overrides)}"
    return {
        "rows": summary_rows(breakdowns),
        "tables": {f"median seconds per phase ({used} of each run)": breakdown_table(breakdowns)},
        "notes": [
            f"Runs: {overrides} (trainer defaults otherwise); metrics: "
            f"{', '.join(r['metrics'] for r in runs.values())}"
        ],
        "breakdowns": breakdowns,
        "runs": runs,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    steps = args.steps or (3 if args.quick else 6)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    return report(args, steps, measure(args, steps, algorithms))


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
