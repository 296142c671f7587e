"""One box, the embedded default with GRPO: the colocated and the split placement against a single-process
transformers baseline (`sfpo_rl.bench.single_process`), measured in the same run, passes interleaved.

For every run: the median step, update and weight-sync time (steps 2 on), the step-time breakdown, start-up
(launch to the start of step 1) and teardown (end of the last step to exit), and memory: PSS summed over every
process of the run (driver, Ray's own processes, workers, verifier processes), sampled each second; its peak
and its median while training. Ratios are against the single-process baseline, and sync against the split
placement's (which, for the tiny model's single bucket, is the path the trainer took before the streamed sync).

Targets, checked and reported per pass: colocated step and update at most the baseline's,
sync at most a third of the split placement's, start-up at most half of the split placement's, total PSS
under 2 GiB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfpo_rl.bench.common import bench_main, logged_env, median, row
from sfpo_rl.bench.trainer_runs import (
    breakdown_phases,
    phase_breakdown,
    pinned_model,
    trainer_command,
    training_rows,
)

NAME = "one_box"
RUNS = ("colocated", "split", "single_process")
GIB = 2**30
PSS_TARGET_GIB = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="training steps per run; 4 quick, 8 full")
    parser.add_argument(
        "--passes", type=int, default=None, help="passes over the three runs; 1 quick, 3 full"
    )
    parser.add_argument("--cache-dir", default=None, help="cache dir of the warm-started tiny model")
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=1,
        help="torch threads of the single process (default 1, as each trainer process; 0: torch's default)",
    )


class TreeMemory(threading.Thread):
    """Samples the PSS summed over a process and all its descendants, every `every_s` seconds."""

    def __init__(self, pid: int, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float, int]] = []  # (monotonic time, bytes, processes)
        self.at_peak: dict[str, float] = {}  # process name -> PSS bytes (summed per name) at the peak sample
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._done.is_set():
            try:
                root = psutil.Process(self.pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            by_name: dict[str, float] = {}
            counted = 0
            for process in processes:
                try:
                    name = process_label(process.cmdline()) or process.name()
                    by_name[name] = by_name.get(name, 0) + process.memory_full_info().pss
                    counted += 1
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            total = sum(by_name.values())
            if not self.samples or total > max(b for _, b, _ in self.samples):
                self.at_peak = by_name
            self.samples.append((time.monotonic(), total, counted))
            self._done.wait(self.every_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def process_label(cmdline: list[str]) -> str:
    """A short name for a process of the run: Ray's titles as they are (`ray::reward_host`), `python -m
    module` by its module, a Python script by its file name, `python -c` as that, anything else by its
    executable."""
    if not cmdline:
        return ""
    program = cmdline[0].rsplit("/", 1)[-1]
    if not program.startswith("python"):
        return cmdline[0] if cmdline[0].startswith("ray::") else program
    args = [a for a in cmdline[1:] if not a.startswith("-") or a in ("-m", "-c")]
    if args[:1] == ["-m"] and len(args) > 1:
        return f"python -m {args[1]}"
    if args[:1] == ["-c"]:
        return "python -c"
    return f"python {args[0].rsplit('/', 1)[-1]}" if args else "python"


def watch(cmd: list[str], run_dir: Path, log: Path) -> dict[str, Any]:
    """Run `cmd` (it writes run_dir/metrics.jsonl), noting when each training row appears and sampling memory."""
    metrics = run_dir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[bench] one_box: {' '.join(cmd[1:])} (log: {log})", file=sys.stderr, flush=True)
    with open(log, "w") as out:
        launched = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=logged_env())
        memory = TreeMemory(proc.pid)
        memory.start()
        seen: list[float] = []  # when each training row appeared
        while proc.poll() is None:
            rows = training_rows(metrics)
            seen += [time.monotonic()] * (len(rows) - len(seen))
            time.sleep(0.05)
        exited = time.monotonic()
        memory.stop()
    rows = training_rows(metrics)
    if proc.returncode != 0 or not rows:
        raise RuntimeError(
            f"{cmd[2]} failed (exit {proc.returncode}); end of {log}:\n{log.read_text()[-3000:]}"
        )
    seen += [exited] * (len(rows) - len(seen))
    first_step_start = seen[0] - rows[0]["timing/step"]
    training = [(t, b) for t, b, _ in memory.samples if first_step_start <= t <= seen[-1]]
    return {
        "rows": rows,
        "startup_s": first_step_start - launched,
        "teardown_s": exited - seen[-1],
        "pss_peak_gib": max(b for _, b, _ in memory.samples) / GIB,
        "pss_training_gib": median([b for _, b in training]) / GIB if training else None,
        "processes": max(n for _, _, n in memory.samples),
        "pss_at_peak_mib": {
            name: round(b / 2**20) for name, b in sorted(memory.at_peak.items(), key=lambda x: -x[1])
        },
    }


def commands(name: str, run_dir: Path, steps: int, model: tuple[str, ...], threads: int) -> list[str]:
    overrides = ["algorithm=grpo", f"trainer.total_steps={steps}", *model]
    if name == "single_process":
        baseline = [
            "-m",
            "sfpo_rl.bench.single_process",
            "--run-dir",
            str(run_dir),
            "--threads",
            str(threads),
        ]
        return [sys.executable, *baseline, *overrides]
    return trainer_command(f"resources.placement={name}", f"trainer.run_dir={run_dir}", *overrides)


def figures(watched: dict[str, Any]) -> dict[str, Any]:
    """One run's figures: its watched times and memory, and the medians of its step phases."""
    breakdown = phase_breakdown(watched["rows"])
    return {
        **{k: v for k, v in watched.items() if k != "rows"},
        **{f"{phase}_s": breakdown.get(phase) for phase in ("step", "generate", "update", "sync")},
        "breakdown": breakdown,
    }


def targets(p: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The one-box targets for the colocated placement (see the module docstring), on one pass's figures."""
    colocated, split, base = p["colocated"], p["split"], p["single_process"]
    return {
        "step <= single process": colocated["step_s"] <= base["step_s"],
        "update <= single process": colocated["update_s"] <= base["update_s"],
        "sync <= split / 3": colocated["sync_s"] <= split["sync_s"] / 3,
        "start-up <= split / 2": colocated["startup_s"] <= split["startup_s"] / 2,
        f"PSS < {PSS_TARGET_GIB:g} GiB": colocated["pss_peak_gib"] < PSS_TARGET_GIB,
    }


def over_passes(
    passes: list[dict[str, dict[str, Any]]], run: str, value: Callable[[dict], Any]
) -> float | None:
    """The median over passes of `value(figures of run)`, None where a run has no such figure."""
    values = [v for p in passes if (v := value(p[run])) is not None]
    return median(values) if values else None


FIGURES = {
    "step s": "step_s",
    "generate s": "generate_s",
    "update s": "update_s",
    "sync s": "sync_s",
    "start-up s": "startup_s",
    "teardown s": "teardown_s",
    "PSS peak GiB": "pss_peak_gib",
    "PSS while training GiB": "pss_training_gib",
    "processes": "processes",
}


def measure(args: argparse.Namespace, steps: int, n_passes: int) -> list[dict[str, dict[str, Any]]]:
    """Each pass runs the three, one after the other; per pass, each run's figures."""
    model = pinned_model(args.cache_dir)
    out = args.out / NAME
    passes: list[dict[str, dict[str, Any]]] = []
    for i in range(n_passes):
        current = {}
        for name in RUNS:
            run_dir = out / name if n_passes == 1 else out / f"{name}-pass{i}"
            cmd = commands(name, run_dir, steps, model, args.baseline_threads)
            watched = watch(cmd, run_dir, run_dir.with_suffix(".log"))
            current[name] = figures(watched)
        passes.append(current)
    return passes


def summary_rows(med: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The colocated placement against its targets, on the medians over passes."""
    col, split, base = (med[name] for name in RUNS)
    return [
        row(
            "colocated / single process, GRPO step",
            col["step_s"] / base["step_s"],
            "x",
            f"{col['step_s']:.2f} s vs {base['step_s']:.2f} s; update {col['update_s'] / base['update_s']:.2f}x; "
            "target <= 1",
        ),
        row(
            "colocated / split, weight sync",
            col["sync_s"] / split["sync_s"],
            "x",
            f"{col['sync_s'] * 1e3:.0f} ms vs {split['sync_s'] * 1e3:.0f} ms; target <= 0.33",
        ),
        row(
            "colocated start-up to step 1",
            col["startup_s"],
            "s",
            f"{col['startup_s'] / split['startup_s']:.2f}x split's {split['startup_s']:.0f} s (target <= 0.5), "
            f"{col['startup_s'] / base['startup_s']:.1f}x the single process's {base['startup_s']:.0f} s",
        ),
        row(
            "colocated total PSS, peak",
            col["pss_peak_gib"],
            "GiB",
            f"split {split['pss_peak_gib']:.2f} GiB, single process {base['pss_peak_gib']:.2f} GiB; target < 2",
        ),
    ]


def tables(passes: list[dict[str, dict[str, Any]]], med: dict[str, dict[str, Any]], steps: int) -> dict:
    col, base = med["colocated"], med["single_process"]
    figure_rows = [
        [label, *(med[name][key] for name in RUNS), col[key] / base[key] if base[key] and col[key] else None]
        for label, key in FIGURES.items()
    ]
    phases = breakdown_phases([f["breakdown"] for r in passes for f in r.values()])
    breakdown = [
        [phase, *(over_passes(passes, name, lambda f, p=phase: f["breakdown"].get(p)) for name in RUNS)]
        for phase in phases
    ]
    heaviest = sorted(passes[0]["colocated"]["pss_at_peak_mib"].items(), key=lambda x: -x[1])
    met = [targets(p) for p in passes]
    return {
        f"median over {len(passes)} pass(es), steps 2-{steps} of each run": (
            ["figure", *RUNS, "colocated / single process"],
            figure_rows,
        ),
        "median seconds per phase": (["phase", *RUNS], breakdown),
        "colocated: PSS per process at its peak (pass 0; MiB, summed by name)": (
            ["process", "MiB"],
            [[name, mib] for name, mib in heaviest],
        ),
        "targets met per pass": (
            ["target", *[f"pass {i}" for i in range(len(passes))]],
            [[t, *["yes" if m[t] else "no" for m in met]] for t in met[0]],
        ),
    }


def report(args: argparse.Namespace, steps: int, passes: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    med = {
        name: {k: over_passes(passes, name, lambda f, k=k: f[k]) for k in FIGURES.values()} for name in RUNS
    }
    return {
        "rows": summary_rows(med),
        "tables": tables(passes, med, steps),
        "notes": [
            "Runs: algorithm=grpo on the warm-started tiny model, the embedded default's shapes (16 prompts x 8 "
            "samples, 96 tokens, 2 optimizer steps per batch), validation, checkpoints and export off.",
            "Start-up: launch to the start of step 1; teardown: end of the last step to process exit.",
            f"The single process ran {args.baseline_threads or 'torch default'} thread(s) (each trainer process "
            "runs one): on a 2-core machine shared with other jobs, torch's default of one OpenMP thread per core "
            "made its generate and update over 10x slower (measured), which would flatter the placements.",
        ],
        "passes": passes,
        "targets": [targets(p) for p in passes],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    steps = args.steps or (4 if args.quick else 8)
    n_passes = args.passes or (1 if args.quick else 3)
    return report(args, steps, measure(args, steps, n_passes))


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
