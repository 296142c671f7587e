"""The single-process baseline of the one-box figures: the embedded default's GRPO step done in one process with
transformers alone, as a single-process trainer (TRL's GRPOTrainer, say) does it: `generate` with the KV cache,
the arithmetic reward scored inline, GRPO advantages, old log-probs, then ppo_mini_batch_size mini-batches of
the same PPO-clip loss (and entropy bonus, gradient clipping, AdamW) as the actor; no Ray, no vLLM, no weight
sync, torch's default threads. It reads the run's composed config (same model, data, prompts, samples, lengths,
learning rate) and writes metrics.jsonl rows like the trainer's (`timing/<phase>`, `timing/step`).

    python -m sfpo_rl.bench.single_process --run-dir DIR [Hydra overrides, e.g. model.path=... trainer.total_steps=4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sfpo_rl.algorithms.advantages import compute_advantage
from sfpo_rl.algorithms.logprob import entropy_from_logits, log_probs_from_logits
from sfpo_rl.algorithms.policy_loss import LossInputs, get_policy_loss
from sfpo_rl.bench.rollout_batches import left_padded
from sfpo_rl.protocol import Batch
from sfpo_rl.trainer.config import RunConfig
from sfpo_rl.trainer.metrics import timed


def compose(overrides: list[str]) -> RunConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sfpo_rl.trainer.config import register_schema, to_run_config
    from sfpo_rl.trainer.setup import CONFIG_DIR

    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return to_run_config(
            hydra_compose("config", overrides=["trainer.experiment_name=single_process", *overrides])
        )


def response_mask(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including each row's first eos (generate pads after it)."""
    after_eos = (responses == eos_id).long().cumsum(-1) - (responses == eos_id).long()
    return (after_eos == 0).long()


def forward(model, batch: Batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies [B, R] of the responses."""
    mask = batch["attention_mask"]
    width = batch["responses"].shape[1]
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        logits_to_keep=width + 1,
    ).logits[:, :-1]
    logits = logits.float() / temperature
    return log_probs_from_logits(logits, batch["responses"]), entropy_from_logits(logits)


@dataclass
class Baseline:
    """What the single process holds: the model and its optimizer, the data, the reward scorer."""

    config: RunConfig
    model: Any
    tokenizer: Any
    loader: Any
    scorer: Any
    optimizer: torch.optim.Optimizer
    policy_loss: Any


def setup(config: RunConfig) -> Baseline:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sfpo_rl.rewards.scoring import RewardScorer
    from sfpo_rl.trainer.setup import build_data, resolve_model_and_data

    model_path, train_files, val_files = resolve_model_and_data(config)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    loader, _ = build_data(config, tokenizer, train_files, val_files)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    # Verifiers inline: no child processes.
    scorer = RewardScorer(replace(config.reward, timeout_mode="signal"))
    actor = config.actor
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=actor.optimizer.lr,
        betas=actor.optimizer.betas,
        eps=actor.optimizer.eps,
        weight_decay=actor.optimizer.weight_decay,
    )
    return Baseline(
        config, model, tokenizer, loader, scorer, optimizer, get_policy_loss(actor.loss.policy_loss)
    )


@torch.no_grad()
def generate(b: Baseline, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, step: int) -> torch.Tensor:
    """Prompts and their sampled responses, n per prompt: `generate` with the KV cache."""
    rollout, tokenizer = b.config.rollout, b.tokenizer
    torch.manual_seed(b.config.trainer.seed * 1_000_003 + step)
    return b.model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=True,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=0,
        max_new_tokens=rollout.max_response_length,
        num_return_sequences=rollout.n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def rollouts(b: Baseline, prompts: Batch, prompt_mask: torch.Tensor, out: torch.Tensor, step: int) -> Batch:
    """`generate`'s output in the trainer's batch layout."""
    n = b.config.rollout.n
    responses = out[:, prompt_mask.shape[1] :]
    mask = response_mask(responses, b.tokenizer.eos_token_id)
    batch = prompts.repeat_interleave(n)
    batch["uid"] = [f"{step}-{i // n}" for i in range(len(batch))]
    batch["responses"], batch["response_mask"] = responses, mask
    batch["input_ids"] = out
    batch["attention_mask"] = torch.cat([prompt_mask.repeat_interleave(n, 0), mask], dim=1)
    return batch


def reward(b: Baseline, batch: Batch) -> torch.Tensor:
    """Token-level scores of the responses, the verifiers run inline."""
    from sfpo_rl.rewards.scoring import token_level_scores

    mask = batch["response_mask"]
    texts = b.tokenizer.batch_decode(
        [r[m.bool()] for r, m in zip(batch["responses"], mask)], skip_special_tokens=True
    )
    outcomes = b.scorer.score(texts, batch["ground_truth"], batch["data_source"], batch["extra_info"])
    return token_level_scores([o.score for o in outcomes], mask)


@torch.no_grad()
def old_log_probs(b: Baseline, batch: Batch) -> torch.Tensor:
    minis = batch.split_by_size(b.config.actor.batching.ppo_mini_batch_size)
    return torch.cat([forward(b.model, mini, b.config.rollout.temperature)[0] for mini in minis])


def update(b: Baseline, batch: Batch) -> None:
    """One pass of PPO-clip mini-batch updates with the entropy bonus and gradient clipping, as the actor."""
    actor = b.config.actor
    for mini in batch.split_by_size(actor.batching.ppo_mini_batch_size):
        log_probs, entropy = forward(b.model, mini, b.config.rollout.temperature)
        inputs = LossInputs(
            log_probs,
            mini["old_log_probs"],
            mini["advantages"],
            mini["response_mask"],
            clip_ratio_low=actor.loss.clip_ratio_low,
            clip_ratio_high=actor.loss.clip_ratio_high,
            loss_agg_mode=actor.loss.loss_agg_mode,
        )
        loss = b.policy_loss(inputs)[0] - actor.loss.entropy_coeff * inputs.aggregate(entropy)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(b.model.parameters(), actor.optimizer.grad_clip or float("inf"))
        b.optimizer.step()
        b.optimizer.zero_grad(set_to_none=True)


def train_step(b: Baseline, step: int) -> dict[str, Any]:
    """One GRPO step; its metrics row, with the trainer's timing keys."""
    t: dict[str, float] = {}
    start = time.perf_counter()
    prompts = b.loader.next_batch()
    prompt_ids, prompt_mask = left_padded(list(prompts["prompt_token_ids"]), b.tokenizer.pad_token_id)
    with timed(t, "generate"):
        out = generate(b, prompt_ids, prompt_mask, step)
    batch = rollouts(b, prompts, prompt_mask, out, step)
    mask = batch["response_mask"]
    with timed(t, "reward"):
        scores = reward(b, batch)
    with timed(t, "old_log_prob"):
        batch["old_log_probs"] = old_log_probs(b, batch)
    with timed(t, "advantage"):
        advantages, _ = compute_advantage("grpo", scores * mask, mask, batch["uid"])
    batch["advantages"] = advantages
    with timed(t, "update"):
        update(b, batch)
    t["timing/step"] = time.perf_counter() - start
    return {"step": step, **t, "reward/mean": float(scores.sum(-1).mean())}


def train(config: RunConfig, run_dir: Path) -> None:
    baseline = setup(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as metrics_file:
        for step in range(1, config.trainer.total_steps + 1):
            row = train_step(baseline, step)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            print(f"[single_process] step {step}: {row['timing/step']:.2f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sfpo_rl.bench.single_process", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="where metrics.jsonl goes")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's, one per core)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for sfpo-rl-train")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train(compose(args.overrides), args.run_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
