"""PPO-clip policy loss (clip-higher, dual-clip) and the loss aggregation modes.

Aggregation divides by GLOBAL counts (tokens or sequences of the whole mini-batch, over all ranks) that the
caller passes in, so summing the losses of the micro-batches of a mini-batch gives exactly the full-batch loss:
gradient accumulation does not change the objective.
"""

from __future__ import annotations

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


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
    raise ValueError(f"actor.loss_agg_mode: unknown {mode!r}; choose one of {', '.join(LOSS_AGG_MODES)}")


def _at_least_one(count: float | torch.Tensor) -> float | torch.Tensor:
    return count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float | None = None,
    loss_agg_mode: str = "token-mean",
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    norm_length: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss per token, aggregated, with diagnostics.

    ratio = exp(log pi - log pi_old); l = max(-A ratio, -A clip(ratio, 1 - low, 1 + high)) and, with dual clip,
    for A < 0 also min(l, -A c) so a huge ratio on a bad action cannot blow the loss up.
    Metrics (token means over this batch's mask, detached): clipfrac (tokens where the clipped term is
    active), approx_kl (mean of log pi_old - log pi), ratio_mean and ratio_max.
    """
    if clip_ratio_c is not None and clip_ratio_c <= 1:
        raise ValueError(f"actor.clip_ratio_c must be > 1 (dual clip), got {clip_ratio_c}")
    log_ratio = (log_probs - old_log_probs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    per_token = torch.maximum(unclipped, clipped)
    if clip_ratio_c is not None:
        per_token = torch.where(
            advantages < 0, torch.minimum(per_token, -advantages * clip_ratio_c), per_token
        )
    loss = agg_loss(per_token, response_mask, loss_agg_mode, num_tokens, num_seqs, norm_length)
    with torch.no_grad():
        mask = response_mask.bool()
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), response_mask),
            "approx_kl": masked_mean(-log_ratio, response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
            "ratio_max": ratio[mask].max() if mask.any() else ratio.new_zeros(()),
        }
    return loss, metrics
