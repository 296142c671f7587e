"""What one actor update returns to the driver: the fields the driver decides on, and the metrics it logs.

Every number is already reduced over the actor's ranks, so each rank returns the same result. No torch here:
the driver imports it without the actor's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FastTrajectory:
    """How SFPO's fast trajectory ended on one step."""

    skipped_steps: int  # fast-pass optimizer steps skipped for a non-finite loss or gradient
    restored: bool  # the fast trajectory went non-finite and was discarded: the slow weights were restored


@dataclass(frozen=True)
class UpdateResult:
    skipped_steps: int  # optimizer steps of the (slow) pass skipped for a non-finite loss or gradient
    entropy: float  # token-mean policy entropy of the (slow) training pass: what SFPO's switch-off watches
    sfpo: FastTrajectory | None = None  # None: a plain update
    metrics: dict[str, float] = field(default_factory=dict)  # for logging: actor/*, sfpo/*

    @property
    def all_skipped_steps(self) -> int:
        return self.skipped_steps + (self.sfpo.skipped_steps if self.sfpo else 0)

    @property
    def nonfinite(self) -> bool:
        """The update met a non-finite loss or gradient (or fast weights) somewhere."""
        return self.all_skipped_steps > 0 or (self.sfpo is not None and self.sfpo.restored)
