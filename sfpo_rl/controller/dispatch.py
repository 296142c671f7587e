"""How a call on a worker group becomes one call per rank, and how the per-rank results become one value.

Pure logic (no Ray calls), so the split/collect rules are unit-tested without a cluster.

Dispatch modes (chosen per worker method with `@register`):

- `DP_SPLIT`: the first positional argument is the data. A `Batch` is split with `Batch.split(world_size)`
  (contiguous chunks, the first `len % world_size` one row larger), a `list` into contiguous sublists of the
  same sizes; chunk i goes to rank i, every other argument goes unchanged to every rank. A rank may get an
  empty chunk when there are fewer rows than ranks; the worker method must cope (it still takes part in
  any collective). Results are collected in rank order: all `Batch` -> `Batch.concat` (meta from rank 0),
  all `list` -> one concatenated list, anything else (e.g. a dict of metrics) -> the list of per-rank results.
- `ALL`: the same arguments to every rank; returns the list of per-rank results.
- `RANK0`: rank 0 only; returns its result. A method whose body needs every rank (a collective) must be `ALL`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sfpo_rl.protocol import Batch

F = TypeVar("F", bound=Callable[..., Any])

METHOD_SPEC_ATTR = "_sfpo_method_spec"


class Dispatch(enum.StrEnum):
    DP_SPLIT = "dp_split"
    ALL = "all"
    RANK0 = "rank0"


@dataclass(frozen=True)
class MethodSpec:
    dispatch: Dispatch
    blocking: bool = True


def register(dispatch: Dispatch | str = Dispatch.ALL, *, blocking: bool = True) -> Callable[[F], F]:
    """Expose a worker method on its `RayWorkerGroup` with the given dispatch mode.

    `blocking=False` makes a plain group call return a `Future` (as `.future(...)` always does).
    """
    try:
        mode = Dispatch(dispatch)
    except ValueError:
        valid = ", ".join(d.value for d in Dispatch)
        raise ValueError(f"register(dispatch={dispatch!r}): unknown dispatch mode; valid: {valid}") from None

    def mark(fn: F) -> F:
        setattr(fn, METHOD_SPEC_ATTR, MethodSpec(mode, blocking))
        return fn

    return mark


def registered_methods(cls: type) -> dict[str, MethodSpec]:
    """Name -> spec of every `@register`-ed method of `cls` (inherited ones included)."""
    methods = {}
    for name in dir(cls):
        spec = getattr(getattr(cls, name, None), METHOD_SPEC_ATTR, None)
        if isinstance(spec, MethodSpec):
            methods[name] = spec
    return methods


@dataclass
class RankCall:
    """One remote call: `chunk=(i, n)` asks the worker to keep chunk i of n of its first argument itself
    (used when the data is an ObjectRef the driver does not fetch)."""

    rank: int
    args: tuple
    kwargs: dict[str, Any]
    chunk: tuple[int, int] | None = None


def take_chunk(data: Batch | list, index: int, n: int) -> Batch | list:
    """Chunk `index` of `n` of a Batch or list, with `Batch.chunk_sizes` (the same rows `Batch.split` gives)."""
    if not isinstance(data, Batch | list):
        raise TypeError(f"DP_SPLIT data must be a Batch or a list, got {type(data).__name__}")
    sizes = Batch.chunk_sizes(len(data), n)
    start = sum(sizes[:index])
    return data[start : start + sizes[index]]


def plan_calls(
    method: str,
    spec: MethodSpec,
    world_size: int,
    args: tuple,
    kwargs: dict[str, Any],
    is_remote_ref: Callable[[Any], bool] = lambda _: False,
) -> list[RankCall]:
    """The per-rank calls for one group call. `is_remote_ref(x)` says whether x is a Ray ObjectRef."""
    if spec.dispatch is Dispatch.RANK0:
        return [RankCall(0, args, kwargs)]
    if spec.dispatch is Dispatch.ALL:
        return [RankCall(rank, args, kwargs) for rank in range(world_size)]
    if not args:
        raise TypeError(
            f"'{method}' is registered DP_SPLIT: pass the data (a Batch or a list) as the first positional argument"
        )
    data, rest = args[0], args[1:]
    if is_remote_ref(data):
        return [RankCall(rank, args, kwargs, chunk=(rank, world_size)) for rank in range(world_size)]
    if not isinstance(data, Batch | list):
        raise TypeError(
            f"'{method}' is registered DP_SPLIT: its first argument must be a Batch, a list or an ObjectRef "
            f"to one, got {type(data).__name__}"
        )
    return [RankCall(rank, (take_chunk(data, rank, world_size), *rest), kwargs) for rank in range(world_size)]


def collect_results(spec: MethodSpec, results: list[Any]) -> Any:
    """One value from the per-rank results (in rank order), per the module rules."""
    if spec.dispatch is Dispatch.RANK0:
        return results[0]
    if spec.dispatch is Dispatch.ALL:
        return results
    if all(isinstance(r, Batch) for r in results):
        return Batch.concat(results)
    if all(isinstance(r, list) for r in results):
        return [row for r in results for row in r]
    return results
