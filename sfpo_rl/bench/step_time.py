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
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfpo_rl.bench.common import bench_main, median, row

NAME = "step_time"
PHASES = ("generate", "reward", "old_log_prob", "ref_log_prob", "advantage", "update", "sync")
# The quick run's shapes (those of the end-to-end test): 8 prompts x 4 samples, one mini-batch of 16 twice.
QUICK_OVERRIDES = ("data.train_batch_size=8", "rollout.n=4", "actor.batching.ppo_mini_batch_size=16")
RUN_OVERRIDES = (
    "trainer.val_every=0",
    "trainer.val_before_train=false",
    "trainer.save_every=0",
    "trainer.export_hf=false",
    "trainer.resume=never",
    "trainer.logger=[console]",
)


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


def phase_breakdown(rows: Sequence[dict[str, Any]], skip_first: bool = True) -> dict[str, float]:
    """Median seconds per phase (and 'other', 'step') over the training rows of one metrics.jsonl."""
    rows = [r for r in rows if "timing/step" in r]
    if not rows:
        raise ValueError("no training steps with timing/step in the metrics")
    if skip_first and len(rows) > 1:
        rows = rows[1:]
    out = {p: median([r[f"timing/{p}"] for r in rows]) for p in PHASES if f"timing/{p}" in rows[0]}
    out["other"] = median([r["timing/step"] - sum(r.get(f"timing/{p}", 0.0) for p in PHASES) for r in rows])
    out["step"] = median([r["timing/step"] for r in rows])
    return out


def breakdown_table(breakdowns: dict[str, dict[str, float]]) -> tuple[list[str], list[list[Any]]]:
    """Rows phase | <algo> s | <algo> % of step, for every phase any algorithm has."""
    algos = list(breakdowns)
    phases = [p for p in (*PHASES, "other", "step") if any(p in b for b in breakdowns.values())]
    headers = ["phase"] + [h for a in algos for h in (f"{a} s", f"{a} %")]
    rows = []
    for phase in phases:
        cells: list[Any] = [phase]
        for a in algos:
            seconds = breakdowns[a].get(phase)
            cells += [seconds, None if seconds is None else 100 * seconds / breakdowns[a]["step"]]
        rows.append(cells)
    return headers, rows


def pinned_model(cache_dir: str | None) -> tuple[str, ...]:
    """Overrides that give a run the default warm-started model and its data files by path (built first if
    the cache lacks it), as `sfpo-rl-train` with no model or data options would resolve them."""
    from sfpo_rl.tiny.warmstart import ensure_warmstart

    cache = cache_dir or os.environ.get("SFPO_RL_CACHE") or str(Path.home() / ".cache" / "sfpo_rl")
    print(f"[bench] step_time: resolving the warm-started model in {cache} ...", file=sys.stderr, flush=True)
    warm = ensure_warmstart(cache, {"prompt_template": None})
    return (
        f"model.path={warm}",
        f"data.train_files=[{warm / 'train.jsonl'}]",
        f"data.val_files=[{warm / 'val.jsonl'}]",
    )


def train(
    run_dir: Path, algorithm: str, steps: int, quick: bool, model: Sequence[str], extra: Sequence[str]
) -> Path:
    """One trainer run into `run_dir` (replaced); returns its metrics.jsonl. Output goes to run_dir.log."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "sfpo_rl.trainer.main",
        f"algorithm={algorithm}",
        f"trainer.run_dir={run_dir}",
        f"trainer.total_steps={steps}",
        *RUN_OVERRIDES,
        *(QUICK_OVERRIDES if quick else ()),
        *model,
        *extra,
    ]
    log = run_dir.with_name(run_dir.name + ".log")
    print(f"[bench] step_time: {' '.join(cmd[1:])} (log: {log})", file=sys.stderr, flush=True)
    with open(log, "w") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"trainer run {algorithm} failed (exit {proc.returncode}); end of {log}:\n{tail}")
    return run_dir / "metrics.jsonl"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sfpo_rl.trainer.tracking import read_jsonl

    steps = args.steps or (3 if args.quick else 6)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    model = pinned_model(args.cache_dir)
    breakdowns, runs = {}, {}
    for algo in algorithms:
        start = time.perf_counter()
        metrics = train(args.out / NAME / algo, algo, steps, args.quick, model, args.overrides)
        rows = read_jsonl(metrics)
        breakdowns[algo] = phase_breakdown(rows)
        runs[algo] = {"metrics": str(metrics), "wall_s": time.perf_counter() - start, "steps": rows}
    headers, table = breakdown_table(breakdowns)
    summary = [
        row(
            f"{a} step",
            b["step"],
            "s",
            f"update {100 * b['update'] / b['step']:.0f}%, generate {100 * b['generate'] / b['step']:.0f}%, sync {100 * b['sync'] / b['step']:.0f}%",
        )
        for a, b in breakdowns.items()
    ]
    if {"grpo", "sfpo"} <= set(breakdowns):
        g, s = breakdowns["grpo"], breakdowns["sfpo"]
        summary.append(
            row(
                "sfpo / grpo, step time",
                s["step"] / g["step"],
                "x",
                f"update phase {s['update'] / g['update']:.2f}x (K+1 passes)",
            )
        )
    used = [f"steps 2-{steps}" if steps > 1 else "step 1"]
    return {
        "rows": summary,
        "tables": {f"median seconds per phase ({used[0]} of each run)": (headers, table)},
        "notes": [
            f"Runs: {' '.join(QUICK_OVERRIDES if args.quick else ())} {' '.join(args.overrides)} (trainer defaults otherwise); metrics: {', '.join(r['metrics'] for r in runs.values())}"
        ],
        "breakdowns": breakdowns,
        "runs": runs,
    }


def main(argv=None) -> dict[str, Any]:
    return bench_main(NAME, __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    main()
