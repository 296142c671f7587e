"""Metric sinks: a JSONL file in the run directory (always), plus console, tensorboard, wandb, mlflow by config.

`trainer.logger=[console,tensorboard]` picks the sinks. The JSONL file is the record of truth: one line per
step, appended and flushed, so a killed run keeps every step it finished and a resumed run continues it (a run
that starts at step 1 replaces it: no step is ever logged twice).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sfpo_rl.trainer.run_dir import RunDir

KNOWN_LOGGERS = ("console", "tensorboard", "wandb", "mlflow")


def _plain(value: Any) -> float | int | str | None:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; a missing value is honest
    return value


class JsonlSink:
    """`resume_from_step`: keep the lines up to that step (the steps after it will be recomputed); None: a run
    starting at step 1 replaces the file."""

    def __init__(self, path: Path, resume_from_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_from_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _line_step(line) <= resume_from_step]
        path.write_text("".join(line + "\n" for line in kept))
        self._file = path.open("a")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable (half-written) line is dropped on resume


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class ConsoleSink:
    """Prints one compact progress line per step: position, the numbers people watch, time left (training
    steps at their measured pace plus the validations still due at their measured length)."""

    KEYS = (
        ("reward/mean", "reward"),
        ("reward/acc", "acc"),
        ("val/acc", "val_acc"),
        ("actor/pg_loss", "loss"),
        ("actor/entropy", "ent"),
        ("sfpo/active", "sfpo"),
        ("sampling/gen_rounds", "rounds"),  # generation rounds (with algorithm.filter_groups.enable)
        ("perf/rollouts", "rollouts"),  # generated so far, groups filtered out included
        ("timing/step", "sec"),
    )

    def __init__(
        self, total_steps: int | None = None, val_every: int = 0, clock: Callable[[], float] = time.monotonic
    ):
        self.total_steps = total_steps
        self.val_every = val_every
        self.clock = clock
        self.first: tuple[int, float] | None = None  # (step, time) of the first line this process printed
        self.val_seconds: list[float] = []  # each validation's duration, as measured
        self.val_seconds_since_first = 0.0  # the part of the time since the first line spent validating

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        now = self.clock()
        position = f"step {step}" if not self.total_steps else f"step {step}/{self.total_steps}"
        parts = [position]
        for key, short in self.KEYS:
            if key in metrics and metrics[key] is not None:
                v = _plain(metrics[key])
                parts.append(f"{short}={v:.4g}" if isinstance(v, float) else f"{short}={v}")
        validated = metrics.get("timing/validate")
        if validated is not None:
            self.val_seconds.append(float(_plain(validated)))
        if self.first is None:
            self.first = (step, now)
        elif self.total_steps and step > self.first[0]:
            if validated is not None:
                self.val_seconds_since_first += self.val_seconds[-1]
            train_seconds = now - self.first[1] - self.val_seconds_since_first
            per_step = max(0.0, train_seconds) / (step - self.first[0])
            per_validation = sum(self.val_seconds) / len(self.val_seconds) if self.val_seconds else None
            seconds = eta_seconds(step, self.total_steps, per_step, self.val_every, per_validation)
            untimed = per_validation is None and validations_after(step, self.total_steps, self.val_every)
            parts.append(f"eta {'>' if untimed else ''}{_duration(seconds)}")
        print(" | ".join(parts), flush=True)

    def close(self) -> None:
        pass


def due(step: int, every: int, total_steps: int) -> bool:
    """Whether a periodic action (validation, checkpoint) runs after `step`: every `every` steps and after the
    last one; never when `every` is 0."""
    return every > 0 and (step % every == 0 or step == total_steps)


def validations_after(step: int, total_steps: int, every: int) -> int:
    """How many validations are still due after `step` (the steps in step+1 .. total_steps that validate)."""
    if every <= 0 or step >= total_steps:
        return 0
    return total_steps // every - step // every + (1 if total_steps % every else 0)


def eta_seconds(
    step: int, total_steps: int, seconds_per_step: float, val_every: int, seconds_per_validation: float | None
) -> float:
    """Time left after `step`: the remaining training steps, plus the remaining validations when their length
    is known (None: not measured yet, so left out)."""
    remaining = max(0, total_steps - step) * seconds_per_step
    if seconds_per_validation is not None:
        remaining += validations_after(step, total_steps, val_every) * seconds_per_validation
    return remaining


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class TensorboardSink:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for k, v in metrics.items():
            v = _plain(v)
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, project: str, name: str, config: dict, run_dir: Path):
        import wandb

        self.run = wandb.init(project=project, name=name, config=config, dir=str(run_dir), resume="allow")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log({k: _plain(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    def __init__(self, experiment: str, name: str, config: dict):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config).items()})

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        values = {k.replace("@", "_at_"): _plain(v) for k, v in metrics.items()}
        self.mlflow.log_metrics({k: v for k, v in values.items() if isinstance(v, int | float)}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    """Fans each step's metrics out to the JSONL file and the configured sinks."""

    def __init__(
        self,
        run_dir: str | Path,
        loggers: Sequence[str],
        *,
        project: str = "sfpo_rl",
        experiment: str = "run",
        config: dict | None = None,
        resume_from_step: int | None = None,
        total_steps: int | None = None,
        val_every: int = 0,
    ):
        unknown = [name for name in loggers if name not in KNOWN_LOGGERS]
        if unknown:
            raise ValueError(
                f"trainer.logger: unknown logger(s) {unknown}; choose from {list(KNOWN_LOGGERS)}"
            )
        files = RunDir(run_dir)
        self.metrics_path = files.metrics
        self.sinks: list[Any] = [JsonlSink(self.metrics_path, resume_from_step)]
        for name in loggers:
            if name == "console":
                self.sinks.append(ConsoleSink(total_steps, val_every))
            elif name == "tensorboard":
                self.sinks.append(TensorboardSink(files.tensorboard))
            elif name == "wandb":
                self.sinks.append(WandbSink(project, experiment, config or {}, run_dir))
            elif name == "mlflow":
                self.sinks.append(MlflowSink(project, experiment, config or {}))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
