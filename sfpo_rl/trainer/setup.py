"""Everything a run needs before and while its workers start, checked before any worker exists: the model and
data (the built-in task warm-started on first use), the tokenizer checked against the model, the prompt loader
and the validation batch, and Ray. Bench scripts use these too."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from sfpo_rl.trainer.config import ConfigError, RunConfig
from sfpo_rl.trainer.run_dir import RunDir
from sfpo_rl.utils.console import WORKER_LOG_DIR_ENV, output_to, say
from sfpo_rl.workers.rollout_config import RolloutConfig

# The Hydra configs ship inside the package (sfpo_rl/configs is the repository's configs/ directory).
CONFIG_DIR = os.environ.get("SFPO_RL_CONFIG_DIR") or str(files("sfpo_rl") / "configs")


def resolve_model_and_data(config: RunConfig) -> tuple[str, list[str], list[str]]:
    """The policy's HF directory and the train / val files; the built-in task is warm-started on first use."""
    model, data = config.model, config.data
    if model.path is not None and data.train_files is not None:
        return model.path, data.train_files, data.val_files
    from sfpo_rl.tiny.warmstart import ensure_warmstart

    start = time.perf_counter()
    say(f"preparing the built-in tiny model and task in {model.cache_dir} ...")
    warm = ensure_warmstart(model.cache_dir, warmstart_config(config))
    say(f"warm-start model ready: {warm} ({time.perf_counter() - start:.0f} s)")
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


def check_model_options(config: RunConfig) -> None:
    """What the model's options can be checked against before anything is built or downloaded."""
    if config.model.path is None:  # the built-in model's context is known before it is built
        max_positions = warmstart_config(config).max_position_embeddings
        check_context(max_positions, "the built-in model (model.warmstart)", config.rollout)
    check_lora_targets(config)


def prepare_model_and_data(config: RunConfig) -> tuple[str, Any, Any]:
    """The policy's HF directory, the train prompt loader and the validation batch (see `build_data`)."""
    model_path, train_files, val_files = resolve_model_and_data(config)
    tokenizer = load_tokenizer(model_path, config.rollout)
    return (model_path, *build_data(config, tokenizer, train_files, val_files))


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
    say(
        f"data: {len(train)} train prompts ({train.num_filtered} over-long filtered), "
        f"{n_val} validation prompts",
    )
    return loader, val_batch


def start_ray(config: RunConfig) -> None:
    """Start or join Ray. Unless trainer.verbose, Ray's and the workers' own output goes to run_dir/logs/
    (the driver's part while Ray starts, each worker's for good), not to the console."""
    from sfpo_rl.controller import init_ray

    ray_cfg, verbose = config.ray, config.trainer.verbose
    files = RunDir(config.trainer.run_dir)
    env_vars = dict(ray_cfg.env_vars)
    if not verbose:
        env_vars[WORKER_LOG_DIR_ENV] = str(files.logs.resolve())
    elif not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in forwarded lines written to a file
    options = dict(address=ray_cfg.address, num_cpus=ray_cfg.num_cpus, namespace=ray_cfg.namespace)
    with contextlib.nullcontext() if verbose else output_to(files.driver_log):
        init_ray(**options, env_vars=env_vars, log_to_driver=verbose)
