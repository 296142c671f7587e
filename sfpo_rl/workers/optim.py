"""The actor's optimizer and learning-rate schedule.

AdamW decays only weight matrices: biases and normalisation weights (1-D tensors, or names containing
"bias"/"norm") get no weight decay, as is standard for transformers. The schedule is a multiplier of the base
LR, stepped once per training step (one `update` or one whole SFPO step), never per optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

SCHEDULES = ("constant", "cosine")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices, and undecayed biases / norm weights (empty groups dropped)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if param.ndim < 2 or "bias" in lowered or "norm" in lowered:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def lr_multiplier(
    schedule: str, warmup_steps: int, total_steps: int | None, min_lr_ratio: float
) -> Callable[[int], float]:
    """step -> LR multiplier. Linear warmup (step s < warmup uses (s+1)/warmup, so no step runs at LR 0), then
    constant, or cosine decay from 1 at `warmup_steps` to `min_lr_ratio` at `total_steps` (held after it)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        assert total_steps is not None  # checked by FSDPActor
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    warmup_steps: int,
    total_steps: int | None,
    min_lr_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(schedule, warmup_steps, total_steps, min_lr_ratio)
    )
