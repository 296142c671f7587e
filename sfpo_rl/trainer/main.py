"""`sfpo-rl-train`: compose the Hydra config, prepare model and data, start Ray and the worker groups, train.

With no arguments it runs the embedded default: SFPO on the built-in arithmetic task with the tiny
warm-started model, on CPU (real vLLM, real Ray, real FSDP2 over gloo). Any option can be overridden on the
command line, e.g. `sfpo-rl-train algorithm=grpo trainer.total_steps=10 rollout.n=4`.

Failures end the job with a short message on stderr, no traceback: exit code 2 for bad input (config, data,
model, a damaged checkpoint to resume from), checked before any worker starts; exit code 3 when the run stops
on a fault (a worker failed or died, training kept going non-finite). The message names the failing worker's
role and rank and the last complete checkpoint to continue from with `trainer.resume=auto`; the full report,
worker traceback included, goes to run_dir/failure.txt. run_dir/workers.json lists every worker's pid.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sfpo_rl.data.io import DataError
from sfpo_rl.trainer.checkpoint import CheckpointError, CheckpointManager
from sfpo_rl.trainer.config import ConfigError, RunConfig, moved_override, register_schema, to_run_config
from sfpo_rl.trainer.learning_curve import plot_learning_curve
from sfpo_rl.trainer.run_dir import RunDir
from sfpo_rl.trainer.setup import CONFIG_DIR, check_model_options, prepare_model_and_data, start_ray
from sfpo_rl.trainer.start_point import RunFinished, clear_earlier_run, start_point
from sfpo_rl.utils.console import say
from sfpo_rl.utils.provenance import append_launch, launch_record

logger = logging.getLogger("sfpo_rl")

EXIT_BAD_INPUT = 2
EXIT_RUN_STOPPED = 3


class RunStopped(RuntimeError):
    """The run stopped on a fault; the message says what failed and how to continue."""


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job; returns the run summary (also written to run_dir/summary.json)."""
    config = to_run_config(cfg)
    check_model_options(config)
    run_dir = Path(config.trainer.run_dir)
    files = RunDir(run_dir)
    try:
        resume_from = start_point(config.trainer)
    except RunFinished as finished:
        say(str(finished))
        print_summary(finished.summary)
        return finished.summary
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    files.config.write_text(resolved)
    files.failure_report.unlink(missing_ok=True)  # a report describes the latest attempt only
    model_path, loader, val_batch = prepare_model_and_data(config)
    if resume_from is None:
        clear_earlier_run(run_dir)
    append_launch(files.provenance, launch_record(resolved, model_path))
    summary = train(config, model_path, loader, val_batch, resume_from)
    curve_png = plot_learning_curve(run_dir, title=run_dir.name)
    if curve_png is not None:
        summary["learning_curve"] = str(curve_png)
    files.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    return summary


def train(
    config: RunConfig, model_path: str, loader: Any, val_batch: Any, resume_from: tuple[Path, dict] | None
) -> dict[str, Any]:
    """Start Ray and the worker groups, train, export; the groups are shut down however it ends."""
    from sfpo_rl.controller import WorkerError
    from sfpo_rl.trainer.ray_trainer import RLTrainer, TrainingHalted
    from sfpo_rl.trainer.worker_groups import build_worker_groups

    run_dir = Path(config.trainer.run_dir)
    files = RunDir(run_dir)
    start_ray(config)
    start = time.perf_counter()
    groups = None
    try:
        groups = build_worker_groups(config, model_path)
        groups.write_pids(run_dir)
        say(
            f"worker groups ready in {time.perf_counter() - start:.0f} s "
            f"(actor {groups.actor.world_size} ranks, rollout {groups.rollout.world_size}, "
            f"reward {groups.reward.world_size}); run dir {run_dir}",
        )
        summary = RLTrainer(config, groups, loader, val_batch, resume_from).fit()
        if not config.trainer.verbose:
            summary["logs"] = str(files.logs)
        if config.trainer.export_hf:
            adapter = str(files.final_adapter) if config.actor.lora.enabled else None
            groups.actor.export_hf(str(files.final_model), adapter)
            summary["final_model"] = str(files.final_model)
            if adapter is not None:
                summary["final_adapter"] = adapter
    except (WorkerError, TrainingHalted) as exc:
        raise RunStopped(stop_report(run_dir, exc)) from None
    finally:
        if groups is not None:
            groups.shutdown()
    return summary


def stop_report(run_dir: Path, exc: Exception) -> str:
    """What stopped the run (the failing worker's role and rank first) and where it can continue from. The
    whole text, worker traceback included, is written to run_dir/failure.txt; the returned message omits it."""
    notes = getattr(exc, "__notes__", [])
    full = "\n".join([str(exc), *notes])
    files = RunDir(run_dir)
    files.failure_report.write_text(full + "\n")
    headline = str(exc).split("\n--- worker traceback")[0]
    checkpoints = CheckpointManager(run_dir).committed()
    resume = (
        f"the last complete checkpoint is {checkpoints[0]}; run again with trainer.resume=auto to continue from it"
        if checkpoints
        else "no checkpoint was written yet (see trainer.save_every)"
    )
    return "\n".join(
        [f"the run stopped: {headline}", *notes, resume, f"full report: {files.failure_report}"]
        + ([f"worker output: {files.logs}"] if files.logs.is_dir() else [])
    )


def print_summary(summary: dict[str, Any]) -> None:
    """The run's outcome in a few lines: accuracy before and after, the SFPO switch, where the results are."""

    def acc(key: str) -> str:
        return "n/a" if summary[key] is None else f"{100 * summary[key]:.1f}%"

    files = RunDir(summary["run_dir"])
    switched = summary["sfpo_switched_off_after"]
    history = summary["val_history"]
    first_step = history[0][0] if history else 0
    first = "before" if first_step == 0 else f"at step {first_step}"
    lines = [
        f"done: {summary['steps']} steps, {summary['rollouts']} rollouts, {summary['train_seconds']:.0f} s of training",
        f"validation accuracy: {acc('val_acc_first')} {first} -> {acc('val_acc_last')} after "
        f"(best {acc('val_acc_best')})"
        if history
        else "validation: off (trainer.val_every=0 and trainer.val_before_train=false)",
        f"SFPO switched off after step {switched}" if switched is not None else "",
        f"run dir {files.path}: metrics {files.metrics}, summary {files.summary}",
        f"exported model: {summary['final_model']}" if "final_model" in summary else "",
        f"exported LoRA adapter (PEFT): {summary['final_adapter']}" if "final_adapter" in summary else "",
        f"learning curve: {summary['learning_curve']}" if "learning_curve" in summary else "",
        f"Ray, vLLM and worker output: {summary['logs']}" if "logs" in summary else "",
    ]
    say(*(line for line in lines if line))


register_schema()


_composed = False  # set once Hydra has composed the config and called the job


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> None:
    global _composed
    _composed = True
    try:
        run(cfg)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"sfpo-rl-train: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except RunStopped as exc:
        import ray

        ray.shutdown()  # flushes the workers' forwarded logs first, so the message is the last thing printed
        print(f"sfpo-rl-train: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_RUN_STOPPED)


def main() -> None:
    try:
        _hydra_entry()
    except SystemExit as exc:
        # Hydra reports an override it cannot compose (a misspelt or mistyped option) and exits 1: bad input.
        if exc.code == 1 and not _composed:
            if moved := moved_override(sys.argv[1:]):
                print(f"sfpo-rl-train: {moved}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        raise


if __name__ == "__main__":
    main()
