"""Options of the `actor` config group, in sections: `optimizer`, `loss`, `batching` and `lora`, beside the
precision and memory options. A bad value raises ConfigError naming `actor.<section>.<option>`; an option given
at its old flat place (`actor.lr`) is refused naming its new one (`MOVED`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sfpo_rl.algorithms.kl import KL_ESTIMATORS
from sfpo_rl.algorithms.policy_loss import LOSS_AGG_MODES, policy_losses
from sfpo_rl.utils.options import ConfigError, is_int, is_number, options_from_any, require
from sfpo_rl.workers.lora import LoraConfig
from sfpo_rl.workers.optim import SCHEDULES

PARAM_DTYPES = ("auto", "float32", "bfloat16")
SLOW_COPY_DEVICES = ("same", "cpu")
FORWARD_LAYOUTS = ("auto", "packed", "padded")


@dataclass
class OptimizerConfig:
    """AdamW and its LR schedule; the schedule's length is trainer.total_steps."""

    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping (the norm is still logged)
    lr_schedule: str = "constant"  # "constant" | "cosine", both after an optional linear warmup
    warmup_steps: int | None = None  # None: round(warmup_ratio * total_steps)
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name in ("lr", "eps"):
            value = getattr(self, name)
            require(is_number(value) and value > 0, f"actor.optimizer.{name}", "a number > 0")
        for name in ("weight_decay", "min_lr_ratio", "warmup_ratio"):
            value = getattr(self, name)
            require(is_number(value) and value >= 0, f"actor.optimizer.{name}", "a number >= 0")
        require(self.min_lr_ratio <= 1, "actor.optimizer.min_lr_ratio", "in [0, 1]")
        require(self.warmup_ratio < 1, "actor.optimizer.warmup_ratio", "in [0, 1)")
        require(
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in self.betas),
            "actor.optimizer.betas",
            "two numbers in [0, 1)",
        )
        require(
            self.grad_clip is None or (is_number(self.grad_clip) and self.grad_clip > 0),
            "actor.optimizer.grad_clip",
            "null or a number > 0",
        )
        require(
            self.lr_schedule in SCHEDULES, "actor.optimizer.lr_schedule", f"one of {', '.join(SCHEDULES)}"
        )
        require(
            self.warmup_steps is None or (is_int(self.warmup_steps) and self.warmup_steps >= 0),
            "actor.optimizer.warmup_steps",
            "null or an integer >= 0",
        )
        require(
            self.warmup_steps is None or self.warmup_ratio == 0,
            "actor.optimizer.warmup_steps",
            "null when actor.optimizer.warmup_ratio is set (give one of the two)",
        )

    @property
    def needs_total_steps(self) -> bool:
        return self.lr_schedule == "cosine" or self.warmup_ratio > 0

    def resolved_warmup_steps(self, total_steps: int | None) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_ratio * total_steps) if self.warmup_ratio > 0 else 0


@dataclass
class LossConfig:
    """The policy objective: a registered policy loss (sfpo_rl/algorithms/policy_loss.py: ppo_clip, gspo), its
    aggregation, and the entropy and KL terms."""

    policy_loss: str = "ppo_clip"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float | None = None  # dual-clip bound for negative advantages (> 1); None: off
    loss_agg_mode: str = "token-mean"
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"

    def __post_init__(self) -> None:
        require(
            self.policy_loss in policy_losses(),
            "actor.loss.policy_loss",
            f"one of {', '.join(policy_losses())}",
        )
        require(
            self.clip_ratio_c is None or self.policy_loss == "ppo_clip",
            "actor.loss.clip_ratio_c",
            f"null with actor.loss.policy_loss={self.policy_loss} (dual clip is a PPO-clip option)",
        )
        for name in ("clip_ratio_low", "clip_ratio_high", "entropy_coeff", "kl_loss_coef"):
            value = getattr(self, name)
            require(is_number(value) and value >= 0, f"actor.loss.{name}", "a number >= 0")
        require(
            self.clip_ratio_low < 1,
            "actor.loss.clip_ratio_low",
            "below 1 (the ratio's lower bound is 1 - low)",
        )
        require(
            self.clip_ratio_c is None or (is_number(self.clip_ratio_c) and self.clip_ratio_c > 1),
            "actor.loss.clip_ratio_c",
            "null or a number > 1",
        )
        require(
            self.loss_agg_mode in LOSS_AGG_MODES,
            "actor.loss.loss_agg_mode",
            f"one of {', '.join(LOSS_AGG_MODES)}",
        )
        require(isinstance(self.use_kl_loss, bool), "actor.loss.use_kl_loss", "true or false")
        require(
            self.kl_loss_type in KL_ESTIMATORS,
            "actor.loss.kl_loss_type",
            f"one of {', '.join(KL_ESTIMATORS)}",
        )


