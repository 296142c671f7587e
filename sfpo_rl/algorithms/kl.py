"""Per-token KL estimators between the policy and a reference policy (Schulman's k1 / k2 / k3)."""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")


def kl_penalty(
    log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "low_var_kl"
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    k1 (`kl`): log pi - log pi_ref, unbiased, high variance; `abs`: its absolute value;
    k2 (`mse`): 0.5 (log pi - log pi_ref)^2; k3 (`low_var_kl`): exp(d) - d - 1 with d = log pi_ref - log pi,
    unbiased, non-negative, clamped to [-10, 10] because exp(d) overflows for far-apart policies.
    """
    log_ratio = log_probs - ref_log_probs
    if kind in ("kl", "k1"):
        return log_ratio
    if kind == "abs":
        return log_ratio.abs()
    if kind in ("mse", "k2"):
        return 0.5 * log_ratio.square()
    if kind in ("low_var_kl", "k3"):
        d = (-log_ratio).clamp(-20.0, 20.0)
        return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_ESTIMATORS)}")
