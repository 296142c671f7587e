"""Short runs of the real trainer as the step-time, one-box and weight-sync benchmarks launch them, and how they
read a run's metrics.jsonl: the per-phase breakdown of a step and the weight sync's share of it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfpo_rl.bench.common import median

PHASES = ("generate", "reward", "old_log_prob", "ref_log_prob", "advantage", "update", "sync")
# What a timing run leaves out: validation, checkpoints, export and every logger but the console.
RUN_OVERRIDES = (
    "trainer.val_every=0",
    "trainer.val_before_train=false",
    "trainer.save_every=0",
    "trainer.export_hf=false",
    "trainer.resume=never",
    "trainer.logger=[console]",
)


def trainer_command(*overrides: str) -> list[str]:
    """The trainer's command line with the timing run's overrides and then these."""
    return [sys.executable, "-m", "sfpo_rl.trainer.main", *RUN_OVERRIDES, *overrides]


def pinned_model(cache_dir: str | None) -> tuple[str, ...]:
    """Overrides that give a run the default warm-started model and its data files by path (built first if
    the cache lacks it), as `sfpo-rl-train` with no model or data options would resolve them."""
    from sfpo_rl.tiny.warmstart import ensure_warmstart

    cache = cache_dir or os.environ.get("SFPO_RL_CACHE") or str(Path.home() / ".cache" / "sfpo_rl")
    print(f"[bench] resolving the warm-started model in {cache} ...", file=sys.stderr, flush=True)
    warm = ensure_warmstart(cache, {"prompt_template": None})
    return (
        f"model.path={warm}",
        f"data.train_files=[{warm / 'train.jsonl'}]",
        f"data.val_files=[{warm / 'val.jsonl'}]",
    )


def training_rows(metrics: Path) -> list[dict[str, Any]]:
    """The training rows (those with timing/step) of a metrics.jsonl that may still be being written: reading
    stops at a line that is not whole yet; a missing file has none."""
    if not metrics.is_file():
        return []
    rows = []
    for line in metrics.read_text().splitlines():
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            break
        if "timing/step" in parsed:
            rows.append(parsed)
    return rows


def _steady(rows: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    """The steps to take medians over: the first one pays one-off costs (first forward passes, allocator
    growth), so it is left out when there are more."""
    return rows[1:] if len(rows) > 1 else rows


def phase_breakdown(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per phase (and 'other', 'step') over the training rows of one metrics.jsonl."""
    rows = _steady([r for r in rows if "timing/step" in r])
    if not rows:
        raise ValueError("no training steps with timing/step in the metrics")
    out = {p: median([r[f"timing/{p}"] for r in rows]) for p in PHASES if f"timing/{p}" in rows[0]}
    out["other"] = median([r["timing/step"] - sum(r.get(f"timing/{p}", 0.0) for p in PHASES) for r in rows])
    out["step"] = median([r["timing/step"] for r in rows])
    return out


def breakdown_phases(breakdowns: Sequence[dict[str, float]]) -> list[str]:
    """The phases (then 'other', 'step') that any of these breakdowns has, in the step's order."""
    return [p for p in (*PHASES, "other", "step") if any(p in b for b in breakdowns)]


def step_share(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median over training steps (the first left out when there are more) of sync time, step time, their
    ratio and the engine's load statistics."""
    steps = _steady([r for r in rows if "timing/sync" in r and "timing/step" in r])
    if not steps:
        raise ValueError("no training steps with timing/sync and timing/step in the metrics")
    return {
        "sync_s": median([r["timing/sync"] for r in steps]),
        "step_s": median([r["timing/step"] for r in steps]),
        "fraction": median([r["timing/sync"] / r["timing/step"] for r in steps]),
        "mb": median([r["sync/load_weights_mb"] for r in steps]),
        "load_s": median([r["sync/load_weights_s"] for r in steps]),
    }
