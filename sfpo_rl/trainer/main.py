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

import contextlib
import json
import logging
import os
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sfpo_rl.data.io import DataError
from sfpo_rl.trainer.checkpoint import CheckpointError, CheckpointManager
from sfpo_rl.trainer.config import ConfigError, RunConfig, moved_override, register_schema, to_run_config
from sfpo_rl.trainer.learning_curve import plot_learning_curve
from sfpo_rl.trainer.run_dir import LOGS, PROVENANCE, SUMMARY, RunFinished, clear_earlier_run, start_point
from sfpo_rl.utils.console import WORKER_LOG_DIR_ENV, output_to
from sfpo_rl.utils.provenance import append_launch, launch_record
from sfpo_rl.workers.rollout_config import RolloutConfig

# The Hydra configs ship inside the package (sfpo_rl/configs is the repository's configs/ directory).
CONFIG_DIR = os.environ.get("SFPO_RL_CONFIG_DIR") or str(files("sfpo_rl") / "configs")
logger = logging.getLogger("sfpo_rl")

EXIT_BAD_INPUT = 2
EXIT_RUN_STOPPED = 3
FAILURE_REPORT = "failure.txt"


class RunStopped(RuntimeError):
    """The run stopped on a fault; the message says what failed and how to continue."""


def resolve_model_and_data(config: RunConfig) -> tuple[str, list[str], list[str]]:
    """The policy's HF directory and the train / val files; the built-in task is warm-started on first use."""
    model, data = config.model, config.data
    if model.path is not None and data.train_files is not None:
        return model.path, data.train_files, data.val_files
    from sfpo_rl.tiny.warmstart import ensure_warmstart

    start = time.perf_counter()
    print(f"[sfpo_rl] preparing the built-in tiny model and task in {model.cache_dir} ...", flush=True)
    warm = ensure_warmstart(model.cache_dir, warmstart_config(config))
    print(f"[sfpo_rl] warm-start model ready: {warm} ({time.perf_counter() - start:.0f} s)", flush=True)
    model_path = model.path or str(warm)
    if data.train_files is not None:
        return model_path, data.train_files, data.val_files
    return model_path, [str(warm / "train.jsonl")], [str(warm / "val.jsonl")]


def warmstart_config(config: RunConfig) -> Any:
    """The built-in model's warm-start options; its SFT must see exactly the prompt text the policy will get."""
    from sfpo_rl.tiny.warmstart import WarmStartConfig

    return WarmStartConfig.from_any(
        {**config.model.warmstart, "prompt_template": config.data.prompt_template}
    )


def check_context(max_positions: int | None, model: str, rollout: RolloutConfig) -> None:
    """A prompt plus its response must fit the model's context (vLLM would refuse the engine otherwise)."""
    needed = rollout.max_prompt_length + rollout.max_response_length
    if max_positions is not None and needed > max_positions:
        raise ConfigError(
            f"rollout.max_prompt_length + rollout.max_response_length = {rollout.max_prompt_length} + "
            f"{rollout.max_response_length} = {needed} tokens, more than the {max_positions} positions of {model} "
            "(max_position_embeddings); shorten them or use a model with a longer context"
        )


def check_lora_targets(config: RunConfig) -> None:
    """With LoRA on, every actor.lora.target_modules entry must name a layer of the model (ConfigError listing
    the model's names otherwise). Reads only the model's config; a model.path that cannot be read is left for
    `load_tokenizer` to report."""
    lora = config.actor.lora
    if not lora.enabled:
        return
    from transformers import AutoConfig, Qwen2Config

    from sfpo_rl.workers.lora import check_target_modules

    if config.model.path is None:
        # The built-in model is a Qwen2ForCausalLM (sfpo_rl.tiny.model); its layer names do not depend on sizes.
        check_target_modules(lora, Qwen2Config(num_hidden_layers=1), "the built-in model")
        return
    try:
        hf_config = AutoConfig.from_pretrained(config.model.path)
    except (OSError, ValueError, KeyError):
        return
    check_target_modules(lora, hf_config, f"model.path={config.model.path}")


