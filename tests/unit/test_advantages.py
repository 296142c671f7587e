"""Advantage estimators against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from sfpo_rl.algorithms.advantages import advantage_estimators, compute_advantage


def outcome(scores, lengths, width=4):
    """Token-level rewards with each score on the last response token, and the response mask."""
    rewards = torch.zeros(len(scores), width)
    mask = torch.zeros(len(scores), width)
    for i, (s, n) in enumerate(zip(scores, lengths)):
        mask[i, :n] = 1
        rewards[i, n - 1] = s
    return rewards, mask


def test_registry_lists_the_family_and_rejects_unknown_names():
    assert {"grpo", "drgrpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"} <= set(
        advantage_estimators()
    )
    rewards, mask = outcome([1.0], [1])
    with pytest.raises(ValueError, match="algorithm.adv_estimator.*'gae'"):
        compute_advantage("gae", rewards, mask, ["a"])


def test_grpo_hand_computed():
    # group a: scores 1, 0, 1 -> mean 2/3, unbiased std sqrt(1/3); group b: 0, 1 -> mean .5, std sqrt(.5)
    rewards, mask = outcome([1, 0, 1, 0, 1], [2, 3, 1, 4, 2])
    uid = np.array(["a", "a", "a", "b", "b"], dtype=object)
    adv, returns = compute_advantage("grpo", rewards, mask, uid, epsilon=0.0)
    expected = [
        (1 - 2 / 3) / math.sqrt(1 / 3),
        (0 - 2 / 3) / math.sqrt(1 / 3),
        (1 - 2 / 3) / math.sqrt(1 / 3),
        -0.5 / math.sqrt(0.5),
        0.5 / math.sqrt(0.5),
    ]
    for i, value in enumerate(expected):
        assert torch.allclose(adv[i], value * mask[i], atol=1e-6)
    assert torch.equal(adv, returns)


def test_grpo_groups_need_not_be_contiguous():
    rewards, mask = outcome([1, 0, 0, 1], [1, 1, 1, 1])
    a = compute_advantage("grpo", rewards, mask, ["x", "y", "x", "y"])[0]
    b = compute_advantage("grpo", rewards[[0, 2, 1, 3]], mask, ["x", "x", "y", "y"])[0]
    assert torch.allclose(a[[0, 2, 1, 3]], b)


def test_drgrpo_does_not_divide_by_std():
    rewards, mask = outcome([1, 0, 0, 0], [1, 2, 3, 4])
    adv, _ = compute_advantage("drgrpo", rewards, mask, ["g"] * 4)
    assert torch.allclose(adv[:, 0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.equal(adv, compute_advantage("grpo", rewards, mask, ["g"] * 4, norm_adv_by_std=False)[0])


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo", "reinforce_plus_plus_baseline"])
def test_singleton_and_constant_groups_give_zero_without_nan(name):
    rewards, mask = outcome([1, 1, 1, 0, 0.5], [1, 2, 3, 4, 2])
    adv, returns = compute_advantage(name, rewards, mask, ["same", "same", "same", "zeros", "alone"])
    assert torch.isfinite(adv).all() and torch.isfinite(returns).all()
    assert torch.count_nonzero(adv) == 0


def test_rloo_leave_one_out_baseline():
    rewards, mask = outcome([1, 0, 0.5], [1, 2, 3])
    adv, _ = compute_advantage("rloo", rewards, mask, ["g"] * 3)
    # r_i - mean of the others
    assert torch.allclose(adv[:, 0], torch.tensor([1 - 0.25, 0 - 0.75, 0.5 - 0.5]))
    assert torch.allclose(adv[2], torch.zeros(4))
    assert torch.allclose(adv[1], -0.75 * mask[1])


def test_reinforce_plus_plus_whitens_over_the_batch_tokens():
    rewards, mask = outcome([1, 0], [2, 3])
    adv, returns = compute_advantage("reinforce_plus_plus", rewards, mask, ["a", "b"])
    # gamma = 1: every token's return is its sequence's score; tokens: [1, 1, 0, 0, 0]
    assert torch.equal(returns, torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]]))
    values = torch.tensor([1.0, 1, 0, 0, 0])
    whitened = (values - values.mean()) / values.std()
    assert torch.allclose(adv[mask.bool()], whitened, atol=1e-6)
    assert torch.count_nonzero(adv[~mask.bool()]) == 0


def test_reinforce_plus_plus_discounts_within_the_response():
    rewards = torch.tensor([[0.0, 0.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    _, returns = compute_advantage("reinforce_plus_plus", rewards, mask, ["a"], gamma=0.5)
    assert torch.allclose(returns, torch.tensor([[0.5, 1.0, 2.0, 0.0]]))


def test_reinforce_plus_plus_baseline_centers_by_group_then_whitens():
    rewards, mask = outcome([1, 0, 1, 1], [1, 1, 1, 1], width=1)
    adv, _ = compute_advantage("reinforce_plus_plus_baseline", rewards, mask, ["a", "a", "b", "b"])
    centered = torch.tensor([0.5, -0.5, 0.0, 0.0])
    assert torch.allclose(adv[:, 0], (centered - centered.mean()) / centered.std(), atol=1e-6)


def test_shape_errors_are_clear():
    rewards, mask = outcome([1, 0], [1, 1])
    with pytest.raises(ValueError, match="uid has 1 entries for 2 rows"):
        compute_advantage("grpo", rewards, mask, ["a"])
    with pytest.raises(ValueError, match="same shape"):
        compute_advantage("grpo", rewards, mask[:, :2], ["a", "b"])


GROUPED = ["grpo", "drgrpo", "rloo", "reinforce_plus_plus_baseline"]


@pytest.mark.parametrize("name", GROUPED)
@pytest.mark.parametrize(("value", "size"), [(0.1, 8), (0.7, 16), (1 / 3, 6), (0.1, 2)])
def test_constant_groups_get_exactly_zero_next_to_informative_ones(name, value, size):
    """Float32 group means of equal rewards are not exact (8 x 0.1 gave |A| = 7.4e-3, all one sign, under
    grpo); such a group must get exactly 0 while the other groups keep their values."""
    scores = [value] * size + [1.0, 0.0, 0.1, 1.0]
    rewards, mask = outcome(scores, [1 + i % 3 for i in range(len(scores))])
    uid = ["flat"] * size + ["mixed"] * 4
    adv, returns = compute_advantage(name, rewards, mask, uid)
    assert torch.count_nonzero(adv[:size]) == 0 and torch.count_nonzero(returns[:size]) == 0
    assert torch.count_nonzero(adv[size:]) > 0
    if name != "reinforce_plus_plus_baseline":  # per-group estimators: the other group is untouched
        alone, _ = compute_advantage(name, rewards[size:], mask[size:], uid[size:])
        assert torch.equal(adv[size:], alone)
    else:  # whitened over the whole batch's tokens, the flat group's zeros included (as before)
        centered = torch.tensor([0.0] * size + [s - 0.525 for s in scores[size:]])
        tokens = (centered.unsqueeze(-1) * mask)[mask.bool()]
        expected = (centered[size:].unsqueeze(-1) - tokens.mean()) / tokens.std() * mask[size:]
        assert torch.allclose(adv[size:], expected, atol=1e-6)


@pytest.mark.parametrize("value", [0.1, 0.7])
def test_reinforce_plus_plus_on_a_batch_of_equal_returns_is_exactly_zero(value):
    rewards, mask = outcome([value] * 16, [4] * 16)
    adv, returns = compute_advantage("reinforce_plus_plus", rewards, mask, [str(i) for i in range(16)])
    assert torch.count_nonzero(adv) == 0
    assert torch.allclose(returns, rewards.flip(-1).cumsum(-1).flip(-1))  # returns are untouched
