"""Outcome-reward advantage estimators of the GRPO family, chosen by name.

Every estimator takes token-level rewards [B, R] (for outcome rewards: the score on the last response token),
the response mask [B, R] and a `uid` per row (rows with the same uid are the n samples of one prompt), and
returns (advantages, returns), both [B, R] and zero outside the mask.

A group whose rewards are all equal carries no signal about which of its samples is better, so every grouped
estimator gives its rows advantage (and return) exactly 0: float32 group means are not exact (eight samples
of 0.1 average to 0.1 plus rounding), and dividing that rounding by a near-zero std would push every sample of
the group the same way. REINFORCE++ has no groups (its baseline is the batch); a batch whose returns are all
equal gets exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

AdvantageFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_REGISTRY: dict[str, AdvantageFn] = {}
_GROUPED: set[str] = set()


def register_advantage(name: str, grouped: bool = True) -> Callable[[AdvantageFn], AdvantageFn]:
    """`grouped`: the estimator compares a prompt's samples with each other, so it needs n >= 2 per prompt."""

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        if name in _REGISTRY:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _REGISTRY[name] = fn
        if grouped:
            _GROUPED.add(name)
        return fn

    return wrap


def advantage_estimators() -> list[str]:
    return sorted(_REGISTRY)


def needs_groups(name: str) -> bool:
    return name in _GROUPED


def compute_advantage(
    name: str,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    uid: Sequence[Any] | np.ndarray,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns from the estimator registered as `name` (options go to that estimator)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"algorithm.adv_estimator: unknown {name!r}; choose one of {', '.join(advantage_estimators())}"
        )
    if token_level_rewards.shape != response_mask.shape:
        raise ValueError(
            f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must have the same shape"
        )
    if len(uid) != token_level_rewards.shape[0]:
        raise ValueError(f"uid has {len(uid)} entries for {token_level_rewards.shape[0]} rows")
    advantages, returns = _REGISTRY[name](
        token_level_rewards, response_mask.to(token_level_rewards.dtype), uid, **options
    )
    if name in _GROUPED:
        informative = ~constant_groups(token_level_rewards.sum(-1), uid)
        advantages, returns = (t * informative.unsqueeze(-1).to(t.dtype) for t in (advantages, returns))
    return advantages, returns


def group_index(uid: Sequence[Any] | np.ndarray) -> torch.Tensor:
    """Row -> dense group id (rows sharing a uid share an id)."""
    _, inverse = np.unique(np.asarray([str(u) for u in uid], dtype=object).astype(str), return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long)


def group_stats(scores: torch.Tensor, uid: Sequence[Any] | np.ndarray) -> tuple[torch.Tensor, ...]:
    """Per-row (group size, group mean, unbiased group std; std is 0 for groups of one)."""
    index = group_index(uid).to(scores.device)
    n_groups = int(index.max()) + 1 if len(index) else 0
    count = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add_(
        0, index, torch.ones_like(scores)
    )
    total = torch.zeros_like(count).index_add_(0, index, scores)
    mean = (total / count)[index]
    sq_dev = torch.zeros_like(count).index_add_(0, index, (scores - mean) ** 2)
    var = torch.where(count > 1, sq_dev / (count - 1).clamp(min=1), torch.zeros_like(count))
    return count[index], mean, var.sqrt()[index]


def constant_groups(scores: torch.Tensor, uid: Sequence[Any] | np.ndarray) -> torch.Tensor:
    """Per-row bool: every score of the row's group is the same (groups of one included)."""
    index = group_index(uid).to(scores.device)
    n_groups = int(index.max()) + 1 if len(index) else 0
    empty = torch.empty(n_groups, dtype=scores.dtype, device=scores.device)
    high = empty.scatter_reduce(0, index, scores, "amax", include_self=False)
    low = empty.scatter_reduce(0, index, scores, "amin", include_self=False)
    return (high == low)[index]


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / std over the masked entries (unbiased variance), zero outside the mask; exactly zero
    when the masked values are all equal (their float mean is not exact, and eps would magnify the rest)."""
    masked = values[mask.bool()]
    if masked.numel() == 0 or bool(masked.max() == masked.min()):
        return torch.zeros_like(values)
    n = mask.sum()
    mean = (values * mask).sum() / n.clamp(min=1)
    var = (((values - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def _broadcast(per_row: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    adv = per_row.unsqueeze(-1) * mask
    return adv, adv


@register_advantage("grpo")
def grpo(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    uid: Sequence[Any],
    epsilon: float = 1e-6,
    norm_adv_by_std: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r - group mean) / (group std + eps); without the division when `norm_adv_by_std` is false (Dr.GRPO).

    A group of one sample has no baseline to compare with and gets advantage 0 (not its raw reward).
    """
    scores = token_level_rewards.sum(-1)
    count, mean, std = group_stats(scores, uid)
    adv = scores - mean
    if norm_adv_by_std:
        adv = adv / (std + epsilon)
    return _broadcast(torch.where(count > 1, adv, torch.zeros_like(adv)), response_mask)


@register_advantage("drgrpo")
def drgrpo(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, uid: Sequence[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr.GRPO: the group-mean baseline without the std division."""
    return grpo(token_level_rewards, response_mask, uid, norm_adv_by_std=False)


@register_advantage("rloo")
def rloo(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, uid: Sequence[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_i - mean of the other samples of the group = n / (n - 1) * (r_i - group mean); 0 for groups of one."""
    scores = token_level_rewards.sum(-1)
    count, mean, _ = group_stats(scores, uid)
    adv = torch.where(count > 1, count / (count - 1).clamp(min=1) * (scores - mean), torch.zeros_like(scores))
    return _broadcast(adv, response_mask)


def _discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running * mask[:, t]
        returns[:, t] = running
    return returns * mask


@register_advantage("reinforce_plus_plus", grouped=False)
def reinforce_plus_plus(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, uid: Sequence[Any], gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: discounted return per token, whitened over all response tokens of the batch."""
    returns = _discounted_returns(token_level_rewards, response_mask, gamma)
    return masked_whiten(returns, response_mask), returns


@register_advantage("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, uid: Sequence[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline: subtract the group mean reward, then whiten over the batch's response tokens."""
    scores = token_level_rewards.sum(-1)
    _, mean, _ = group_stats(scores, uid)
    centered = (scores - mean).unsqueeze(-1) * response_mask
    return masked_whiten(centered, response_mask), centered
