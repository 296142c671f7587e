"""Token-budget micro-batch planning: budgets, row coverage, grouping by length, determinism, equal counts."""

import random

import pytest
import torch

from sfpo_rl.algorithms.micro_batches import (
    fixed_micro_batches,
    micro_batch_cost,
    plan_micro_batches,
    row_lengths,
)


def _long_tailed(n: int, seed: int) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    prompts = [rng.randint(4, 16) for _ in range(n)]
    responses = [min(int(rng.lognormvariate(3.0, 0.8)) + 1, 160) for _ in range(n)]
    return prompts, responses


def test_cost_hand_worked():
    prompts, responses = [3, 5, 2], [10, 4, 0]
    # Padded: rows x (longest prompt + longest response); at least one column of each.
    assert micro_batch_cost(prompts, responses, [0, 1], packed=False) == 2 * (5 + 10)
    assert micro_batch_cost(prompts, responses, [2], packed=False) == 2 + 1
    # Packed: the real tokens only.
    assert micro_batch_cost(prompts, responses, [0, 1, 2], packed=True) == 13 + 9 + 2
    assert micro_batch_cost(prompts, responses, [], packed=True) == 0


def test_plan_hand_worked():
    # Responses 10, 28, 6, 26, 8 (prompt 2 each): longest first -> rows 1, 3, 0, 4, 2.
    prompts, responses = [2] * 5, [10, 28, 6, 26, 8]
    assert plan_micro_batches(prompts, responses, 60, packed=False) == [[1, 3], [0, 4, 2]]
    assert plan_micro_batches(prompts, responses, 40, packed=True) == [[1], [3, 0], [4, 2]]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_covers_every_row_once_within_budget(packed, seed):
    prompts, responses = _long_tailed(64, seed)
    budget = 400
    groups = plan_micro_batches(prompts, responses, budget, packed)
    assert sorted(i for g in groups for i in g) == list(range(64))
    for g in groups:
        assert micro_batch_cost(prompts, responses, g, packed) <= budget or len(g) == 1
    # Fewer forwards than fixed-count micro-batches sized for the longest row within the same budget.
    longest = max(micro_batch_cost(prompts, responses, [i], packed=False) for i in range(64))
    assert len(groups) < len(fixed_micro_batches(64, budget // longest))


def test_rows_of_similar_length_go_together():
    prompts, responses = _long_tailed(64, 3)
    groups = plan_micro_batches(prompts, responses, 400, packed=False)
    lengths = [[responses[i] for i in g] for g in groups]
    # Longest responses first, and no response is longer than any of an earlier micro-batch.
    for earlier, later in zip(lengths, lengths[1:]):
        assert min(earlier) >= max(later)
    # Ties in response length: longer prompts first.
    assert plan_micro_batches([1, 3, 2], [5, 5, 5], 100, packed=True) == [[1, 2, 0]]


def test_plan_depends_only_on_lengths():
    prompts, responses = _long_tailed(32, 4)
    first = plan_micro_batches(prompts, responses, 300, packed=False)
    assert plan_micro_batches(list(prompts), list(responses), 300, packed=False) == first
    # Ties keep row order: equal lengths stay in index order.
    assert plan_micro_batches([1] * 4, [3] * 4, 8, packed=True) == [[0, 1], [2, 3]]


def test_row_over_budget_runs_alone():
    groups = plan_micro_batches([2, 2, 2], [100, 3, 3], 20, packed=False)
    assert groups == [[0], [1, 2]]


def test_min_count_splits_the_costliest_until_enough():
    prompts, responses = _long_tailed(16, 5)
    groups = plan_micro_batches(prompts, responses, 10_000, packed=False)
    assert len(groups) == 1
    split = plan_micro_batches(prompts, responses, 10_000, packed=False, min_count=5)
    assert len(split) == 5 and sorted(i for g in split for i in g) == list(range(16))
    assert all(g for g in split)
    with pytest.raises(ValueError, match="cannot form 17"):
        plan_micro_batches(prompts, responses, 10_000, packed=False, min_count=17)
    assert plan_micro_batches([], [], 10, packed=False) == []


def test_row_lengths_from_the_attention_mask():
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]])
    assert row_lengths(mask, response_width=3) == ([2, 3, 1], [2, 1, 0])


def test_fixed_micro_batches():
    assert fixed_micro_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert fixed_micro_batches(0, 2) == []
