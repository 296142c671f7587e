"""Policy losses, chosen by name (`actor.loss.policy_loss`), and the loss aggregation modes.

A policy loss is one function registered with `@register_policy_loss("name")`. It takes the `LossInputs` of a
(micro-)batch and returns (scalar loss, metrics). The metrics are token means over the batch's mask (detached
tensors): clipfrac, approx_kl, ratio_mean, and ratio_max; the actor reduces them over micro-batches and ranks. A
loss that cannot honour an option it is given (e.g. dual clip) raises ValueError naming it as `actor.<option>`.

Aggregation divides by GLOBAL counts (tokens or sequences of the whole mini-batch, over all ranks) that the
caller passes in, so summing the losses of the micro-batches of a mini-batch gives exactly the full-batch loss:
gradient accumulation does not change the objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

PolicyLossFn = Callable[["LossInputs"], tuple[torch.Tensor, dict[str, torch.Tensor]]]
_REGISTRY: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    def wrap(fn: PolicyLossFn) -> PolicyLossFn:
        if name in _REGISTRY:
            raise ValueError(f"policy loss {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def policy_losses() -> list[str]:
    return sorted(_REGISTRY)


def get_policy_loss(name: str) -> PolicyLossFn:
    if name not in _REGISTRY:
        raise ValueError(
            f"actor.loss.policy_loss: unknown {name!r}; choose one of {', '.join(policy_losses())}"
        )
    return _REGISTRY[name]


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    norm_length: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    token-mean:              sum over all tokens / num_tokens
    seq-mean-token-sum:      sum_i (sum_t l_it) / num_seqs
    seq-mean-token-mean:     sum_i (mean_t l_it) / num_seqs
    seq-mean-token-sum-norm: sum_i (sum_t l_it) / (num_seqs * norm_length)  (Dr.GRPO; norm_length defaults to
                             the padded response length T, a constant instead of each sequence's length)
    num_tokens / num_seqs default to this batch's own counts (correct when the batch is the whole mini-batch).
    """
    mask = mask.to(loss_mat.dtype)
    masked = loss_mat * mask
    if num_tokens is None:
        num_tokens = mask.sum()
    if num_seqs is None:
        num_seqs = mask.shape[0]
    if mode == "token-mean":
        return masked.sum() / _at_least_one(num_tokens)
    if mode == "seq-mean-token-sum":
        return masked.sum() / _at_least_one(num_seqs)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / _at_least_one(num_seqs)
    if mode == "seq-mean-token-sum-norm":
        length = norm_length if norm_length is not None else mask.shape[-1]
        return masked.sum() / (_at_least_one(num_seqs) * length)
    raise ValueError(f"actor.loss.loss_agg_mode: unknown {mode!r}; choose one of {', '.join(LOSS_AGG_MODES)}")


def _at_least_one(count: float | torch.Tensor) -> float | torch.Tensor:
    return count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


@dataclass(frozen=True)
class LossInputs:
    """What a policy loss sees: [B, T] tensors of one (micro-)batch and the loss options."""

    log_probs: torch.Tensor  # under the policy being trained (carries the gradient)
    old_log_probs: torch.Tensor  # under the policy that generated the rollouts
    advantages: torch.Tensor
    response_mask: torch.Tensor
    clip_ratio_low: float = 0.2  # the ratio's clip range is [1 - low, 1 + high]
    clip_ratio_high: float = 0.2
    clip_ratio_c: float | None = None  # dual-clip bound for negative advantages (> 1); None: off
    loss_agg_mode: str = "token-mean"
    num_tokens: float | torch.Tensor | None = None  # of the whole mini-batch (see `agg_loss`)
    num_seqs: float | torch.Tensor | None = None
    norm_length: float | None = None

    def aggregate(self, per_token: torch.Tensor) -> torch.Tensor:
        return agg_loss(
            per_token,
            self.response_mask,
            self.loss_agg_mode,
            self.num_tokens,
            self.num_seqs,
            self.norm_length,
        )

    def clipped_surrogate(
        self, ratio: torch.Tensor, log_ratio: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-token max(-A ratio, -A clip(ratio, 1 - low, 1 + high)) and the standard diagnostics; `log_ratio`
        is the per-token log pi - log pi_old that approx_kl reports."""
        advantages, mask = self.advantages, self.response_mask
        unclipped = -advantages * ratio
        clipped = -advantages * ratio.clamp(1.0 - self.clip_ratio_low, 1.0 + self.clip_ratio_high)
        with torch.no_grad():
            kept = mask.bool()
            metrics = {
                "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
                "approx_kl": masked_mean(-log_ratio, mask),
                "ratio_mean": masked_mean(ratio, mask),
                "ratio_max": ratio[kept].max() if kept.any() else ratio.new_zeros(()),
            }
        return torch.maximum(unclipped, clipped), metrics


@register_policy_loss("ppo_clip")
def ppo_clip_loss(x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate per token (clip-higher with low != high), aggregated, with diagnostics.

    ratio = exp(log pi - log pi_old); l = max(-A ratio, -A clip(ratio, 1 - low, 1 + high)) and, with dual clip,
    for A < 0 also min(l, -A c) so a huge ratio on a bad action cannot blow the loss up.
    """
    c = x.clip_ratio_c
    if c is not None and c <= 1:
        raise ValueError(f"actor.loss.clip_ratio_c must be > 1 (dual clip), got {c}")
    log_ratio = (x.log_probs - x.old_log_probs).clamp(-20.0, 20.0)
    per_token, metrics = x.clipped_surrogate(torch.exp(log_ratio), log_ratio)
    if c is not None:
        per_token = torch.where(x.advantages < 0, torch.minimum(per_token, -x.advantages * c), per_token)
    return x.aggregate(per_token), metrics


@register_policy_loss("gspo")
def gspo_loss(x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Group Sequence Policy Optimization, arXiv 2507.18071): one importance ratio per sequence, the
    geometric mean of its token ratios, s_i = exp(mean_t (log pi - log pi_old)), clipped like PPO's.

    Every token of sequence i carries the value s_i with the gradient s_i * grad log pi(y_it) (the paper's
    GSPO-token form), so with `loss_agg_mode=seq-mean-token-mean` (the paper's objective) the loss is
    mean_i max(-A_i s_i, -A_i clip(s_i)) and its gradient that of the sequence-level objective. The paper's
    clip ranges are far narrower than PPO's (it reports 3e-4 / 4e-4), since s_i is a per-token average.
    """
    if x.clip_ratio_c is not None:
        raise ValueError(
            "actor.loss.clip_ratio_c must be null with actor.loss.policy_loss=gspo (dual clip is PPO-clip's)"
        )
    log_probs = x.log_probs
    mask = x.response_mask.to(log_probs.dtype)
    token_log_ratio = log_probs - x.old_log_probs
    seq_log_ratio = (token_log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    # Value s_i, gradient s_i * d log pi_t: log pi - sg(log pi) is 0 but carries log pi's gradient.
    log_ratio = (log_probs - log_probs.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp(max=20.0)
    per_token, metrics = x.clipped_surrogate(torch.exp(log_ratio), token_log_ratio)
    return x.aggregate(per_token), metrics
