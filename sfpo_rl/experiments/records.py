"""What a study knows about each of its runs: the validation curve and how the run was made (its launches'
provenance, its wall-clock and the machine's load while it ran), read from a run directory or from the study's
curves file (`curves.json`, the raw data committed with a report: enough to redo the analysis without the runs).

A run counts as done when it finished (summary.json) or when the trainer stopped it for non-finite training
(`trainer.max_consecutive_nonfinite` non-finite steps in a row): such a run has lost everything, so its curve is
continued at accuracy 0 up to the planned validation steps (its drop is its peak) and it is listed by name.

`check_same_code` refuses runs made by different commits or from different starting weights (or a run whose
launches differ in either, or in the resolved config), naming the runs that differ.
"""

from __future__ import annotations

import calendar
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sfpo_rl.experiments.study import run_name
from sfpo_rl.trainer.learning_curve import Curve, load_curve
from sfpo_rl.trainer.run_dir import RunDir
from sfpo_rl.trainer.tracking import read_jsonl
from sfpo_rl.utils.provenance import read_launches

FINISHED, HALTED = "finished", "halted (non-finite training)"
CURVE_FIELDS = tuple(f.name for f in fields(Curve))


@dataclass
class RunRecord:
    arm: str
    lr: str  # the learning rate as the study file writes it
    seed: int
    curve: Curve
    status: str = FINISHED
    launches: list[dict[str, Any]] = field(
        default_factory=list
    )  # provenance, one per launch (none: not recorded)
    wall_clock_s: float | None = (
        None  # first launch's start to the run's last write (pauses between launches included)
    )
    load_avg_1m: dict[str, float] | None = None  # mean / max of the 1-minute load average over its steps

    @property
    def name(self) -> str:
        return run_name(self.arm, self.lr, self.seed)

    @property
    def cell(self) -> tuple[str, str]:
        return (self.arm, self.lr)

    def to_json(self) -> dict[str, Any]:
        run = {k: v for k, v in asdict(self).items() if k not in ("arm", "lr", "seed", "curve")}
        curve = asdict(self.curve)
        if not curve["step_values"]:  # a study that summarises no per-step metric: the file as before
            del curve["step_values"]
        return {**curve, "run": run}

    @classmethod
    def from_json(cls, arm: str, lr: str, seed: int, data: Mapping[str, Any]) -> RunRecord:
        curve = Curve(**{k: v for k, v in data.items() if k in CURVE_FIELDS})
        return cls(arm, lr, seed, curve, **data.get("run", {}))


# ------------------------------------------------------------------------------------------------ run dirs
def read_run(
    run_dir: Path, arm: str, lr: str, seed: int, step_metrics: Sequence[str] = ()
) -> RunRecord | None:
    """The run in `run_dir` if it is done (finished, or stopped for non-finite training), with the values of
    `step_metrics` at every training step; None otherwise."""
    files = RunDir(run_dir)
    summary = files.summary
    halted = _halted_steps(run_dir) if not summary.is_file() else None
    if not summary.is_file() and halted is None:
        return None
    curve = load_curve(run_dir, step_metrics)
    if halted is not None:
        _continue_at_zero(curve, halted)
    launches = read_launches(files.provenance)
    loads = [r["perf/load_avg_1m"] for r in read_jsonl(files.metrics) if "perf/load_avg_1m" in r]
    end = max(p.stat().st_mtime for p in (summary, files.metrics) if p.is_file())
    start = _epoch(launches[0].get("started_at")) if launches else None
    return RunRecord(
        arm,
        lr,
        seed,
        curve,
        status=FINISHED if halted is None else HALTED,
        launches=launches,
        wall_clock_s=None if start is None else end - start,
        load_avg_1m={"mean": sum(loads) / len(loads), "max": max(loads)} if loads else None,
    )


def _halted_steps(run_dir: Path) -> list[int] | None:
    """The validation steps the run had planned when the trainer stopped it for non-finite training; None when
    it did not (still running, killed, failed otherwise)."""
    files = RunDir(run_dir)
    config_file, metrics = files.config, files.metrics
    if not (config_file.is_file() and metrics.is_file()):
        return None
    from omegaconf import OmegaConf

    trainer = OmegaConf.load(config_file).trainer
    rows = read_jsonl(metrics)
    if not rows or rows[-1].get("train/nonfinite_in_a_row", 0) < trainer.max_consecutive_nonfinite:
        return None
    total, every = trainer.total_steps, trainer.val_every
    steps = set(range(every, total + 1, every)) | {total} if every > 0 else set()
    return sorted(steps | ({0} if trainer.val_before_train else set()))


