"""`sfpo-rl-train`: compose the Hydra config, prepare model and data, start Ray and the worker groups, train.

With no arguments it runs the embedded default: SFPO on the built-in arithmetic task with the tiny
warm-started model, on CPU (real vLLM, real Ray, real FSDP2 over gloo). Any option can be overridden on the
command line, e.g. `sfpo-rl-train algorithm=grpo trainer.total_steps=10 rollout.n=4`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sfpo_rl.data.io import DataError
from sfpo_rl.trainer.config import ConfigError, Validated, register_schema, validate

CONFIG_DIR = os.environ.get("SFPO_RL_CONFIG_DIR") or str(Path(__file__).resolve().parents[2] / "configs")
logger = logging.getLogger("sfpo_rl")


def resolve_model_and_data(cfg: DictConfig) -> tuple[str, list[str], list[str]]:
    """The policy's HF directory and the train / val files; the built-in task is warm-started on first use."""
    data = cfg.data
    if cfg.model.path is not None and data.train_files is not None:
        return cfg.model.path, list(data.train_files), list(data.val_files)
    from sfpo_rl.tiny.warmstart import ensure_warmstart

    start = time.perf_counter()
    print(f"[sfpo_rl] preparing the built-in tiny model and task in {cfg.model.cache_dir} ...", flush=True)
    # The SFT must see exactly the prompt text the policy will get.
    warm = ensure_warmstart(
        cfg.model.cache_dir, {**cfg.model.warmstart, "prompt_template": data.prompt_template}
    )
    print(f"[sfpo_rl] warm-start model ready: {warm} ({time.perf_counter() - start:.0f} s)", flush=True)
    model_path = cfg.model.path or str(warm)
    if data.train_files is not None:
        return model_path, list(data.train_files), list(data.val_files)
    return model_path, [str(warm / "train.jsonl")], [str(warm / "val.jsonl")]


def build_data(
    cfg: DictConfig, parts: Validated, model_path: str, train_files: list[str], val_files: list[str]
):
    from transformers import AutoTokenizer

    from sfpo_rl.data.dataset import PromptDataset
    from sfpo_rl.data.loader import PromptLoader
    from sfpo_rl.protocol import Batch
    from sfpo_rl.trainer.ray_trainer import sampling_seeds

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    options = dict(
        max_prompt_length=parts.rollout.max_prompt_length,
        overlong=cfg.data.overlong_prompts,
        prompt_template=cfg.data.prompt_template,
    )
    train = PromptDataset(train_files, tokenizer, **options)
    val = PromptDataset(val_files, tokenizer, **options)
    loader = PromptLoader(train, cfg.data.train_batch_size, seed=cfg.data.seed, shuffle=cfg.data.shuffle)
    n_val = len(val) if cfg.data.val_max_samples is None else min(len(val), cfg.data.val_max_samples)
    items = [val[i] for i in range(n_val)]
    val_batch = Batch.from_dict({key: [item[key] for item in items] for key in items[0]})
    val_batch["uid"] = [f"val-{i}" for i in range(n_val)]
    # The same seeds at every validation: differences between validations come from the policy alone.
    val_batch["sampling_seed"] = sampling_seeds(n_val, parts.rollout.val_n)
    print(
        f"[sfpo_rl] data: {len(train)} train prompts ({train.num_filtered} over-long filtered), "
        f"{n_val} validation prompts",
        flush=True,
    )
    return loader, val_batch


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job; returns the run summary (also written to run_dir/summary.json)."""
    from sfpo_rl.controller import init_ray
    from sfpo_rl.trainer.ray_trainer import RLTrainer
    from sfpo_rl.trainer.workers import build_worker_groups

    parts = validate(cfg)
    run_dir = Path(cfg.trainer.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    model_path, train_files, val_files = resolve_model_and_data(cfg)
    loader, val_batch = build_data(cfg, parts, model_path, train_files, val_files)

    init_ray(
        address=cfg.ray.address,
        num_cpus=cfg.ray.num_cpus,
        namespace=cfg.ray.namespace,
        env_vars=dict(cfg.ray.env_vars),
    )
    start = time.perf_counter()
    groups = build_worker_groups(cfg, parts, model_path)
    print(
        f"[sfpo_rl] worker groups ready in {time.perf_counter() - start:.0f} s "
        f"(actor {groups.actor.world_size} ranks, rollout {groups.rollout.world_size}, "
        f"reward {groups.reward.world_size}); run dir {run_dir}",
        flush=True,
    )
    try:
        trainer = RLTrainer(cfg, parts, groups, loader, val_batch)
        summary = trainer.fit()
        if cfg.trainer.export_hf:
            groups.actor.export_hf(str(run_dir / "final_model"))
            summary["final_model"] = str(run_dir / "final_model")
    finally:
        groups.shutdown()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    def fmt(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    print(
        "[sfpo_rl] done: "
        + ", ".join(
            f"{key}={fmt(summary[key])}"
            for key in (
                "steps",
                "val_acc_first",
                "val_acc_last",
                "val_acc_best",
                "sfpo_switched_off_after",
                "train_seconds",
                "run_dir",
            )
        ),
        flush=True,
    )


register_schema()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, DataError) as exc:
        print(f"sfpo-rl-train: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_entry()


if __name__ == "__main__":
    main()
