"""Per-step metrics computed on the driver from a scored, updated batch (pure functions of the batch)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from sfpo_rl.protocol import Batch


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[f"timing/{name}"] = timings.get(f"timing/{name}", 0.0) + time.perf_counter() - start


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1))


def rollout_metrics(batch: Batch, max_response_length: int) -> dict[str, float]:
    """Advantages, lengths, groups without signal and the rollout-vs-trainer log-prob mismatch of one step."""
    mask = batch["response_mask"].float()
    lengths = mask.sum(-1)
    scores = batch["token_level_scores"].sum(-1)
    out = {
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float((lengths >= max_response_length).float().mean()),
        "prompt_length/mean": float(batch["attention_mask"].sum(-1).float().mean() - lengths.mean()),
    }
    if "advantages" in batch:
        adv = batch["advantages"]
        valid = adv[mask.bool()]
        out.update(
            {"adv/mean": float(valid.mean()), "adv/max": float(valid.max()), "adv/min": float(valid.min())}
        )
        # Fraction of prompts whose samples all got the same reward: they carry no GRPO signal.
        uids = batch["uid"]
        groups: dict[str, list[float]] = defaultdict(list)
        for uid, s in zip(uids, scores.tolist()):
            groups[uid].append(s)
        out["reward/solve_none_or_all"] = float(np.mean([max(g) == min(g) for g in groups.values()]))
    if "rollout_log_probs" in batch and "old_log_probs" in batch:
        diff = batch["rollout_log_probs"] - batch["old_log_probs"]
        out["rollout/log_prob_abs_diff"] = _masked_mean(diff.abs(), mask)
        out["rollout/log_prob_abs_diff_max"] = float((diff.abs() * mask).max())
    return out


def validation_metrics(data_sources, uids, accs) -> dict[str, float]:
    """pass@1 estimated as avg@k: mean accuracy over the k samples of each problem, per data source and overall."""
    per_problem: dict[tuple[str, str], list[float]] = defaultdict(list)
    for source, uid, acc in zip(data_sources, uids, accs):
        per_problem[(source, uid)].append(float(acc))
    by_source: dict[str, list[float]] = defaultdict(list)
    for (source, _), values in per_problem.items():
        by_source[source].append(float(np.mean(values)))
    out = {f"val/acc/{source}": float(np.mean(v)) for source, v in sorted(by_source.items())}
    problems = [a for v in by_source.values() for a in v]
    out["val/acc"] = float(np.mean(problems))
    # The standard error of val/acc over problems (each problem's avg@k is one draw).
    out["val/acc_se"] = float(np.std(problems, ddof=1) / np.sqrt(len(problems))) if len(problems) > 1 else 0.0
    return out
