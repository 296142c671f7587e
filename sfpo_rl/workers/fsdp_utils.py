"""FSDP2 plumbing for the actor: device and attention kernel choice, sharding a transformers causal LM, local
shards, global norms."""

from __future__ import annotations

import importlib.util

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> torch.device:
    """This process's accelerator (the one `torch.cuda.set_device` selected), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def attention_implementation(device: torch.device, param_dtype: torch.dtype) -> str | None:
    """flash-attention 2 on CUDA in half precision when it is installed (its varlen kernel runs packed
    sequences without padding); None (transformers' default, SDPA) elsewhere."""
    half = param_dtype in (torch.bfloat16, torch.float16)
    if device.type == "cuda" and half and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, found by the class names transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__}: it lists no `_no_split_modules` "
            "that match its submodules, so there is nothing to wrap with fully_shard per layer"
        )
    return layers


def shard_model(model: nn.Module, device: torch.device, mp_policy: MixedPrecisionPolicy | None) -> DeviceMesh:
    """`fully_shard` every decoder layer, then the root (embeddings, final norm, LM head) over all ranks.

    Parameters are moved to `device` one layer at a time, so a model loaded in host memory never sits whole on
    the accelerator.
    """
    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp",))
    kwargs = {"mesh": mesh} if mp_policy is None else {"mesh": mesh, "mp_policy": mp_policy}
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return mesh


def local_shards(params: list[nn.Parameter]) -> list[torch.Tensor]:
    """This rank's piece of each parameter (a view sharing storage, so in-place ops change the parameter)."""
    return [p.to_local() if isinstance(p, DTensor) else p for p in params]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over ranks (in place on a copy; float64 so sums of many terms stay exact enough)."""
    out = values.detach().to(torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(value: float, device: torch.device) -> float:
    out = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return float(out.item())
