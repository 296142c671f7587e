"""The batch container that moves between the driver and the workers.

A `Batch` holds named tensors that share dimension 0, non-tensor columns (numpy object arrays: prompts,
ground truths, data sources, uids), and a small `meta` dict that travels with the batch unchanged.
Every operation returns a new `Batch`; tensors are shared, not copied, where torch allows it.

Uneven splits: `split(n)` makes `n` chunks whose sizes differ by at most one, the first `total % n`
chunks one larger (`Batch.chunk_sizes`). No padding is added, so `concat(split(n))` is the identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Index = int | slice | Sequence[int] | np.ndarray | torch.Tensor


class BatchError(ValueError):
    """A batch was built or combined with inconsistent columns."""


def _as_column(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value if value.dtype == object else value.astype(object)
    if isinstance(value, list | tuple):
        column = np.empty(len(value), dtype=object)
        column[:] = list(value)  # element-wise, so lists of lists stay lists
        return column
    raise BatchError(f"non-tensor column '{name}' must be a list or numpy array, got {type(value).__name__}")


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    non_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.non_tensors = {k: _as_column(k, v) for k, v in self.non_tensors.items()}
        self._check()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, columns: dict[str, Any], meta: dict[str, Any] | None = None) -> Batch:
        """Tensors go to `tensors`, everything else (lists, arrays) to `non_tensors`."""
        tensors = {k: v for k, v in columns.items() if isinstance(v, torch.Tensor)}
        others = {k: v for k, v in columns.items() if not isinstance(v, torch.Tensor)}
        return cls(tensors, others, dict(meta or {}))

    def _check(self) -> None:
        sizes = {k: v.shape[0] for k, v in self.tensors.items() if v.dim() > 0}
        sizes.update({k: len(v) for k, v in self.non_tensors.items()})
        for k, v in self.tensors.items():
            if v.dim() == 0:
                raise BatchError(f"tensor '{k}' is a scalar; batch tensors need a batch dimension")
        if len(set(sizes.values())) > 1:
            detail = ", ".join(f"{k}={n}" for k, n in sizes.items())
            raise BatchError(f"columns disagree on batch size: {detail}")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        for v in self.tensors.values():
            return v.shape[0]
        for v in self.non_tensors.values():
            return len(v)
        return 0

    def keys(self) -> list[str]:
        return [*self.tensors, *self.non_tensors]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors or key in self.non_tensors

    def __getitem__(self, item: str | Index) -> Any:
        if isinstance(item, str):
            if item in self.tensors:
                return self.tensors[item]
            if item in self.non_tensors:
                return self.non_tensors[item]
            raise KeyError(f"batch has no column '{item}'; columns: {sorted(self.keys())}")
        return self._index(item)

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.dim() == 0:
                raise BatchError(f"tensor '{key}' is a scalar; batch tensors need a batch dimension")
            size = value.shape[0]
        else:
            value = _as_column(key, value)
            size = len(value)
        others = [v.shape[0] for k, v in self.tensors.items() if k != key]
        others += [len(v) for k, v in self.non_tensors.items() if k != key]
        if others and size != others[0]:
            raise BatchError(f"column '{key}' has batch size {size}, the batch has {others[0]}")
        self.tensors.pop(key, None)
        self.non_tensors.pop(key, None)
        (self.tensors if isinstance(value, torch.Tensor) else self.non_tensors)[key] = value

    def _index(self, idx: Index) -> Batch:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        if isinstance(idx, slice):
            np_idx: Any = idx
            t_idx: Any = idx
        else:
            np_idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
            if np_idx.dtype == bool:
                np_idx = np.flatnonzero(np_idx)
            t_idx = torch.as_tensor(np_idx, dtype=torch.long)
        tensors = {
            k: v[t_idx.to(v.device) if isinstance(t_idx, torch.Tensor) else t_idx]
            for k, v in self.tensors.items()
        }
        non_tensors = {k: v[np_idx] for k, v in self.non_tensors.items()}
        return Batch(tensors, non_tensors, dict(self.meta))

    # ------------------------------------------------------------------ column operations
    def select(
        self, keys: Iterable[str] | None = None, non_tensor_keys: Iterable[str] | None = None
    ) -> Batch:
        """Keep only the named columns (None keeps all of that kind)."""
        tensors = self.tensors if keys is None else {k: self._require(k, self.tensors) for k in keys}
        non_tensors = (
            self.non_tensors
            if non_tensor_keys is None
            else {k: self._require(k, self.non_tensors) for k in non_tensor_keys}
        )
        return Batch(dict(tensors), dict(non_tensors), dict(self.meta))

    def pop(self, keys: Iterable[str]) -> Batch:
        """Remove the named columns (tensor or not) from this batch and return them as a new batch."""
        keys = list(keys)
        for k in keys:
            if k not in self:
                raise KeyError(f"batch has no column '{k}'; columns: {sorted(self.keys())}")
        tensors = {k: self.tensors.pop(k) for k in keys if k in self.tensors}
        non_tensors = {k: self.non_tensors.pop(k) for k in keys if k in self.non_tensors}
        return Batch(tensors, non_tensors, dict(self.meta))

    @staticmethod
    def _require(key: str, columns: dict[str, Any]) -> Any:
        if key not in columns:
            raise KeyError(f"batch has no column '{key}'; columns: {sorted(columns)}")
        return columns[key]

    def union(self, other: Batch) -> Batch:
        """Columns of both batches; a key present in both must hold equal values, else BatchError."""
        if self.keys() and other.keys() and len(self) != len(other):
            raise BatchError(f"cannot union batches of size {len(self)} and {len(other)}")
        tensors = dict(self.tensors)
        for k, v in other.tensors.items():
            if k in tensors and not (
                tensors[k].shape == v.shape and torch.equal(tensors[k], v.to(tensors[k].device))
            ):
                raise BatchError(
                    f"union conflict on tensor '{k}': both batches have it with different values"
                )
            tensors[k] = v
        non_tensors = dict(self.non_tensors)
        for k, v in other.non_tensors.items():
            if k in non_tensors and not _columns_equal(non_tensors[k], v):
                raise BatchError(
                    f"union conflict on column '{k}': both batches have it with different values"
                )
            non_tensors[k] = v
        meta = dict(self.meta)
        for k, v in other.meta.items():
            if k in meta and meta[k] != v:
                raise BatchError(f"union conflict on meta '{k}': {meta[k]!r} vs {v!r}")
            meta[k] = v
        return Batch(tensors, non_tensors, meta)

    # ------------------------------------------------------------------ row operations
    @staticmethod
    def chunk_sizes(total: int, n: int) -> list[int]:
        if n < 1:
            raise BatchError(f"cannot split into {n} chunks")
        base, extra = divmod(total, n)
        return [base + (1 if i < extra else 0) for i in range(n)]

    def split(self, n: int) -> list[Batch]:
        """`n` contiguous chunks, sizes from `chunk_sizes` (first ones one larger when uneven)."""
        chunks, start = [], 0
        for size in self.chunk_sizes(len(self), n):
            chunks.append(self._index(slice(start, start + size)))
            start += size
        return chunks

    def split_by_size(self, size: int) -> list[Batch]:
        """Consecutive chunks of `size` rows (the last may be smaller): micro-batches."""
        if size < 1:
            raise BatchError(f"chunk size must be >= 1, got {size}")
        return [self._index(slice(i, i + size)) for i in range(0, len(self), size)]

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        if not batches:
            raise BatchError("cannot concat an empty list of batches")
        first = batches[0]
        for i, b in enumerate(batches[1:], start=1):
            if set(b.tensors) != set(first.tensors) or set(b.non_tensors) != set(first.non_tensors):
                raise BatchError(
                    f"cannot concat: batch {i} has columns {sorted(b.keys())}, batch 0 has {sorted(first.keys())}"
                )
        tensors = {k: torch.cat([b.tensors[k] for b in batches]) for k in first.tensors}
        non_tensors = {k: np.concatenate([b.non_tensors[k] for b in batches]) for k in first.non_tensors}
        return Batch(tensors, non_tensors, dict(first.meta))

    def repeat_interleave(self, n: int) -> Batch:
        """Each row repeated n times in place: [a, b] -> [a, a, b, b] (n samples per prompt)."""
        tensors = {k: v.repeat_interleave(n, dim=0) for k, v in self.tensors.items()}
        non_tensors = {k: np.repeat(v, n) for k, v in self.non_tensors.items()}
        return Batch(tensors, non_tensors, dict(self.meta))

    def to(self, device: str | torch.device) -> Batch:
        return Batch(
            {k: v.to(device) for k, v in self.tensors.items()}, dict(self.non_tensors), dict(self.meta)
        )

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # Tensors travel as numpy arrays: Ray moves those out-of-band (zero-copy into the object store),
        # while pickled torch storages are copied into the pickle stream. bf16 has no numpy dtype,
        # so it travels as its int16 bit pattern.
        packed = {}
        for k, v in self.tensors.items():
            v = v.detach().cpu().contiguous()
            if v.dtype == torch.bfloat16:
                packed[k] = ("bf16", v.view(torch.int16).numpy())
            else:
                packed[k] = ("np", v.numpy())
        return {"tensors": packed, "non_tensors": self.non_tensors, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        tensors = {}
        for k, (kind, arr) in state["tensors"].items():
            # Arrays read from Ray's object store are read-only; torch needs writable memory.
            t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
            tensors[k] = t.view(torch.bfloat16) if kind == "bf16" else t
        self.tensors = tensors
        self.non_tensors = state["non_tensors"]
        self.meta = state["meta"]

    def __repr__(self) -> str:
        cols = [
            f"{k}:{tuple(v.shape)}:{str(v.dtype).removeprefix('torch.')}" for k, v in self.tensors.items()
        ]
        cols += [f"{k}:obj" for k in self.non_tensors]
        return f"Batch(len={len(self)}, {', '.join(cols)}, meta={sorted(self.meta)})"


def _columns_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and all(
        x == y if not isinstance(x, np.ndarray) else np.array_equal(x, y) for x, y in zip(a, b)
    )
