"""Weight sync, actor -> rollout engines, in one place: the actor's full weights reach the engines one bucket at
a time, never as a whole state dict in one place.

A bucket is a run of consecutive state-dict entries (HF names) of whole decoder layers, packed in order up to
`rollout.sync_bucket_mb` in the rollout dtype; a layer larger than that is a bucket of its own, and weights
outside the decoder layers (embeddings, final norm, LM head) each count as a layer. vLLM re-processes a layer
once all of its weights have arrived, so a bucket is always loadable on its own. Each tensor is gathered from
its FSDP shards with `full_tensor()` (cast to the rollout dtype first, which also halves the traffic for
bf16), on every rank together. Peak extra memory in any process is about one bucket plus what the engine needs
to re-process one layer (the layer rebuilt and, on the CPU build, repacked), never a whole state dict.

The driver syncs through one interface, `WeightSync`, in two variants:

- `ColocatedSync`: every actor rank feeds the engine in its own process (`load_own_shards`): a bucket is
  gathered, handed to the engine, and dropped before the next one is gathered. Nothing goes through Ray.
- `SplitSync`: every actor rank gathers bucket i (`actor_bucket`); rank 0 hands it (in host memory, through
  Ray's object store) to the engines, which load it before bucket i + 1 is gathered.

A LoRA actor (`actor.lora.rank > 0`) sends its adapter alone, as one bucket (`adapter_bucket`), to engines that
serve adapters; to engines that cannot, its buckets carry the base weights with the adapter merged in (HF
names), gathered in the actor's own dtype and cast after the merge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from sfpo_rl.workers.fsdp_utils import DTYPES
from sfpo_rl.workers.lora import is_adapter_name, lora_scaling, merge_lora, saved_name

if TYPE_CHECKING:
    from sfpo_rl.controller import RayWorkerGroup
    from sfpo_rl.workers.rollout import VLLMRollout

MIB = 2**20
SYNC_TOTALS = ("load_weights_s", "load_weights_mb", "load_weights_tensors")


def cast_dtype(rollout_dtype: str | None) -> torch.dtype | None:
    """The dtype weights are cast to before the gather: the engines' (`rollout.dtype`), or None for "auto" (as
    the actor holds them)."""
    return None if rollout_dtype in (None, "auto") else DTYPES[rollout_dtype]


@dataclass
class WeightBucket:
    """Bucket `index` of `count` in one sync: full tensors with HF names."""

    index: int
    count: int
    tensors: dict[str, torch.Tensor]
    adapter: bool = False  # a LoRA adapter (PEFT's saved names), not full weights


def plan_buckets(
    entries: Sequence[tuple[str, int]], layer_of: Callable[[str], str], bucket_bytes: float
) -> list[list[str]]:
    """Names (in order) grouped into buckets: consecutive entries of one layer stay together, and whole layers
    are packed into a bucket while it stays within `bucket_bytes`; a layer larger than that is a bucket alone.
    `entries` are (name, bytes) pairs."""
    buckets: list[list[str]] = []
    filled = 0.0
    for _, run in groupby(entries, key=lambda entry: layer_of(entry[0])):
        layer = list(run)
        names, nbytes = [name for name, _ in layer], sum(size for _, size in layer)
        if buckets and filled + nbytes <= bucket_bytes:
            buckets[-1].extend(names)
            filled += nbytes
        else:
            buckets.append(names)
            filled = nbytes
    return buckets


def weight_plan(model: nn.Module, bucket_mb: float, dtype: torch.dtype | None) -> list[list[str]]:
    """The buckets of the FSDP-sharded `model`'s state dict (see `plan_buckets`); the same on every rank."""
    # The decoder layers are the modules fully_shard wrapped below the root.
    prefixes = [
        f"{name}." for name, module in model.named_modules() if name and isinstance(module, FSDPModule)
    ]

    def layer_of(name: str) -> str:
        return next((p for p in prefixes if name.startswith(p)), name)

    entries = [(name, t.numel() * (dtype or t.dtype).itemsize) for name, t in model.state_dict().items()]
    return plan_buckets(entries, layer_of, bucket_mb * MIB)


@torch.no_grad()
def _gather(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The full tensor from this rank's shard (collective for a DTensor), in `dtype`."""
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)  # the shard, before the gather
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _gather_full(
    model: nn.Module, state: dict[str, torch.Tensor], names: list[str], dtype: torch.dtype | None
) -> list[tuple[str, torch.Tensor]]:
    """The full tensors of one bucket with HF names, a LoRA adapter merged in. Collective."""
    scaling = lora_scaling(model)
    if scaling is None:
        return [(name, _gather(state[name], dtype)) for name in names]
    merged = merge_lora({name: _gather(state[name], None) for name in names}, scaling)
    return [(name, t.to(dtype) if dtype is not None else t) for name, t in merged.items()]


