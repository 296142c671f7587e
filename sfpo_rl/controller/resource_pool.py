"""Resource pools: the Ray placement-group bundles a worker group's ranks run in (one bundle per rank).

`nodes=[2, 2]` asks for 2 bundles on each of 2 nodes. Strategies:
- `STRICT_PACK` (default): one placement group per entry of `nodes`, its bundles packed onto a single node,
  so ranks 0..1 share a node and ranks 2..3 share a node (Ray picks which nodes; on clusters whose nodes
  are filled by one pool each, the entries land on distinct nodes).
- `PACK` / `SPREAD`: one placement group of all `sum(nodes)` bundles; Ray packs them onto as few nodes as
  possible / spreads them out. `nodes` then only fixes the bundle count.
Rank i always runs in bundle i, in the order of `bundles()`.
"""

from __future__ import annotations

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from sfpo_rl.controller.ray_init import ensure_ray

STRATEGIES = ("STRICT_PACK", "PACK", "SPREAD")


class ResourcePoolError(RuntimeError):
    """The pool was misconfigured or its bundles cannot be placed on the cluster."""


class ResourcePool:
    def __init__(
        self,
        nodes: list[int],
        use_gpu: bool = False,
        cpus_per_bundle: float = 1,
        name: str = "pool",
        strategy: str = "STRICT_PACK",
        gpus_per_bundle: float = 1,
        ready_timeout_s: float = 120.0,
    ):
        if not nodes or any(not isinstance(n, int) or n < 1 for n in nodes):
            raise ResourcePoolError(
                f"ResourcePool '{name}': nodes must list bundles per node (>= 1), got {nodes}"
            )
        if strategy not in STRATEGIES:
            raise ResourcePoolError(
                f"ResourcePool '{name}': strategy {strategy!r} is not one of {STRATEGIES}"
            )
        self.nodes = list(nodes)
        self.use_gpu = use_gpu
        self.cpus_per_bundle = cpus_per_bundle
        self.gpus_per_bundle = gpus_per_bundle if use_gpu else 0
        self.name = name
        self.strategy = strategy
        self.hosted_by: str | None = None  # the worker group living in this pool (one per pool)
        bundle = {"CPU": cpus_per_bundle, **({"GPU": gpus_per_bundle} if use_gpu else {})}
        self.bundle = bundle
        ensure_ray()
        if strategy == "STRICT_PACK":
            groups = [[bundle] * n for n in self.nodes]
        else:
            groups = [[bundle] * self.world_size]
        self._groups: list[PlacementGroup] = [
            placement_group(bundles, strategy=strategy, name=f"{name}:{i}")
            for i, bundles in enumerate(groups)
        ]
        try:
            ray.get([pg.ready() for pg in self._groups], timeout=ready_timeout_s)
        except GetTimeoutError:
            self.remove()
            raise ResourcePoolError(
                f"ResourcePool '{name}' could not place {self.nodes} bundles of {bundle} ({strategy}) within "
                f"{ready_timeout_s:.0f} s; cluster total {_main_resources(ray.cluster_resources())}, "
                f"available {_main_resources(ray.available_resources())}"
            ) from None

    @property
    def world_size(self) -> int:
        return sum(self.nodes)

    def bundles(self) -> list[tuple[PlacementGroup, int]]:
        """(placement group, bundle index) of each rank, rank order."""
        if not self._groups:
            raise ResourcePoolError(f"ResourcePool '{self.name}' was removed; create a new pool")
        return [(pg, i) for pg in self._groups for i in range(pg.bundle_count)]

    def remove(self) -> None:
        """Release the bundles (idempotent); actors still placed in them are killed by Ray."""
        for pg in self._groups:
            remove_placement_group(pg)
        self._groups = []

    def __repr__(self) -> str:
        return f"ResourcePool({self.name!r}, nodes={self.nodes}, bundle={self.bundle}, {self.strategy})"


def _main_resources(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items() if k in ("CPU", "GPU")}
