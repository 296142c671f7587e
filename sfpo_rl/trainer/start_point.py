"""Where a launch starts, decided from what its run directory holds before any worker starts.

`trainer.resume=auto` (the default) continues the run from its newest intact checkpoint. A finished run (its
summary.json covers trainer.total_steps) is reported and left alone, and a finished run that saved no checkpoint
cannot be continued: the launch is refused rather than training again from step 1 into the same directory. A
run that stopped before its first checkpoint starts over. `never` starts over; a path continues from that
checkpoint. Starting over replaces the earlier run's metrics, checkpoints, summary, logs and exported model, so no
step is ever logged twice and no old checkpoint outlives the new run's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sfpo_rl.trainer.checkpoint import CheckpointManager
from sfpo_rl.trainer.config import TrainerConfig
from sfpo_rl.trainer.run_dir import RunDir
from sfpo_rl.utils.console import say
from sfpo_rl.utils.options import ConfigError


class RunFinished(Exception):
    """The run directory already holds a finished run of at least trainer.total_steps steps."""

    def __init__(self, run_dir: Path, summary: dict[str, Any]):
        self.summary = summary
        super().__init__(
            f"{run_dir} holds a finished run of {summary['steps']} steps; nothing to do (raise "
            "trainer.total_steps to continue it, trainer.resume=never to train it again, or give a new "
            "trainer.run_dir)"
        )


def start_point(trainer: TrainerConfig) -> tuple[Path, dict[str, Any]] | None:
    """The verified checkpoint to continue from, with its trainer state, or None to start at step 1.

    Raises RunFinished for a finished run, ConfigError for one that cannot be continued, and CheckpointError
    for a named checkpoint that is damaged or incomplete.
    """
    run_dir = Path(trainer.run_dir)
    checkpoints = CheckpointManager(run_dir, trainer.keep_last, trainer.verify_checksums)
    if trainer.resume == "never":
        return None
    if trainer.resume != "auto":
        return Path(trainer.resume), checkpoints.load(trainer.resume)
    summary = finished_run(run_dir)
    if summary is not None and summary["steps"] >= trainer.total_steps:
        raise RunFinished(run_dir, summary)
    latest = checkpoints.latest()
    if latest is None and summary is not None:
        raise ConfigError(
            f"trainer.run_dir={run_dir} holds a finished run of {summary['steps']} steps and no checkpoint to "
            "continue it from (trainer.save_every=0?); give a new trainer.run_dir, or trainer.resume=never to "
            "train again from step 1 in this one"
        )
    return latest


def finished_run(run_dir: Path) -> dict[str, Any] | None:
    """The summary a finished run left in `run_dir`, or None."""
    path = RunDir(run_dir).summary
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        int(summary["steps"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"trainer.run_dir: {path} is unreadable ({exc}); remove it, or give a new trainer.run_dir"
        ) from None
    return summary


def clear_earlier_run(run_dir: Path) -> None:
    """Before a run starts at step 1: remove what an earlier run left (its metrics are replaced as the new
    run logs), saying what."""
    files = RunDir(run_dir)
    earlier = (files.checkpoints, files.summary, files.final_model, files.logs, files.provenance)
    gone = [path for path in earlier if path.exists()]
    metrics = files.metrics
    if metrics.is_file() and metrics.stat().st_size:
        gone.append(metrics)
    if not gone:
        return
    for path in gone:
        if path.is_dir():
            shutil.rmtree(path)
        elif path != metrics:
            path.unlink()
    names = ", ".join(p.name for p in gone)
    say(f"starting at step 1 in {run_dir}: replacing the earlier run's {names}")