def load_tokenizer(model_path: str, rollout: RolloutConfig) -> Any:
    """The policy's tokenizer, after checking that model.path is an HF model directory whose vocabulary covers
    every token id the tokenizer can produce and whose context holds a prompt plus its response (ConfigError
    naming the options otherwise)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(model_path)
    if not path.is_dir():
        raise ConfigError(f"model.path={model_path}: no such directory")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path={model_path}: not a Hugging Face model directory (no config.json)")
    try:
        model_config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"model.path={model_path}: cannot load the model config or tokenizer ({reason})"
        ) from None
    text_config = model_config.get_text_config()
    vocab_size = text_config.vocab_size
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"model.path={model_path}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{vocab_size} (config.json): token ids past it have no embedding; the tokenizer must belong to the model"
        )
    check_context(getattr(text_config, "max_position_embeddings", None), f"model.path={model_path}", rollout)
    return tokenizer


def build_data(config: RunConfig, tokenizer: Any, train_files: list[str], val_files: list[str]):
    from sfpo_rl.data.dataset import PromptDataset
    from sfpo_rl.data.loader import PromptLoader
    from sfpo_rl.protocol import Batch
    from sfpo_rl.trainer.ray_trainer import sampling_seeds

    data = config.data
    options = dict(
        max_prompt_length=config.rollout.max_prompt_length,
        overlong=data.overlong_prompts,
        prompt_template=data.prompt_template,
        reward_function=config.reward.custom_function,  # scores any data_source; else each needs a verifier
    )
    train = PromptDataset(train_files, tokenizer, **options)
    val = PromptDataset(val_files, tokenizer, **options)
    loader = PromptLoader(train, data.train_batch_size, seed=data.seed, shuffle=data.shuffle)
    n_val = len(val) if data.val_max_samples is None else min(len(val), data.val_max_samples)
    items = [val[i] for i in range(n_val)]
    val_batch = Batch.from_dict({key: [item[key] for item in items] for key in items[0]})
    val_batch["uid"] = [f"val-{i}" for i in range(n_val)]
    # The same seeds at every validation: differences between validations come from the policy alone.
    val_batch["sampling_seed"] = sampling_seeds(n_val, config.rollout.val_n)
    print(
        f"[sfpo_rl] data: {len(train)} train prompts ({train.num_filtered} over-long filtered), "
        f"{n_val} validation prompts",
        flush=True,
    )
    return loader, val_batch


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job; returns the run summary (also written to run_dir/summary.json)."""
    config = to_run_config(cfg)
    if config.model.path is None:  # the built-in model's context is known before it is built
        max_positions = warmstart_config(config).max_position_embeddings
        check_context(max_positions, "the built-in model (model.warmstart)", config.rollout)
    check_lora_targets(config)
    run_dir = Path(config.trainer.run_dir)
    try:
        resume_from = start_point(config.trainer)
    except RunFinished as finished:
        print(f"[sfpo_rl] {finished}", flush=True)
        print_summary(finished.summary)
        return finished.summary
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(resolved)
    (run_dir / FAILURE_REPORT).unlink(missing_ok=True)  # a report describes the latest attempt only
    model_path, train_files, val_files = resolve_model_and_data(config)
    tokenizer = load_tokenizer(model_path, config.rollout)
    loader, val_batch = build_data(config, tokenizer, train_files, val_files)
    if resume_from is None:
        clear_earlier_run(run_dir)
    append_launch(run_dir / PROVENANCE, launch_record(resolved, model_path))
    summary = train(config, model_path, loader, val_batch, resume_from)
    curve_png = plot_learning_curve(run_dir, title=run_dir.name)
    if curve_png is not None:
        summary["learning_curve"] = str(curve_png)
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    return summary


def train(
    config: RunConfig, model_path: str, loader: Any, val_batch: Any, resume_from: tuple[Path, dict] | None
) -> dict[str, Any]:
    """Start Ray and the worker groups, train, export; the groups are shut down however it ends."""
    from sfpo_rl.controller import WorkerError
    from sfpo_rl.trainer.ray_trainer import RLTrainer, TrainingHalted
    from sfpo_rl.trainer.workers import build_worker_groups

    run_dir = Path(config.trainer.run_dir)
    start_ray(config)
    start = time.perf_counter()
    groups = None
    try:
        groups = build_worker_groups(config, model_path)
        groups.write_pids(run_dir)
        print(
            f"[sfpo_rl] worker groups ready in {time.perf_counter() - start:.0f} s "
            f"(actor {groups.actor.world_size} ranks, rollout {groups.rollout.world_size}, "
            f"reward {groups.reward.world_size}); run dir {run_dir}",
            flush=True,
        )
        summary = RLTrainer(config, groups, loader, val_batch, resume_from).fit()
        if not config.trainer.verbose:
            summary["logs"] = str(run_dir / LOGS)
        if config.trainer.export_hf:
            adapter = str(run_dir / "final_adapter") if config.actor.lora.enabled else None
            groups.actor.export_hf(str(run_dir / "final_model"), adapter)
            summary["final_model"] = str(run_dir / "final_model")
            if adapter is not None:
                summary["final_adapter"] = adapter
    except (WorkerError, TrainingHalted) as exc:
        raise RunStopped(stop_report(run_dir, exc)) from None
    finally:
        if groups is not None:
            groups.shutdown()
    return summary


