"""Batches in the rollout engine's padded layout (prompts left-padded, responses right-padded): prompts padded for
`generate`, and synthetic rollouts from given lengths or with a long tail of response lengths like a reasoning
model's. Torch only: the GPU check imports this on a machine without the rest of the stack."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sfpo_rl.protocol import Batch


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one left-padded batch: (input ids, attention mask)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def padded_rollouts(
    vocab_size: int,
    pad_id: int,
    prompt_lens: Sequence[int],
    response_lens: Sequence[int],
    prompt_width: int,
    response_width: int,
    generator: torch.Generator,
) -> Batch:
    """Rollouts of random tokens with these lengths and GRPO-like +-1 advantages: everything the actor's update
    needs except `old_log_probs` (compute them with the actor, so ratios start at 1)."""
    rows = len(prompt_lens)
    prompts = torch.full((rows, prompt_width), pad_id)
    responses = torch.full((rows, response_width), pad_id)
    prompt_mask = torch.zeros(rows, prompt_width, dtype=torch.long)
    response_mask = torch.zeros(rows, response_width, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        prompts[i, prompt_width - p :] = torch.randint(0, vocab_size, (p,), generator=generator)
        prompt_mask[i, prompt_width - p :] = 1
        responses[i, :r] = torch.randint(0, vocab_size, (r,), generator=generator)
        response_mask[i, :r] = 1
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    signs = torch.randint(0, 2, (rows, 1), generator=generator).float() * 2 - 1
    return Batch.from_dict(
        {
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask,
            "advantages": signs * response_mask,
        },
        meta={"temperature": 1.0},
    )


def long_tailed_lengths(
    count: int,
    median: int,
    max_ratio: float = 8.0,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Log-normal lengths with this median, cut at `max_ratio` x the median (sigma 1: about 2% reach the cut, a
    quarter are over twice the median), at least 1."""
    draws = torch.randn(count, generator=generator) * sigma + math.log(median)
    cap = int(max_ratio * median)
    return [max(1, min(cap, round(math.exp(x)))) for x in draws.tolist()]


def long_tailed_rollouts(
    vocab_size: int,
    pad_id: int,
    rows: int,
    prompt_range: tuple[int, int],
    median_response: int,
    max_ratio: float = 8.0,
    seed: int = 0,
) -> Batch:
    """`rows` rollouts, prompt lengths uniform in `prompt_range`, response lengths long-tailed up to
    `max_ratio` x `median_response`; the padded widths are the batch's longest prompt and response."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(prompt_range[0], prompt_range[1] + 1, (rows,), generator=g).tolist()
    response_lens = long_tailed_lengths(rows, median_response, max_ratio, generator=g)
    return padded_rollouts(
        vocab_size, pad_id, prompt_lens, response_lens, max(prompt_lens), max(response_lens), g
    )
