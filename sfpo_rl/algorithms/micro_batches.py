"""Micro-batches formed by a token budget instead of a fixed row count.

Rows of similar length go together: sorted by response length (then prompt length), longest first, each
micro-batch takes rows while its cost stays within the budget. The cost is what the forward computes: padded, rows x (longest prompt + longest
response) of the micro-batch (the actor cuts the columns that are padding in every row); packed
(padding-free), the sum of the rows' real lengths. A row that alone exceeds the budget gets a micro-batch of
its own. The plan depends only on the lengths (ties keep row order), so a resumed run forms the same
micro-batches, and summing a mini-batch's loss over any split of it gives the same objective (the loss is
normalised by the mini-batch's global counts), so the split changes nothing but float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def row_lengths(attention_mask: torch.Tensor, response_width: int) -> tuple[list[int], list[int]]:
    """Real prompt and response tokens of every row of a [B, prompt + response] attention mask."""
    real = attention_mask.bool()
    prompt = real[:, : real.shape[1] - response_width].sum(-1)
    response = real[:, real.shape[1] - response_width :].sum(-1)
    return prompt.tolist(), response.tolist()


def micro_batch_cost(
    prompt_lens: Sequence[int], response_lens: Sequence[int], rows: Sequence[int], packed: bool
) -> int:
    """Tokens the forward computes for `rows`: their real tokens (packed), or rows x padded width. The padded
    forward keeps at least one prompt and one response column."""
    if not rows:
        return 0
    if packed:
        return sum(prompt_lens[i] + response_lens[i] for i in rows)
    width = max(1, max(prompt_lens[i] for i in rows)) + max(1, max(response_lens[i] for i in rows))
    return len(rows) * width


def plan_micro_batches(
    prompt_lens: Sequence[int],
    response_lens: Sequence[int],
    max_tokens: int,
    packed: bool,
    min_count: int = 0,
) -> list[list[int]]:
    """Row indices of each micro-batch, every row exactly once, longest responses first.

    `min_count` asks for at least that many micro-batches (ranks must run the same number of forward and
    backward passes): the costliest micro-batch is halved until there are enough, which only lowers costs.
    """
    if len(prompt_lens) != len(response_lens):
        raise ValueError(f"{len(prompt_lens)} prompt lengths but {len(response_lens)} response lengths")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    n = len(prompt_lens)
    if min_count > n:
        raise ValueError(f"cannot form {min_count} non-empty micro-batches from {n} rows")
    # Responses first: their lengths spread far wider than prompts', and a padded micro-batch is as wide as
    # its longest prompt plus its longest response.
    order = sorted(range(n), key=lambda i: (-response_lens[i], -prompt_lens[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and micro_batch_cost(prompt_lens, response_lens, [*groups[-1], i], packed) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    while len(groups) < min_count:
        costs = [
            micro_batch_cost(prompt_lens, response_lens, g, packed) if len(g) > 1 else -1 for g in groups
        ]
        j = costs.index(max(costs))
        half = (len(groups[j]) + 1) // 2
        groups[j : j + 1] = [groups[j][:half], groups[j][half:]]
    return groups


def fixed_micro_batches(n_rows: int, rows_per_micro_batch: int) -> list[list[int]]:
    """Consecutive rows, `rows_per_micro_batch` at a time (the last micro-batch may be shorter)."""
    return [
        list(range(i, min(i + rows_per_micro_batch, n_rows))) for i in range(0, n_rows, rows_per_micro_batch)
    ]
