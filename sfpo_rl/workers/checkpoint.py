"""Sharded actor checkpoints (torch.distributed.checkpoint) and the export of a plain HF model directory.

Checkpoint layout (one directory, written by every rank together):

    dcp/              model + optimizer state, each rank writes its own shards (loadable at another world size)
    scheduler.pt      LR scheduler state (identical on every rank; rank 0 writes it)
    rng/rank{r}.pt    RNG states of rank r: torch, CUDA (if any), python `random`, numpy
    actor_meta.json   written last, by rank 0, once every rank has finished: its presence marks a complete save

Loading unpickles nothing but plain data: `torch.load` runs with weights_only=True, and torch.distributed.checkpoint's
pickled metadata and non-tensor items are checked against an allow-list first, so a checkpoint from elsewhere
cannot run code. Atomicity (write to a temporary directory, then rename) is the trainer's job. Here every collective step
agrees across ranks on success, so a failure on one rank raises on all of them instead of leaving the others
waiting on a barrier, and an interrupted save has no `actor_meta.json` and is refused by `load`.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

logger = logging.getLogger(__name__)

META_FILE = "actor_meta.json"
FORMAT_VERSION = 2  # 2: RNG states stored as plain tensors and numbers (loadable with weights_only=True)

# What torch.distributed.checkpoint's metadata pickle may name: its own dataclasses and a few torch/pathlib types.
_DCP_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_DCP_METADATA_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            module in _DCP_METADATA_MODULES
            or (module, name) in _DCP_METADATA_GLOBALS
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in checkpoint metadata")
        return super().find_class(module, name)


class SafeFileSystemReader(dcp.FileSystemReader):
    """A DCP reader that refuses metadata naming anything but checkpoint metadata types."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                _MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"checkpoint metadata {path} refused: {exc}") from exc
        return super().read_metadata(*args, **kwargs)