def start_ray(config: RunConfig) -> None:
    """Start or join Ray. Unless trainer.verbose, Ray's and the workers' own output goes to run_dir/logs/
    (the driver's part while Ray starts, each worker's for good), not to the console."""
    from sfpo_rl.controller import init_ray

    ray_cfg, verbose = config.ray, config.trainer.verbose
    logs = Path(config.trainer.run_dir) / LOGS
    env_vars = dict(ray_cfg.env_vars)
    if not verbose:
        env_vars[WORKER_LOG_DIR_ENV] = str(logs.resolve())
    elif not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in forwarded lines written to a file
    options = dict(address=ray_cfg.address, num_cpus=ray_cfg.num_cpus, namespace=ray_cfg.namespace)
    with contextlib.nullcontext() if verbose else output_to(logs / "driver.log"):
        init_ray(**options, env_vars=env_vars, log_to_driver=verbose)


def stop_report(run_dir: Path, exc: Exception) -> str:
    """What stopped the run (the failing worker's role and rank first) and where it can continue from. The
    whole text, worker traceback included, is written to run_dir/failure.txt; the returned message omits it."""
    notes = getattr(exc, "__notes__", [])
    full = "\n".join([str(exc), *notes])
    (run_dir / FAILURE_REPORT).write_text(full + "\n")
    headline = str(exc).split("\n--- worker traceback")[0]
    checkpoints = CheckpointManager(run_dir).committed()
    resume = (
        f"the last complete checkpoint is {checkpoints[0]}; run again with trainer.resume=auto to continue from it"
        if checkpoints
        else "no checkpoint was written yet (see trainer.save_every)"
    )
    logs = run_dir / LOGS
    return "\n".join(
        [f"the run stopped: {headline}", *notes, resume, f"full report: {run_dir / FAILURE_REPORT}"]
        + ([f"worker output: {logs}"] if logs.is_dir() else [])
    )


def print_summary(summary: dict[str, Any]) -> None:
    """The run's outcome in a few lines: accuracy before and after, the SFPO switch, where the results are."""

    def acc(key: str) -> str:
        return "n/a" if summary[key] is None else f"{100 * summary[key]:.1f}%"

    run_dir = Path(summary["run_dir"])
    switched = summary["sfpo_switched_off_after"]
    lines = [
        f"[sfpo_rl] done: {summary['steps']} steps, {summary['rollouts']} rollouts, "
        f"{summary['train_seconds']:.0f} s of training",
        f"[sfpo_rl] validation accuracy: {acc('val_acc_first')} before -> {acc('val_acc_last')} after "
        f"(best {acc('val_acc_best')})"
        if summary["val_history"]
        else "[sfpo_rl] validation: off (trainer.val_every=0 and trainer.val_before_train=false)",
        f"[sfpo_rl] SFPO switched off after step {switched}" if switched is not None else "",
        f"[sfpo_rl] run dir {run_dir}: metrics {run_dir / 'metrics.jsonl'}, summary {run_dir / SUMMARY}",
        f"[sfpo_rl] exported model: {summary['final_model']}" if "final_model" in summary else "",
        f"[sfpo_rl] exported LoRA adapter (PEFT): {summary['final_adapter']}"
        if "final_adapter" in summary
        else "",
        f"[sfpo_rl] learning curve: {summary['learning_curve']}" if "learning_curve" in summary else "",
        f"[sfpo_rl] Ray, vLLM and worker output: {summary['logs']}" if "logs" in summary else "",
    ]
    print("\n".join(line for line in lines if line), flush=True)


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
