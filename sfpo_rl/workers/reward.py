"""Reward worker: decode the sampled responses, verify them against the ground truth, place the rewards.

`BatchRewarder` does the work in the calling process (tests, evaluation scripts); `RewardWorker` is its thin
Ray shell. A group of reward workers scores a batch in parallel (DP_SPLIT), and each worker can run several
verifier processes (`reward.num_processes`).

Output columns (per sample, so they stay correct when the chunks of several workers are concatenated):
`token_level_scores` [B, R] (the reward on the last response token, zeros elsewhere), `acc` [B] (1.0 when the
verifier judged the answer correct, independent of any format shaping), `verifier_error` / `verifier_timeout`
[B] (1.0 when that sample's verification raised / ran out of time and was scored 0). `reward_metrics`
summarises a scored batch on the driver.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from sfpo_rl.controller import Dispatch, Worker, register
from sfpo_rl.protocol import Batch
from sfpo_rl.rewards.scoring import RewardConfig, RewardScorer, token_level_scores
from sfpo_rl.rewards.verifier_pool import ERROR, TIMEOUT

REQUIRED = ("responses", "response_mask", "ground_truth", "data_source")


def decode_responses(tokenizer: Any, responses: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """The text of each row's real response tokens (special tokens such as eos dropped)."""
    ids = [row[mask.bool()].tolist() for row, mask in zip(responses, response_mask)]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


class BatchRewarder:
    """Scores rollout batches: tokenizer for decoding plus a `RewardScorer` (verifiers, time limits)."""

    def __init__(
        self, tokenizer_path: str | os.PathLike, config: RewardConfig | Mapping[str, Any] | None = None
    ):
        from transformers import AutoTokenizer

        self.config = RewardConfig.from_any(config)
        self.scorer = RewardScorer(self.config)  # bad options fail here, before any model is loaded
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))

    def compute_score(self, batch: Batch) -> Batch:
        missing = [key for key in REQUIRED if key not in batch]
        if missing:
            raise KeyError(f"reward.compute_score: the batch lacks {missing}; it has {sorted(batch.keys())}")
        mask = batch["response_mask"]
        texts = decode_responses(self.tokenizer, batch["responses"], mask)
        extra = list(batch["extra_info"]) if "extra_info" in batch else None
        outcomes = self.scorer.score(texts, list(batch["ground_truth"]), list(batch["data_source"]), extra)

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).reshape(len(outcomes))

        return Batch.from_dict(
            {
                "token_level_scores": token_level_scores(column([o.score for o in outcomes]), mask),
                "acc": column([float(o.acc) for o in outcomes]),
                "verifier_error": column([float(o.status == ERROR) for o in outcomes]),
                "verifier_timeout": column([float(o.status == TIMEOUT) for o in outcomes]),
            }
        )

    def close(self) -> None:
        self.scorer.close()


def reward_metrics(batch: Batch) -> dict[str, float]:
    """Mean reward, accuracy, verifier error / timeout counts and response length of a scored batch."""
    if len(batch) == 0:
        return {}
    out = {
        "reward/mean": float(batch["token_level_scores"].sum(-1).mean()),
        "reward/acc": float(batch["acc"].mean()),
        "reward/verifier_errors": float(batch["verifier_error"].sum()),
        "reward/verifier_timeouts": float(batch["verifier_timeout"].sum()),
    }
    if "response_mask" in batch:
        out["reward/response_length"] = float(batch["response_mask"].sum(-1).float().mean())
    return out


class RewardWorker(Worker):
    """Ray shell of one `BatchRewarder`: `compute_score` splits the batch across the group's ranks."""

    def __init__(
        self, tokenizer_path: str | os.PathLike, config: RewardConfig | Mapping[str, Any] | None = None
    ):
        self.rewarder = BatchRewarder(tokenizer_path, config)

    @register(Dispatch.DP_SPLIT)
    def compute_score(self, batch: Batch) -> Batch:
        return self.rewarder.compute_score(batch)

    @register(Dispatch.ALL)
    def close(self) -> None:
        self.rewarder.close()
