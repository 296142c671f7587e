"""What every benchmark shares: the command line, result rows, the printed table, the JSON file, and the
machine description that goes with each result.

A benchmark module defines `NAME`, `add_arguments(parser)` and `run(args) -> dict`; `bench_main` turns that
into a command (`python -m sfpo_rl.bench.<name> --out DIR [--quick]`) that prints the tables and writes
`DIR/<name>.json`. The returned dict holds `rows` (the summary lines, see `row`), optional `tables`
(title -> (headers, rows)) and any details worth keeping.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

NOISE_NOTE = (
    "Timings come from a machine shared with other jobs: absolute numbers are noisy; the ratios, measured "
    "in one run with interleaved repeats, are the figures to read."
)


def row(metric: str, value: float | int | str | None, unit: str = "", note: str = "") -> dict[str, Any]:
    """One summary line: what was measured, its value and unit, and the target or how to read it."""
    return {"metric": metric, "value": value, "unit": unit, "note": note}


def fmt_value(value: Any) -> str:
    """Integers with thousands separators, floats to 3 significant digits (whole above 1000), None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table with columns padded to their widest cell (numbers via `fmt_value`)."""
    cells = [[fmt_value(c) if not isinstance(c, str) else c for c in r] for r in rows]
    for i, r in enumerate(cells):
        if len(r) != len(headers):
            raise ValueError(f"table row {i} has {len(r)} cells for {len(headers)} headers")
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def summary_table(rows: Sequence[dict[str, Any]], benchmark: str | None = None) -> str:
    """The summary rows as a table; with `benchmark`, a first column naming it (the combined table)."""
    if benchmark is None:
        return format_table(
            ["metric", "value", "unit", "note"],
            [[r["metric"], r["value"], r["unit"], r["note"]] for r in rows],
        )
    return format_table(
        ["benchmark", "metric", "value", "unit", "note"],
        [[r.get("benchmark", benchmark), r["metric"], r["value"], r["unit"], r["note"]] for r in rows],
    )


def logged_env() -> dict[str, str]:
    """The environment of a child process whose output goes to a log file: unbuffered, so the log is current."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_logged(cmd: Sequence[str], log: Path) -> int:
    """Run `cmd` with its stdout and stderr written to `log`; its exit code."""
    with open(log, "w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=logged_env()).returncode


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["load_average_1m_5m_15m"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        import vllm

        info["vllm"] = vllm.__version__
    except Exception:  # vLLM is optional for the actor-only benchmarks
        info["vllm"] = None
    return info


def write_result(out_dir: Path, name: str, result: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def print_result(name: str, result: dict[str, Any]) -> None:
    for title, (headers, rows) in result.get("tables", {}).items():
        print(f"\n### {name}: {title}\n\n{format_table(headers, rows)}")
    print(f"\n### {name}: summary\n\n{summary_table(result['rows'])}")
    for note in result.get("notes", []):
        print(f"- {note}")
    print(f"- {NOISE_NOTE}", flush=True)


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m sfpo_rl.bench.{name}", description=description)
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/bench"), help="directory for <name>.json (created)"
    )
    parser.add_argument("--quick", action="store_true", help="the small, few-minute version (make bench)")
    return parser


def bench_main(
    name: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Parse the command line, run, print, write `<out>/<name>.json`; returns the result. `description` may be
    the module's docstring: its first line describes the command."""
    parser = base_parser(name, description.strip().splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result = {
        "benchmark": name,
        "quick": args.quick,
        "wall_s": time.perf_counter() - start,
        "machine": machine_info(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **result,
    }
    print_result(name, result)
    path = write_result(args.out, name, result)
    print(f"[bench] {name}: wrote {path} ({result['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return result
