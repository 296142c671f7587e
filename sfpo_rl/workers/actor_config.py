"""Options of the `actor` config group; a bad value raises ValueError naming `actor.<option>`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sfpo_rl.algorithms.kl import KL_ESTIMATORS
from sfpo_rl.algorithms.policy_loss import LOSS_AGG_MODES
from sfpo_rl.utils.options import is_int, is_number, options_from_any
from sfpo_rl.workers.optim import SCHEDULES

PARAM_DTYPES = ("auto", "float32", "bfloat16")
SLOW_COPY_DEVICES = ("same", "cpu")
# "<step>" or "<step>:<pass>", pass = update (a plain update), fast<k> (SFPO fast pass k), slow (SFPO slow pass)
INJECTION_POINT = re.compile(r"^[1-9]\d*(:(update|slow|fast\d+))?$")


@dataclass
class ActorConfig:
    # optimizer (AdamW) and schedule
    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping (the norm is still logged)
    lr_schedule: str = "constant"  # "constant" | "cosine", both after an optional linear warmup
    warmup_steps: int | None = None  # None: round(warmup_ratio * total_steps)
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    total_steps: int | None = None  # training steps (updates); required by "cosine" and by warmup_ratio
    # batching: one update = ppo_epochs x (batch / ppo_mini_batch_size) optimizer steps
    ppo_mini_batch_size: int = 256  # GLOBAL sequences per optimizer step (split evenly over the ranks)
    micro_batch_size_per_gpu: int = 4  # sequences per forward/backward on each rank
    log_prob_micro_batch_size: int = 8  # sequences per forward in compute_log_prob, on each rank
    ppo_epochs: int = 1
    shuffle_mini_batches: bool = False
    seed: int = 0  # mini-batch shuffling
    # objective
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float | None = None  # dual-clip bound for negative advantages (> 1); None: off
    loss_agg_mode: str = "token-mean"
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    # precision and memory
    param_dtype: str = "auto"  # "auto": bfloat16 on GPU, float32 on CPU (master weights are always float32)
    reduce_dtype: str = "float32"  # gradient reduce-scatter dtype
    activation_checkpointing: bool = False
    sfpo_slow_copy_device: str = "same"  # where SFPO keeps its slow copy of the local shard: "same" | "cpu"
    # Testing only: make the loss NaN at these points to exercise the non-finite handling end to end. An entry
    # is a training step (1-based), "3", or a step and one pass of it: "3:update", "3:fast0", "3:slow".
    inject_nonfinite_loss: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name in ("lr", "eps"):
            _require(is_number(getattr(self, name)) and getattr(self, name) > 0, name, "a number > 0")
        for name in ("weight_decay", "entropy_coeff", "kl_loss_coef", "min_lr_ratio", "warmup_ratio"):
            _require(is_number(getattr(self, name)) and getattr(self, name) >= 0, name, "a number >= 0")
        _require(self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        _require(self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)")
        _require(
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in self.betas),
            "betas",
            "two numbers in [0, 1)",
        )
        _require(
            self.grad_clip is None or (is_number(self.grad_clip) and self.grad_clip > 0),
            "grad_clip",
            "null or a number > 0",
        )
        _require(self.lr_schedule in SCHEDULES, "lr_schedule", f"one of {', '.join(SCHEDULES)}")
        _require(
            self.total_steps is None or (is_int(self.total_steps) and self.total_steps >= 1),
            "total_steps",
            "null or an integer >= 1",
        )
        _require(
            self.warmup_steps is None or (is_int(self.warmup_steps) and self.warmup_steps >= 0),
            "warmup_steps",
            "null or an integer >= 0",
        )
        _require(
            self.warmup_steps is None or self.warmup_ratio == 0,
            "warmup_steps",
            "null when actor.warmup_ratio is set (give one of the two)",
        )
        needs_total = self.lr_schedule == "cosine" or self.warmup_ratio > 0
        _require(
            not needs_total or self.total_steps is not None,
            "total_steps",
            "set (the number of training steps) for a cosine schedule or a warmup_ratio",
        )
        for name in (
            "ppo_mini_batch_size",
            "micro_batch_size_per_gpu",
            "log_prob_micro_batch_size",
            "ppo_epochs",
        ):
            _require(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        _require(isinstance(self.shuffle_mini_batches, bool), "shuffle_mini_batches", "true or false")
        _require(is_int(self.seed), "seed", "an integer")
        for name in ("clip_ratio_low", "clip_ratio_high"):
            _require(is_number(getattr(self, name)) and getattr(self, name) >= 0, name, "a number >= 0")
        _require(self.clip_ratio_low < 1, "clip_ratio_low", "below 1 (the ratio's lower bound is 1 - low)")
        _require(
            self.clip_ratio_c is None or (is_number(self.clip_ratio_c) and self.clip_ratio_c > 1),
            "clip_ratio_c",
            "null or a number > 1",
        )
        _require(self.loss_agg_mode in LOSS_AGG_MODES, "loss_agg_mode", f"one of {', '.join(LOSS_AGG_MODES)}")
        _require(isinstance(self.use_kl_loss, bool), "use_kl_loss", "true or false")
        _require(self.kl_loss_type in KL_ESTIMATORS, "kl_loss_type", f"one of {', '.join(KL_ESTIMATORS)}")
        _require(self.param_dtype in PARAM_DTYPES, "param_dtype", f"one of {', '.join(PARAM_DTYPES)}")
        _require(self.reduce_dtype in ("float32", "bfloat16"), "reduce_dtype", "float32 or bfloat16")
        _require(isinstance(self.activation_checkpointing, bool), "activation_checkpointing", "true or false")
        _require(
            self.sfpo_slow_copy_device in SLOW_COPY_DEVICES,
            "sfpo_slow_copy_device",
            f"one of {', '.join(SLOW_COPY_DEVICES)}",
        )
        points = self.inject_nonfinite_loss
        bad = (
            [points] if isinstance(points, str) else [p for p in points if not INJECTION_POINT.match(str(p))]
        )
        _require(
            not bad,
            "inject_nonfinite_loss",
            f'a list of "<step>" or "<step>:<pass>" (pass: update, slow, fast<k>), e.g. ["3", "4:fast0"]; got {bad}',
        )
        self.inject_nonfinite_loss = [str(p) for p in points]

    @property
    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_ratio * self.total_steps) if self.warmup_ratio > 0 else 0

    @classmethod
    def from_any(cls, config: ActorConfig | Mapping[str, Any] | Any) -> ActorConfig:
        """An `ActorConfig` from itself, a mapping or an OmegaConf node (unknown keys are an error)."""
        return options_from_any(cls, config, "actor")


def _require(ok: bool, option: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"actor.{option} must be {expected}")