def stream_weights(
    model: nn.Module, plan: list[list[str]], dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) pairs, gathered one bucket of `plan` at a time (a bucket is dropped before the
    next is gathered). Collective: every rank must exhaust the iterator."""
    state = model.state_dict()
    for names in plan:
        bucket = _gather_full(model, state, names, dtype)
        while bucket:  # hand each tensor over and drop this generator's reference to it
            yield bucket.pop(0)


def gather_bucket(
    model: nn.Module, plan: list[list[str]], index: int, dtype: torch.dtype | None = None
) -> WeightBucket:
    """Bucket `index` of `plan`, gathered on every rank (collective) into host memory as compact tensors
    (what goes through Ray's object store is each tensor's own bytes, not a larger buffer it views)."""
    if not 0 <= index < len(plan):
        raise IndexError(f"weight bucket {index} of {len(plan)}")
    tensors = {
        name: _host_copy(full) for name, full in _gather_full(model, model.state_dict(), plan[index], dtype)
    }
    return WeightBucket(index, len(plan), tensors)


def adapter_bucket(model: nn.Module, dtype: torch.dtype | None = None) -> WeightBucket:
    """A LoRA actor's whole adapter (PEFT's saved names) in host memory, gathered on every rank (collective)."""
    tensors = {
        saved_name(name): _host_copy(_gather(t, dtype))
        for name, t in model.state_dict().items()
        if is_adapter_name(name)
    }
    return WeightBucket(0, 1, tensors, adapter=True)


def _host_copy(full: torch.Tensor) -> torch.Tensor:
    return full.to("cpu", copy=True) if full.device.type != "cpu" or _is_view(full) else full


def _is_view(tensor: torch.Tensor) -> bool:
    return not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.nbytes


# ------------------------------------------------------------------ one actor rank's side


def actor_bucket(
    model: nn.Module, index: int, bucket_mb: float, rollout_dtype: str | None, adapter: bool
) -> WeightBucket:
    """Split placement: bucket `index` of this sync in host memory (`adapter`: a LoRA actor's adapter alone,
    one bucket). Collective."""
    dtype = cast_dtype(rollout_dtype)
    if adapter:
        return adapter_bucket(model, dtype)
    return gather_bucket(model, weight_plan(model, bucket_mb, dtype), index, dtype)


def load_own_shards(model: nn.Module, engine: VLLMRollout) -> dict[str, float]:
    """Colocated placement: load this process's actor weights into its engine, streamed from its shards one
    bucket at a time (a LoRA actor's adapter alone, where the engine serves it). Collective."""
    config = engine.config
    dtype = cast_dtype(config.dtype)
    if engine.serves_adapters:
        return {**engine.load_adapter(adapter_bucket(model, dtype).tensors), "buckets": 1.0}
    plan = weight_plan(model, config.sync_bucket_mb, dtype)
    stream = stream_weights(model, plan, dtype)
    try:
        return {**engine.load_weights(stream), "buckets": float(len(plan))}
    finally:
        for _ in stream:  # if the engine stopped reading, still take part in the peers' gathers
            pass


# ------------------------------------------------------------------ the driver's side


class WeightSync(ABC):
    """One sync of the actor group's weights into the rollout group's engines; returns `sync/` metrics."""

    def __call__(self, actor: RayWorkerGroup, rollout: RayWorkerGroup) -> dict[str, float]:
        stats = self.load(actor, rollout)
        stats["load_weights_mb_per_s"] = stats["load_weights_mb"] / max(stats["load_weights_s"], 1e-9)
        return {f"sync/{k}": v for k, v in stats.items()}

    @abstractmethod
    def load(self, actor: RayWorkerGroup, rollout: RayWorkerGroup) -> dict[str, float]:
        """The engines' load statistics (`SYNC_TOTALS` and `buckets`)."""


class ColocatedSync(WeightSync):
    """Every rank loads its own engine from its own shards (`load_own_shards`); rank 0's figures."""

    def load(self, actor: RayWorkerGroup, rollout: RayWorkerGroup) -> dict[str, float]:
        return rollout.sync_weights()[0]


@dataclass
class SplitSync(WeightSync):
    """Bucket i goes from actor rank 0 to the engines through the object store (never the driver) and is loaded
    before bucket i + 1 is gathered."""

    bucket_mb: float = 512.0
    rollout_dtype: str | None = None  # the engines' dtype; None or "auto": as the actor holds the weights
    adapter: bool = False  # a LoRA actor's adapter alone (the engines serve it)

    def load(self, actor: RayWorkerGroup, rollout: RayWorkerGroup) -> dict[str, float]:
        totals = dict.fromkeys(SYNC_TOTALS, 0.0)
        index, count = 0, 1
        while index < count:
            bucket = actor.weight_bucket.future(index, self.bucket_mb, self.rollout_dtype, self.adapter)
            stats = rollout.load_bucket(bucket.rank0_ref())[0]
            bucket.get()  # surfaces an actor-side failure by name
            for key in SYNC_TOTALS:
                totals[key] += stats[key]
            index, count = index + 1, int(stats["buckets"])
        return {**totals, "buckets": float(count)}