def _continue_at_zero(curve: Curve, planned: Sequence[int]) -> None:
    """A stopped run's curve continued at accuracy 0 to the planned validation steps: rollouts go on at the
    run's rate per step, training seconds stop."""
    per_step = curve.train_rollouts[-1] / curve.train_steps[-1] if curve.train_steps else 0.0
    for step in planned:
        if curve.steps and step <= curve.steps[-1]:
            continue
        curve.steps.append(step)
        curve.rollouts.append(per_step * step)
        curve.seconds.append(curve.seconds[-1] if curve.seconds else 0.0)
        curve.acc.append(0.0)
        curve.acc_se.append(math.nan)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


# ------------------------------------------------------------------------------------------------ curves file
def write_curves(path: Path, records: Iterable[RunRecord]) -> None:
    """`{"<arm>@<lr>": {"<seed>": {<curve fields>, "run": {status, launches, wall_clock_s, load_avg_1m}}}}`,
    cells in the order given, seeds in order; written atomically."""
    data: dict[str, dict[str, Any]] = {}
    for record in records:
        data.setdefault(f"{record.arm}@{record.lr}", {})[record.seed] = record.to_json()
    text = json.dumps({cell: dict(sorted(runs.items())) for cell, runs in data.items()}) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_curves(path: Path) -> dict[str, RunRecord]:
    """The runs recorded in a curves file, by run name (none when the file does not exist)."""
    if not path.is_file():
        return {}
    records = {}
    for cell, runs in json.loads(path.read_text()).items():
        arm, lr = cell.rsplit("@", 1)
        for seed, data in runs.items():
            record = RunRecord.from_json(arm, lr, int(seed), data)
            records[record.name] = record
    return records


# ------------------------------------------------------------------------------------------------ provenance
class MixedRunsError(ValueError):
    """The runs were not all made by the same code from the same starting weights."""


def _origin(launch: Mapping[str, Any]) -> tuple[str | None, str | None]:
    return launch.get("commit"), launch.get("weights_sha256")


def _describe(origin: tuple[str | None, str | None]) -> str:
    commit, weights = origin
    return f"commit {commit[:12] if commit else 'not recorded'}, weights {weights[:12] if weights else 'not recorded'}"


def check_same_code(records: Sequence[RunRecord], allow_mixed: bool = False) -> list[str]:
    """Raise MixedRunsError naming the runs that differ when the runs' launches do not all share one commit and
    one starting-weights hash, or when a run's own launches differ in those or in the resolved config. With
    `allow_mixed` the same findings come back as warnings for the report instead."""
    groups: dict[tuple[str | None, str | None], list[str]] = {}
    within = []
    for record in records:
        origins = {_origin(launch) for launch in record.launches} or {(None, None)}
        configs = {launch.get("config_sha256") for launch in record.launches}
        if len(origins) > 1 or len(configs) > 1:
            within.append(record.name)
        for origin in origins:
            groups.setdefault(origin, []).append(record.name)
    if len(groups) <= 1 and not within:
        return []
    largest = max(groups, key=lambda g: len(groups[g]))
    lines = [
        f"{_describe(origin)}: {len(names)} run(s)" + ("" if origin == largest else f": {', '.join(names)}")
        for origin, names in sorted(groups.items(), key=lambda g: -len(g[1]))
    ]
    if within:
        lines.append(f"runs whose launches differ in commit, weights or config: {', '.join(within)}")
    if not allow_mixed:
        raise MixedRunsError(
            "the runs were not all made by the same code from the same starting weights:\n  "
            + "\n  ".join(lines)
            + "\nrerun the odd runs at one commit, or pass --allow-mixed-commits to analyse them together "
            "(the report then lists them)"
        )
    return [
        "Runs made by different code or starting weights, analysed together (--allow-mixed-commits): "
        + "; ".join(lines)
    ]
