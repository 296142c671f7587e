"""`python -m sfpo_rl.bench [--quick] [--out DIR] [--only a,b]`: run the system benchmarks, each in its own
process (vLLM, Ray and torch.distributed state never leak between them), then print one combined table and
write DIR/summary.json and DIR/summary.md. Each benchmark's full output goes to DIR/<name>.log and its
result to DIR/<name>.json. `make bench` runs the quick versions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sfpo_rl.bench.common import NOISE_NOTE, machine_info, row, run_logged, summary_table, write_result

# step_time and one_box before weight_sync: the latter reads their trainer runs for the share of a step.
BENCHMARKS = (
    "rollout",
    "step_time",
    "one_box",
    "weight_sync",
    "sfpo_overhead",
    "throughput",
    "token_budget",
    "reward_robustness",
    "lora",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sfpo_rl.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true", help="the few-minute versions (make bench)")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="step_time, one_box: the warm-started tiny model's cache dir"
    )
    args = parser.parse_args(argv)
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in args.only if b not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    return args


def run_one(name: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    """Run one benchmark's module; its summary rows (a failure row if it failed) and its wall seconds."""
    cmd = [
        sys.executable,
        "-m",
        f"sfpo_rl.bench.{name}",
        "--out",
        str(args.out),
        *(["--quick"] if args.quick else []),
    ]
    if name in ("step_time", "one_box") and args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    log = args.out / f"{name}.log"
    result_path = args.out / f"{name}.json"
    result_path.unlink(missing_ok=True)
    print(f"[bench] {name} ... (log: {log})", flush=True)
    start = time.perf_counter()
    returncode = run_logged(cmd, log)
    elapsed = time.perf_counter() - start
    if returncode != 0 or not result_path.exists():
        last = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
        print(
            f"[bench] {name} FAILED (exit {returncode}) after {elapsed:.0f} s: {last[0][:300]}",
            flush=True,
        )
        return [{**row("FAILED", None, "", f"exit {returncode}; see {log}"), "benchmark": name}], elapsed
    rows = json.loads(result_path.read_text())["rows"]
    print(f"[bench] {name} done in {elapsed:.0f} s", flush=True)
    return [{**r, "benchmark": name} for r in rows], elapsed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, walls = [], {}
    for name in args.only:
        bench_rows, walls[name] = run_one(name, args)
        rows += bench_rows
    table = summary_table(rows, benchmark="")
    mode = "quick" if args.quick else "full"
    text = f"## System benchmarks ({mode})\n\n{table}\n\n- {NOISE_NOTE}\n- Details: {args.out}/<benchmark>.json and .log\n"
    print(f"\n{text}", flush=True)
    (args.out / "summary.md").write_text(text)
    failed = sorted({r["benchmark"] for r in rows if r["metric"] == "FAILED"})
    write_result(
        args.out,
        "summary",
        {"quick": args.quick, "rows": rows, "wall_s": walls, "failed": failed, "machine": machine_info()},
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
