"""Fault injection for tests (the run config's `faults:` section): hooks installed on a worker only when a
fault is configured, so nothing on the training path looks at fault options in an ordinary run."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfpo_rl.workers.actor import FSDPActor

# "<step>" or "<step>:<pass>", pass = update (a plain update), fast<k> (SFPO fast pass k), slow (SFPO slow pass)
NONFINITE_LOSS_POINT = re.compile(r"^[1-9]\d*(:(update|slow|fast\d+))?$")
# "<step>:<role>:<rank>": SIGKILL that worker at the start of the step
WORKER_KILL = re.compile(r"(\d+):(actor|rollout|reward|ref):(\d+)")


def inject_nonfinite_loss(actor: FSDPActor, points: Iterable[str]) -> None:
    """Make `actor`'s loss NaN in every update pass that `points` names (faults.nonfinite_loss): a training step
    (1-based), "3", or a step and one pass of it, "3:update", "3:fast0", "3:slow". Wraps the actor's pass; the
    passes that are not named run untouched."""
    points = {str(p) for p in points}
    ordinary_pass = actor._policy_pass

    def pass_with_faults(data, pass_index: int, stage: str):
        step = actor.scheduler.last_epoch + 1  # 1-based: the schedule advances once per training step
        if not {str(step), f"{step}:{stage}"} & points:
            return ordinary_pass(data, pass_index, stage)
        actor.loss_scale = math.nan
        try:
            return ordinary_pass(data, pass_index, stage)
        finally:
            actor.loss_scale = float(actor.world_size)

    actor._policy_pass = pass_with_faults
