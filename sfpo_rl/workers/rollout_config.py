"""Options of the `rollout` config group (no Ray or vLLM here: validating a config imports neither)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sfpo_rl.utils.options import is_int, is_number, options_from_any, require

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class RolloutConfig:
    """Options of the `rollout` config group; bad values raise ConfigError naming `rollout.<option>`."""

    n: int = 1  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_prompt_length: int = 512  # longer prompts are an error, not truncated
    max_response_length: int = 1024
    dtype: str = "auto"  # "auto" follows the checkpoint's torch_dtype
    enforce_eager: bool = True  # False lets vLLM capture CUDA graphs / compile (GPU)
    gpu_memory_utilization: float = 0.5  # GPU: share of device memory for weights + KV cache
    # Explicit KV cache size per engine. None: on GPU, what gpu_memory_utilization leaves; on CPU, room for
    # max_num_seqs sequences of full length (vLLM's CPU default is 4 GiB, allocated and touched at start).
    kv_cache_gib: float | None = None
    tensor_parallel_size: int = 1
    max_num_seqs: int = 256  # sequences decoded concurrently
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True  # n samples of one prompt share its KV cache
    seed: int = 0  # engine seed; a worker group adds the rank
    # GPU, resources.placement=colocated: the engine sleeps (releases memory) while the actor trains.
    free_cache_engine: bool = False
    sleep_level: int = 1  # 1: offload weights to CPU, drop KV cache; 2: drop both (weights re-synced after)
    # Weight sync: whole decoder layers are gathered, sent and loaded at most this many MB (rollout dtype) at a
    # time (a larger layer goes alone); the extra memory a sync needs per process is about one bucket plus the
    # engine's work on one layer.
    sync_bucket_mb: float = 512.0
    val_n: int = 1
    val_temperature: float = 0.0  # 0: greedy
    val_top_p: float = 1.0
    val_top_k: int = -1

    def __post_init__(self) -> None:
        for name in ("n", "val_n", "max_prompt_length", "max_response_length", "tensor_parallel_size"):
            require(
                is_int(getattr(self, name)) and getattr(self, name) >= 1, f"rollout.{name}", "an integer >= 1"
            )
        require(
            is_int(self.max_num_seqs) and self.max_num_seqs >= 1, "rollout.max_num_seqs", "an integer >= 1"
        )
        for name in ("temperature", "val_temperature"):
            value = getattr(self, name)
            require(
                is_number(value) and 0 <= value <= 2,
                f"rollout.{name}",
                "a number in [0, 2] (vLLM's range; 0: greedy)",
            )
        for name in ("top_p", "val_top_p"):
            require(
                is_number(getattr(self, name)) and 0 < getattr(self, name) <= 1,
                f"rollout.{name}",
                "in (0, 1]",
            )
        for name in ("top_k", "val_top_k"):
            value = getattr(self, name)
            require(
                is_int(value) and (value == -1 or value >= 1),
                f"rollout.{name}",
                "-1 (off) or an integer >= 1",
            )
        # vLLM refuses n > 1 for greedy sampling: the samples would all be equal.
        require(self.n == 1 or self.temperature > 0, "rollout.n", "1 when rollout.temperature is 0 (greedy)")
        require(
            self.val_n == 1 or self.val_temperature > 0,
            "rollout.val_n",
            "1 when rollout.val_temperature is 0",
        )
        require(self.dtype in DTYPES, "rollout.dtype", f"one of {', '.join(DTYPES)}")
        require(
            is_number(self.gpu_memory_utilization) and 0 < self.gpu_memory_utilization <= 1,
            "rollout.gpu_memory_utilization",
            "in (0, 1]",
        )
        require(
            self.kv_cache_gib is None or (is_number(self.kv_cache_gib) and self.kv_cache_gib > 0),
            "rollout.kv_cache_gib",
            "null or a number > 0",
        )
        require(
            self.max_num_batched_tokens is None
            or (is_int(self.max_num_batched_tokens) and self.max_num_batched_tokens >= 1),
            "rollout.max_num_batched_tokens",
            "null or an integer >= 1",
        )
        require(is_int(self.seed), "rollout.seed", "an integer")
        require(self.sleep_level in (1, 2), "rollout.sleep_level", "1 or 2")
        require(
            is_number(self.sync_bucket_mb) and self.sync_bucket_mb > 0,
            "rollout.sync_bucket_mb",
            "a number of MB > 0",
            self.sync_bucket_mb,
        )
        for name in ("enforce_eager", "enable_prefix_caching", "free_cache_engine"):
            require(isinstance(getattr(self, name), bool), f"rollout.{name}", "true or false")

    @classmethod
    def from_any(cls, config: RolloutConfig | Mapping[str, Any] | Any) -> RolloutConfig:
        """A `RolloutConfig` from itself, a mapping or an OmegaConf node (unknown keys are an error)."""
        return options_from_any(cls, config, "rollout")