class SafeLoadPlanner(DefaultLoadPlanner):
    """The default planner, but non-tensor items must load with torch.load(weights_only=True)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)  # raises on anything but tensors and plain containers/numbers
        value.seek(0)
        super().load_bytes(read_item, value)


def agree(action: Callable[[], Any], what: str, device: torch.device) -> Any:
    """Run `action` on this rank; if it fails on any rank, raise on every rank (no rank left in a barrier)."""
    error: Exception | None = None
    result = None
    try:
        result = action()
    except Exception as exc:  # re-raised below, on this rank and (as a RuntimeError) on the others
        error = exc
    ok = torch.tensor([0 if error else 1], dtype=torch.int32, device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if error is not None:
        raise error
    if not ok.item():
        raise RuntimeError(f"{what} failed on another rank (see that rank's error)")
    return result


def _rng_state() -> dict[str, Any]:
    """Tensors, numbers and tuples only, so `torch.load(weights_only=True)` reads it back."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = (
        name,
        torch.from_numpy(keys.astype(np.int64)),
        int(pos),
        int(has_gauss),
        float(cached_gaussian),
    )
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    lora_rank: int = 0,
) -> None:
    """Every rank must call it with the same `path` (a directory on storage all ranks see). With a LoRA adapter
    (`lora_rank` > 0) the model state is the adapter's alone: the frozen base weights are the model directory's."""
    root = Path(path)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    agree(
        lambda: (root / "rng").mkdir(parents=True, exist_ok=True), f"creating checkpoint dir {root}", device
    )
    model_sd, optim_sd = _state(model, optimizer, lora_rank)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=root / "dcp")

    def write_extras() -> None:
        torch.save(_rng_state(), root / "rng" / f"rank{rank}.pt")
        if rank == 0:
            torch.save(scheduler.state_dict(), root / "scheduler.pt")

    agree(write_extras, f"writing {root}/scheduler.pt and rng states", device)
    meta = {
        "format_version": FORMAT_VERSION,
        "world_size": world_size,
        "step": scheduler.last_epoch,
        "lora_rank": lora_rank,
    }
    agree(
        lambda: rank != 0 or (root / META_FILE).write_text(json.dumps(meta)), f"writing {META_FILE}", device
    )


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    lora_rank: int = 0,
) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote (by an actor with the same `lora_rank`); returns its metadata. RNG states come back only at the same world
    size (model and optimizer shards are resharded by torch.distributed.checkpoint at any world size)."""
    root = Path(path)
    meta_path = root / META_FILE

    def read_meta() -> dict[str, Any]:
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"actor checkpoint {root} is incomplete or not an actor checkpoint: {META_FILE} is missing "
                "(it is written last, so an interrupted save lacks it)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        if meta.get("lora_rank", 0) != lora_rank:
            raise ValueError(
                f"actor checkpoint {root} holds a model trained with actor.lora.rank={meta.get('lora_rank', 0)}; "
                f"this run has actor.lora.rank={lora_rank}"
            )
        return meta

    meta = agree(read_meta, f"reading {meta_path}", device)
    model_sd, optim_sd = _state(model, optimizer, lora_rank)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, storage_reader=SafeFileSystemReader(root / "dcp"), planner=SafeLoadPlanner())
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_state_options(lora_rank),
    )

    rank, world_size = dist.get_rank(), dist.get_world_size()

    def read_extras() -> None:
        scheduler.load_state_dict(torch.load(root / "scheduler.pt", weights_only=True))
        if meta["world_size"] == world_size:
            _set_rng_state(torch.load(root / "rng" / f"rank{rank}.pt", weights_only=True))
        elif rank == 0:
            logger.warning(
                "actor checkpoint %s was saved by %d ranks, loading on %d: RNG states not restored",
                root,
                meta["world_size"],
                world_size,
            )

    agree(read_extras, f"reading {root}/scheduler.pt and rng states", device)
    return meta


def _state_options(lora_rank: int) -> StateDictOptions | None:
    """A LoRA actor's state leaves out the frozen base (and so cannot be strict about holding every weight)."""
    return StateDictOptions(ignore_frozen_params=True, strict=False) if lora_rank > 0 else None


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, lora_rank: int) -> tuple[dict, dict]:
    """The model and optimizer state dicts a checkpoint holds: a LoRA actor's model state is its trainable
    weights alone (ignore_frozen_params keeps a tied LM head, an alias of the frozen embedding)."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_options(lora_rank))
    if lora_rank > 0:
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        model_sd = {name: t for name, t in model_sd.items() if name in trainable}
    return model_sd, optim_sd


def full_state_dict(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Full weights with the model's names in CPU memory on rank 0 (an empty dict on the others); only those
    that train with `trainable_only`. Collective.

    With tied embeddings `lm_head.weight` is kept: vLLM's in-place `reload_weights` leaves the LM head at its
    old values when it is missing (measured on the CPU build), though a fresh load from an HF dir re-ties it.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=options)


def export_hf(
    path: str | Path,
    state: dict[str, torch.Tensor] | None,
    source_dir: str | Path,
    tied_lm_head: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Write an HF model directory (config, safetensors weights in `dtype`, tokenizer, generation config) that
    transformers and vLLM load. The config and tokenizer are copied from `source_dir`, the model loaded at start.
    A tied LM head is left out, as in HF checkpoints (loaders re-tie it). Every rank must call it; rank 0 writes
    `state` (full weights with HF names; None on the other ranks)."""
    if tied_lm_head and state is not None:
        state.pop("lm_head.weight", None)

    def write() -> None:
        if dist.get_rank() != 0:
            return
        from huggingface_hub import save_torch_state_dict
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        # safetensors refuses views of larger storages (an unevenly sharded dim is gathered padded, then cut).
        weights = {name: _owning(t.to(dtype)) for name, t in state.items()}
        save_torch_state_dict(weights, out, metadata={"format": "pt"})
        AutoConfig.from_pretrained(source_dir).save_pretrained(out)
        AutoTokenizer.from_pretrained(source_dir).save_pretrained(out)
        if (Path(source_dir) / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(source_dir).save_pretrained(out)

    agree(write, f"exporting the HF model to {path}", device)


def _owning(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself if it spans its whole storage, else a compact copy."""
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.nbytes:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)