@dataclass
class BatchingConfig:
    """One update = ppo_epochs x (batch / ppo_mini_batch_size) optimizer steps, each over micro-batches."""

    ppo_mini_batch_size: int = 256  # GLOBAL sequences per optimizer step (split evenly over the ranks)
    ppo_epochs: int = 1
    # Micro-batches (one forward, and backward, on a rank) hold rows of similar length up to a token budget:
    # the tokens the forward computes, padding included (packed forwards compute none).
    max_tokens_per_micro_batch: int = 16384
    micro_batch_size_per_gpu: int | None = None  # set: fixed micro-batches of this many rows instead
    log_prob_micro_batch_size: int | None = (
        None  # set: fixed compute_log_prob micro-batches of this many rows
    )
    # Gradients are reduce-scattered once per mini-batch (after its last micro-batch); until then each rank
    # holds unsharded float32 gradients of the whole model. True: after every micro-batch (less memory).
    sync_grads_every_micro_batch: bool = False
    # "packed": padding-free forwards (the rows' real tokens in one sequence); "padded"; "auto": packed where
    # the attention kernel takes packed sequences natively (flash-attention varlen), padded elsewhere.
    forward_layout: str = "auto"
    shuffle_mini_batches: bool = False
    seed: int = 0  # mini-batch shuffling

    def __post_init__(self) -> None:
        for name in ("ppo_mini_batch_size", "max_tokens_per_micro_batch", "ppo_epochs"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"actor.batching.{name}", "an integer >= 1")
        for name in ("micro_batch_size_per_gpu", "log_prob_micro_batch_size"):
            value = getattr(self, name)
            require(
                value is None or (is_int(value) and value >= 1),
                f"actor.batching.{name}",
                "null (micro-batches by actor.batching.max_tokens_per_micro_batch) or an integer >= 1",
            )
        require(
            isinstance(self.sync_grads_every_micro_batch, bool),
            "actor.batching.sync_grads_every_micro_batch",
            "true or false",
        )
        require(
            self.forward_layout in FORWARD_LAYOUTS,
            "actor.batching.forward_layout",
            f"one of {', '.join(FORWARD_LAYOUTS)}",
        )
        require(
            isinstance(self.shuffle_mini_batches, bool),
            "actor.batching.shuffle_mini_batches",
            "true or false",
        )
        require(is_int(self.seed), "actor.batching.seed", "an integer")


SECTIONS = {"optimizer": OptimizerConfig, "loss": LossConfig, "batching": BatchingConfig, "lora": LoraConfig}
# Options that left the actor's top level: old path -> new path.
MOVED = {
    f"actor.{f.name}": f"actor.{section}.{f.name}"
    for section, cls in SECTIONS.items()
    if section != "lora"
    for f in fields(cls)
} | {"actor.total_steps": "trainer.total_steps", "actor.inject_nonfinite_loss": "faults.nonfinite_loss"}


@dataclass
class ActorConfig:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    # LoRA: rank > 0 trains a PEFT adapter on frozen base weights (sfpo_rl/workers/lora.py)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # precision and memory
    param_dtype: str = "auto"  # "auto": bfloat16 on GPU, float32 on CPU (master weights are always float32)
    reduce_dtype: str = "float32"  # gradient reduce-scatter dtype
    activation_checkpointing: bool = False
    sfpo_slow_copy_device: str = "same"  # where SFPO keeps its slow copy of the local shard: "same" | "cpu"

    def __post_init__(self) -> None:
        for section, cls in SECTIONS.items():
            setattr(self, section, options_from_any(cls, getattr(self, section), f"actor.{section}"))
        require(self.param_dtype in PARAM_DTYPES, "actor.param_dtype", f"one of {', '.join(PARAM_DTYPES)}")
        require(self.reduce_dtype in ("float32", "bfloat16"), "actor.reduce_dtype", "float32 or bfloat16")
        require(
            isinstance(self.activation_checkpointing, bool), "actor.activation_checkpointing", "true or false"
        )
        require(
            self.sfpo_slow_copy_device in SLOW_COPY_DEVICES,
            "actor.sfpo_slow_copy_device",
            f"one of {', '.join(SLOW_COPY_DEVICES)}",
        )

    @classmethod
    def from_any(cls, config: ActorConfig | Mapping[str, Any] | Any) -> ActorConfig:
        """An `ActorConfig` from itself, a mapping or an OmegaConf node (unknown keys are an error; an option
        at its old flat place is refused naming its new one)."""
        if isinstance(config, Mapping) and (message := moved_option(f"actor.{key}" for key in config)):
            raise ConfigError(message)
        return options_from_any(cls, config, "actor")


def moved_option(options: Iterable[str], moved: Mapping[str, str] = MOVED) -> str | None:
    """Where the first of these option paths that has moved went (a message naming both), else None."""
    for option in options:
        if option in moved:
            return f"{option} has moved: it is now {moved[option]}"
    return None
