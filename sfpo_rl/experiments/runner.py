"""`sfpo-rl-study STUDY.yaml`: run a study (sfpo_rl/experiments/study.py describes the file), resume it, analyse
it and plot it.

    sfpo-rl-study results/compare/study.yaml                  # run what has not finished, then report
    sfpo-rl-study my_study.yaml --parallel 2                  # two runs at a time (one stays the default: timing)
    sfpo-rl-study my_study.yaml --check                       # check the file and every arm's config, list the plan
    sfpo-rl-study my_study.yaml --analyze-only                # report what has finished, train nothing
    sfpo-rl-study pilot.yaml --runs /elsewhere/pilot --analyze-only   # analyse runs in place

Each run is a normal `sfpo-rl-train` job in `<runs>/<arm>_lr<lr>_seed<s>` (its output in train.log there). A
finished run is reused, an interrupted one resumes from its last checkpoint, a run recorded in the report's
curves.json counts as finished (so a study continues on another machine from committed results), and a run the
trainer stops for non-finite training is a result (it collapsed), not a failure. A failed run is reported and
the others go on; re-running the command retries it. After every run the report is rewritten from everything
finished: `<out>/<report_name>.md` and `.json`, `<out>/curves.json` (every run's curve and provenance: the raw
data) and the figures. The analysis refuses runs made by different commits or from different starting weights
unless --allow-mixed-commits is given, and names the runs that differ.

Exit codes: 0 all done; 1 some runs failed (re-run to retry); 2 a bad study file, an arm whose overrides Hydra or
the schema rejects (checked before any run), or mixed runs; 130 interrupted (re-run to resume).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from sfpo_rl.experiments.plots import plot_study
from sfpo_rl.experiments.records import (
    FINISHED,
    MixedRunsError,
    RunRecord,
    check_same_code,
    read_curves,
    read_run,
    write_curves,
)
from sfpo_rl.experiments.report import markdown, summarize
from sfpo_rl.experiments.study import (
    DECISION_RULES,
    ENDPOINTS,
    Run,
    Study,
    StudyError,
    check_arms_compose,
    load_study,
    plan,
)
from sfpo_rl.trainer.run_dir import RunDir
from sfpo_rl.utils.provenance import git_state

EXIT_FAILED_RUNS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
CURVES = "curves.json"
STOP_GRACE_S = 60

Train = Callable[[Run, Path, Study], int]


def log(message: str) -> None:
    print(f"[study] {time.strftime('%H:%M:%S')} {message}", flush=True)


# ------------------------------------------------------------------------------------------------ runs
class Trainers:
    """The `sfpo-rl-train` processes this runner started, so an interrupted study can stop them."""

    def __init__(self) -> None:
        self.active: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def run(self, run: Run, run_dir: Path, study: Study) -> int:
        cmd = [
            sys.executable, "-m", "sfpo_rl.trainer.main",
            f"trainer.run_dir={run_dir}", "trainer.logger=[console]", "trainer.export_hf=false",
            *run.overrides(study),
        ]  # fmt: skip
        with open(RunDir(run_dir).train_log, "a") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            with self.lock:
                self.active.add(proc)
            try:
                return proc.wait()
            finally:
                with self.lock:
                    self.active.discard(proc)

    def stop(self) -> None:
        """SIGINT (the trainer shuts its workers down), then SIGKILL after a grace period."""
        with self.lock:
            procs = list(self.active)
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def run_study(
    study: Study,
    runs: Sequence[Run],
    runs_dir: Path,
    done: set[str],
    train: Train,
    parallel: int = 1,
    after_each: Callable[[], None] = lambda: None,
) -> list[str]:
    """Train every run not in `done`, `parallel` at a time in plan order, calling `after_each` when one ends;
    returns the runs that failed (the others still ran)."""
    todo = [run for run in runs if run.name not in done]
    total = len(runs)
    log(
        f"{study.name}: {total} runs planned, {total - len(todo)} done, {len(todo)} to go"
        + (f", {parallel} at a time" if parallel > 1 else "")
        + f"; runs in {runs_dir}"
    )
    failed: list[str] = []
    spent: list[float] = []
    finished = total - len(todo)
    pending = iter(todo)
    active: dict[Future, tuple[Run, float]] = {}

    def start(pool: ThreadPoolExecutor) -> None:
        run = next(pending, None)
        if run is None:
            return
        run_dir = runs_dir / run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        log(f"start {run.name} (log {RunDir(run_dir).train_log})")
        active[pool.submit(train, run, run_dir, study)] = (run, time.monotonic())

    # Not `with`: on Ctrl-C the caller stops the trainers first, and the pool must not wait for them before that.
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        for _ in range(parallel):
            start(pool)
        while active:
            for future in wait(active, return_when=FIRST_COMPLETED).done:
                run, began = active.pop(future)
                code = future.result()
                minutes = (time.monotonic() - began) / 60
                record = next(iter(collect(study, [run], runs_dir, {})), None)
                if record is None:
                    failed.append(run.name)
                    log(
                        f"FAILED {run.name} (exit {code}) after {minutes:.1f} min; see {RunDir(runs_dir / run.name).train_log}; the other runs go on"
                    )
                else:
                    finished += 1
                    spent.append(minutes)
                    left = total - finished - len(failed)
                    eta = sum(spent) / len(spent) * left / parallel / 60
                    outcome = (
                        "done"
                        if record.status == FINISHED
                        else f"stopped: {record.status}, counted as collapsed"
                    )
                    log(
                        f"{outcome}: {run.name} in {minutes:.1f} min; {finished} of {total} done, {left} to go"
                        + (f", about {eta:.1f} h left" if left else "")
                    )
                after_each()
                start(pool)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return failed


# ------------------------------------------------------------------------------------------------ report
def collect(
    study: Study, runs: Sequence[Run], runs_dir: Path, recorded: dict[str, RunRecord]
) -> list[RunRecord]:
    """Every planned run that is done: from its run directory, else from the curves file. A run validated last
    before the study's step budget (a shorter earlier budget) is not done: launched again, it continues."""
    records = []
    metrics = [m.metric for m in study.step_metrics]
    for run in runs:
        record = read_run(runs_dir / run.name, run.arm.name, run.lr.text, run.seed, metrics) or recorded.get(
            run.name
        )
        if record is not None and record.curve.steps and record.curve.steps[-1] >= study.steps:
            records.append(record)
    return records


