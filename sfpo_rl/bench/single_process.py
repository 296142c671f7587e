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
from dataclasses import replace
from pathlib import Path

import torch

from sfpo_rl.algorithms.advantages import compute_advantage
from sfpo_rl.algorithms.logprob import entropy_from_logits, log_probs_from_logits
from sfpo_rl.algorithms.policy_loss import LossInputs, get_policy_loss
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


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


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


def train(config: RunConfig, run_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sfpo_rl.rewards.scoring import RewardScorer, token_level_scores
    from sfpo_rl.trainer.setup import build_data, resolve_model_and_data

    model_path, train_files, val_files = resolve_model_and_data(config)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    loader, _ = build_data(config, tokenizer, train_files, val_files)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    scorer = RewardScorer(
        replace(config.reward, timeout_mode="signal")
    )  # verifiers inline: no child processes
    actor, rollout = config.actor, config.rollout
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=actor.optimizer.lr,
        betas=actor.optimizer.betas,
        eps=actor.optimizer.eps,
        weight_decay=actor.optimizer.weight_decay,
    )
    policy_loss = get_policy_loss(actor.loss.policy_loss)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = open(run_dir / "metrics.jsonl", "w")
    for step in range(1, config.trainer.total_steps + 1):
        t: dict[str, float] = {}
        start = time.perf_counter()
        prompts = loader.next_batch()
        prompt_ids, prompt_mask = left_padded(list(prompts["prompt_token_ids"]), pad_id)
        with timed(t, "generate"), torch.no_grad():
            torch.manual_seed(config.trainer.seed * 1_000_003 + step)
            out = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                do_sample=True,
                temperature=rollout.temperature,
                top_p=rollout.top_p,
                top_k=0,
                max_new_tokens=rollout.max_response_length,
                num_return_sequences=rollout.n,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
        responses = out[:, prompt_ids.shape[1] :]
        mask = response_mask(responses, eos_id)
        batch = prompts.repeat_interleave(rollout.n)
        batch["uid"] = [f"{step}-{i // rollout.n}" for i in range(len(batch))]
        batch["responses"], batch["response_mask"] = responses, mask
        batch["input_ids"] = out
        batch["attention_mask"] = torch.cat([prompt_mask.repeat_interleave(rollout.n, 0), mask], dim=1)
        with timed(t, "reward"):
            texts = tokenizer.batch_decode(
                [r[m.bool()] for r, m in zip(responses, mask)], skip_special_tokens=True
            )
            outcomes = scorer.score(texts, batch["ground_truth"], batch["data_source"], batch["extra_info"])
            scores = token_level_scores([o.score for o in outcomes], mask)
        with timed(t, "old_log_prob"), torch.no_grad():
            old_log_probs = torch.cat(
                [
                    forward(model, b, rollout.temperature)[0]
                    for b in batch.split_by_size(actor.batching.ppo_mini_batch_size)
                ]
            )
        with timed(t, "advantage"):
            advantages, _ = compute_advantage("grpo", scores * mask, mask, batch["uid"])
        batch["old_log_probs"], batch["advantages"] = old_log_probs, advantages
        with timed(t, "update"):
            for mini in batch.split_by_size(actor.batching.ppo_mini_batch_size):
                log_probs, entropy = forward(model, mini, rollout.temperature)
                inputs = LossInputs(
                    log_probs,
                    mini["old_log_probs"],
                    mini["advantages"],
                    mini["response_mask"],
                    clip_ratio_low=actor.loss.clip_ratio_low,
                    clip_ratio_high=actor.loss.clip_ratio_high,
                    loss_agg_mode=actor.loss.loss_agg_mode,
                )
                loss = policy_loss(inputs)[0] - actor.loss.entropy_coeff * inputs.aggregate(entropy)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), actor.optimizer.grad_clip or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        t["timing/step"] = time.perf_counter() - start
        row = {"step": step, **t, "reward/mean": float(scores.sum(-1).mean())}
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        print(f"[single_process] step {step}: {t['timing/step']:.2f} s", flush=True)
    metrics_file.close()


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
