"""Resource pools: the Ray placement-group bundles a worker group's ranks run in (one bundle per rank).

`nodes=[2, 2]` asks for 2 bundles on each of 2 nodes. Strategies:
- `STRICT_PACK` (default): one placement group per entry of `nodes`, its bundles packed onto a single node,
  and every entry on a different node: ranks 0..1 share one node, ranks 2..3 share another (Ray picks
  which). This is what `trainer.nnodes` means. Entries are placed one after another, each excluding the
  nodes taken by the earlier ones (a `ray.io/node-id` label selector), so two entries never share a node
  even when one node could hold both.
- `PACK` / `SPREAD`: one placement group of all `sum(nodes)` bundles; Ray packs them onto as few nodes as
  possible / spreads them out. `nodes` then only fixes the bundle count.
Rank i always runs in bundle i, in the order of `bundles()`.
"""

from __future__ import annotations

import time

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

from sfpo_rl.controller.ray_init import ensure_ray

STRATEGIES = ("STRICT_PACK", "PACK", "SPREAD")
NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries its own id under this label


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
        self._groups: list[PlacementGroup] = []
        deadline = time.monotonic() + ready_timeout_s
        try:
            if strategy == "STRICT_PACK":
                self._place_on_distinct_nodes(deadline)
            else:
                pg = placement_group([bundle] * self.world_size, strategy=strategy, name=f"{name}:0")
                self._groups.append(pg)
                ray.get(pg.ready(), timeout=max(0.0, deadline - time.monotonic()))
        except GetTimeoutError:
            self.remove()
            raise ResourcePoolError(
                f"ResourcePool '{name}' could not place {self.nodes} bundles of {bundle} ({strategy}"
                f"{', one entry per node' if strategy == 'STRICT_PACK' else ''}) within {ready_timeout_s:.0f} s "
                f"on {_alive_nodes()} alive node(s); cluster total {_main_resources(ray.cluster_resources())}, "
                f"available {_main_resources(ray.available_resources())}"
            ) from None

    def _place_on_distinct_nodes(self, deadline: float) -> None:
        taken: list[str] = []
        for i, n in enumerate(self.nodes):
            options = {}
            if taken:  # label selectors need a recent Ray (2.60 is tested); one-node pools do without them
                options["bundle_label_selector"] = [{NODE_ID_LABEL: f"!in({','.join(taken)})"}] * n
            pg = placement_group(
                [self.bundle] * n, strategy="STRICT_PACK", name=f"{self.name}:{i}", **options
            )
            self._groups.append(pg)
            ray.get(pg.ready(), timeout=max(0.0, deadline - time.monotonic()))
            taken.append(self.node_ids()[i])

    def node_ids(self) -> list[str]:
        """The Ray node id each placement group (entry of `nodes`) was placed on."""
        return [placement_group_table(pg)["bundles_to_node_id"][0] for pg in self._groups]

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


def _alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def _main_resources(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items() if k in ("CPU", "GPU")}