def setup(study: Study) -> dict[str, Any]:
    return {
        "study": study.shown_path,
        "name": study.name,
        "protocol": study.protocol,
        "steps": study.steps,
        "learning_rates": [lr.text for lr in study.learning_rates],
        "overrides": list(study.overrides),
        "arms": {
            a.name: {"label": a.label, "overrides": list(a.overrides), "seeds": a.seeds} for a in study.arms
        },
        "collapse_at": study.collapse_at,
        **({"step_metrics": [m.metric for m in study.step_metrics]} if study.step_metrics else {}),
    }


def write_report(
    study: Study, records: Sequence[RunRecord], out_dir: Path, allow_mixed: bool = False
) -> dict[str, Any] | None:
    """The curves file (always), then the analysis: markdown, JSON and figures (MixedRunsError when the runs
    were made by different code and `allow_mixed` is off)."""
    if not records:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    write_curves(out_dir / CURVES, records)
    warnings = check_same_code(records, allow_mixed)
    summary = {"setup": setup(study), **summarize(study, records, warnings)}
    (out_dir / f"{study.report_name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / f"{study.report_name}.md").write_text(markdown(study, summary, records))
    plot_study(study, records, summary["best_lr"], out_dir)
    return summary


# ------------------------------------------------------------------------------------------------ command line
def main(argv: Sequence[str] | None = None, train: Train | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sfpo-rl-study",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", type=Path, help="the study file (YAML)")
    parser.add_argument(
        "--runs", type=Path, default=None, help="where the runs train (default: the file's `runs`)"
    )
    parser.add_argument("--out", type=Path, default=None, help="report directory (default: the file's `out`)")
    parser.add_argument(
        "--parallel", type=int, default=1, help="runs at a time (default 1: comparable timings)"
    )
    parser.add_argument("--analyze-only", action="store_true", help="train nothing: report what has finished")
    parser.add_argument(
        "--check", action="store_true", help="check the file and every arm's config, list the plan"
    )
    parser.add_argument(
        "--allow-mixed-commits",
        action="store_true",
        help="analyse runs made by different commits or weights together",
    )
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    try:
        study = load_study(args.study)
        runs_dir = (args.runs or study.runs).resolve()
        out_dir = (args.out or study.out).resolve()
        runs = plan(study)
        if not args.analyze_only:
            check_arms_compose(study, runs_dir)
        recorded = read_curves(out_dir / CURVES)
        done = {r.name for r in collect(study, runs, runs_dir, recorded)}
        if args.check:
            _print_plan(study, runs, done, runs_dir, out_dir)
            return 0
        if not args.analyze_only and len(done) < len(runs):
            _check_checkout(collect(study, runs, runs_dir, recorded), args.allow_mixed_commits)
    except (StudyError, MixedRunsError) as exc:
        print(f"sfpo-rl-study: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    def report(final: bool = False) -> None:
        """Rewritten after each run. Only the final one can stop the command: between runs, a report that
        fails (mixed runs, or a fault in the analysis) is logged and the runs go on, since they hold the hours."""
        try:
            summary = write_report(
                study, collect(study, runs, runs_dir, recorded), out_dir, args.allow_mixed_commits
            )
        except Exception as exc:
            if final:
                raise
            log(f"report not written ({type(exc).__name__}: {exc}); the runs go on")
            return
        if summary is not None:
            log(f"report: {out_dir / (study.report_name + '.md')} ({summary['provenance']['runs']} runs)")

    failed: list[str] = []
    trainers = Trainers()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: the runs too
    try:
        if not args.analyze_only:
            failed = run_study(study, runs, runs_dir, done, train or trainers.run, args.parallel, report)
        report(final=True)
    except MixedRunsError as exc:
        print(f"sfpo-rl-study: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        trainers.stop()
        log(
            "interrupted; run the same command again to resume (finished runs are kept, interrupted ones resume)"
        )
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        log(f"{len(failed)} run(s) failed: {', '.join(failed)}; run the same command again to retry them")
        return EXIT_FAILED_RUNS
    return 0


def _check_checkout(records: Sequence[RunRecord], allow_mixed: bool) -> None:
    """New runs would be made by this checkout: refuse before training when the runs done so far were made by
    another commit (or by several), unless mixing is allowed."""
    check_same_code(records, allow_mixed)
    here = git_state(Path(__file__).resolve().parent)["commit"]
    theirs = {launch.get("commit") for r in records for launch in r.launches}
    if records and not allow_mixed and theirs != {here}:
        raise MixedRunsError(
            f"the {len(records)} runs done so far were made by commit(s) "
            f"{', '.join(sorted(c[:12] if c else 'not recorded' for c in theirs))}, this checkout is "
            f"{here[:12] if here else 'not a git checkout'}: new runs would mix them. Run the rest from that commit "
            "(e.g. `git worktree add ../pinned <commit>`), or pass --allow-mixed-commits"
        )


def _print_plan(study: Study, runs: Sequence[Run], done: set[str], runs_dir: Path, out_dir: Path) -> None:
    """What --check shows: the arms, the comparisons with what each endpoint means, the decisions, the plan."""
    lines = [
        f"{study.shown_path}: {study.name}",
        f"  {len(study.arms)} arms x {len(study.learning_rates)} lrs ({', '.join(lr.text for lr in study.learning_rates)}), "
        f"{study.steps} steps per run; every arm's config composes",
    ]
    lines += [f"  {a.name:<16} {a.label:<28} {a.seeds} seeds  {' '.join(a.overrides)}" for a in study.arms]
    for comparison in study.comparisons:
        pairs = ", ".join(f"{arm} vs {base}" for arm, base in comparison.pairs)
        lines.append(f'  comparison "{comparison.title}" ({comparison.kind}): {pairs}')
        for endpoint in comparison.endpoints:
            decided = "decided" if endpoint in comparison.decide else "reported"
            lines.append(f"    {endpoint} ({decided}): {ENDPOINTS[endpoint]}")
    for d in study.decisions:
        about = (
            f' (comparisons[{d.comparison}]: "{d.claim}" when it holds, "{d.counterclaim}" when it fails)'
            if d.rule == "improves"
            else ""
        )
        lines.append(f"  decision {d.rule}{about}: {DECISION_RULES[d.rule]}")
    for m in study.step_metrics:
        windows = ", ".join(f"steps {first}-{last}" for first, last in m.windows)
        count = f"; count: {m.count.label}" if m.count else ""
        lines.append(
            f"  per step (descriptive): {m.metric} ({m.label}) for {', '.join(m.arms)}: {windows}{count}"
        )
    lines.append(
        f"  {len(runs)} runs, {len(done)} done, {len(runs) - len(done)} to go; runs in {runs_dir}, report in {out_dir}"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
