"""LoRA on the actor (PEFT adapters under FSDP2) and the adapter's way to the rollout engines.

With `actor.lora.rank > 0` the actor's model is a PEFT model: the base weights are frozen, so the optimizer,
the gradient reduce-scatter, SFPO's slow copy and the checkpoints hold the adapter only, and the reference
policy of a KL term is the same network with its adapter switched off. The engines get the adapter alone
(`adapter_tensors`, served by vLLM as a LoRA adapter) unless they cannot serve it (`unservable_reason`): then
they get merged full weights (`merge_lora`), as without LoRA.

Names: inside the actor a weight is `base_model.model.<HF name>` with `.base_layer` before a wrapped layer's
own weights and `lora_A.default` / `lora_B.default` for the adapter's; PEFT's saved adapter files (what vLLM
reads) drop the adapter name: `base_model.model.<module>.lora_A.weight`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfpo_rl.utils.options import ConfigError, is_int, is_number, options_from_any, require

# The attention and MLP projections of Qwen2 / Llama-style decoders.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# vLLM's engine option max_lora_rank takes one of these; a larger rank cannot be served.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM serves LoRA on linear layers only: its LM head and embeddings are vocabulary-parallel embeddings.
NOT_LINEAR_IN_VLLM = ("lm_head", "embed_tokens")
ADAPTER_NAME = "default"  # PEFT's name for the one adapter
PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoraConfig:
    """`actor.lora.*`: rank 0 trains every weight; rank > 0 trains a LoRA adapter of that rank instead."""

    rank: int = 0
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input in training passes (log-prob passes and vLLM use none)
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))

    def __post_init__(self) -> None:
        require(
            is_int(self.rank) and self.rank >= 0, "actor.lora.rank", "an integer >= 0 (0: off)", self.rank
        )
        require(is_number(self.alpha) and self.alpha > 0, "actor.lora.alpha", "a number > 0", self.alpha)
        require(
            is_number(self.dropout) and 0 <= self.dropout < 1, "actor.lora.dropout", "in [0, 1)", self.dropout
        )
        modules = self.target_modules
        require(
            not isinstance(modules, str)
            and len(modules) > 0
            and all(isinstance(m, str) and m for m in modules),
            "actor.lora.target_modules",
            "a non-empty list of module names, e.g. [q_proj, v_proj]",
            modules,
        )
        self.target_modules = list(modules)

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def peft_config(self) -> Any:
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    @classmethod
    def from_any(cls, config: Any) -> LoraConfig:
        return options_from_any(cls, config, "actor.lora")


# ---------------------------------------------------------------------------------------------- before launch


def module_names(model: nn.Module) -> list[str]:
    """The names LoRA can target: the last name component of the model's linear and embedding layers."""
    kinds = (nn.Linear, nn.Embedding)
    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and isinstance(m, kinds)}
    )


def check_target_modules(lora: LoraConfig, hf_config: Any, model: str) -> None:
    """ConfigError naming actor.lora.target_modules and the model's module names unless every target is one of
    them. The model is built on the meta device: no weights are read or allocated."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        names = module_names(AutoModelForCausalLM.from_config(hf_config))
    unknown = [m for m in lora.target_modules if m not in names]
    if unknown:
        raise ConfigError(
            f"actor.lora.target_modules: {unknown} not in {model}; its module names are {', '.join(names)}"
        )
    tied = [m for m in lora.target_modules if m in ("lm_head", "embed_tokens")]
    if tied and getattr(hf_config, "tie_word_embeddings", False):
        raise ConfigError(
            f"actor.lora.target_modules: {tied} of {model}, whose LM head and embeddings share one weight; "
            "an adapter on either would untie them (leave them out)"
        )


# ---------------------------------------------------------------------------------------------- the actor


def add_adapter(model: nn.Module, lora: LoraConfig, seed: int) -> nn.Module:
    """`model` as a PEFT model with a fresh adapter (base weights frozen). The adapter's initial values depend on
    `seed` only, so every rank starts from the same adapter (each then keeps its shard of it) and a
    single-process reference can rebuild it."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, lora.peft_config())


def lora_scaling(model: nn.Module) -> float | None:
    """alpha / rank of a PEFT model's adapter; None for a model without one."""
    config = getattr(model, "peft_config", {}).get(ADAPTER_NAME)
    return None if config is None else config.lora_alpha / config.r


def saved_name(name: str) -> str:
    """A parameter's name in PEFT's saved adapter files: `...q_proj.lora_A.default.weight` -> `...q_proj.lora_A.weight`."""
    return name.replace(f".lora_A.{ADAPTER_NAME}.", ".lora_A.").replace(
        f".lora_B.{ADAPTER_NAME}.", ".lora_B."
    )


def is_adapter_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def merge_lora(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Full weights with HF names from a PEFT model's full state dict (or any part of it holding whole layers):
    W + scaling * B @ A for each adapted layer, computed in float32 and cast back to W's dtype."""
    merged = {}
    for name, tensor in state.items():
        if is_adapter_name(name):
            continue
        hf = name.removeprefix(PEFT_PREFIX)
        if ".base_layer." in name:
            module = name.split(".base_layer.")[0]
            hf = hf.replace(".base_layer.", ".")
            if name.endswith(".weight"):
                a = state[f"{module}.lora_A.{ADAPTER_NAME}.weight"].float()
                b = state[f"{module}.lora_B.{ADAPTER_NAME}.weight"].float()
                tensor = (tensor.float() + scaling * (b @ a)).to(tensor.dtype)
        merged[hf] = tensor
    return merged


# ---------------------------------------------------------------------------------------------- the engines


def unservable_reason(lora: LoraConfig, architectures: list[str]) -> str | None:
    """Why vLLM cannot serve this adapter on this model (None: it can). Imports vLLM."""
    if lora.rank > VLLM_LORA_RANKS[-1]:
        return f"actor.lora.rank={lora.rank} is above vLLM's largest LoRA rank, {VLLM_LORA_RANKS[-1]}"
    not_linear = [m for m in lora.target_modules if m in NOT_LINEAR_IN_VLLM]
    if not_linear:
        return f"vLLM serves LoRA on linear layers only, not on {not_linear} (actor.lora.target_modules)"
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora

    for arch in architectures:
        try:
            model_cls = ModelRegistry._try_load_model_cls(arch)
        except Exception:  # an architecture vLLM cannot even import: it cannot serve adapters either
            model_cls = None
        if model_cls is not None:
            return None if supports_lora(model_cls) else f"vLLM's {arch} does not support LoRA"
    return f"vLLM has no LoRA-capable implementation of {architectures}"


def engine_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `rank`."""
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def write_adapter(
    directory: str | Path, tensors: Mapping[str, torch.Tensor], lora: LoraConfig, base_model: str
) -> Path:
    """A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that PEFT and vLLM load."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = lora.peft_config().to_dict()
    config["base_model_name_or_path"] = str(base_model)
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1, default=str))
    # safetensors takes only tensors that own their storage (a gathered shard may be a view of a padded one).
    weights = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    save_file(weights, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return out
