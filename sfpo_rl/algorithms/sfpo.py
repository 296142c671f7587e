"""SFPO (Slow-Fast Policy Optimization, arXiv 2510.04072): shard-local parameter ops and the step controller.

The parameter ops take any iterable of tensors: plain parameters, or the local shards of FSDP2 DTensors
(DTensors themselves are reduced to their local shard), so each rank works on its own piece only and no
full-parameter gather is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from sfpo_rl.utils.options import is_int, is_number, options_from_any, require


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def snapshot_(params: Iterable[torch.Tensor], device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Detached copies of the (local) parameters: the slow weights theta(s, 0). `device="cpu"` keeps them in
    host memory while the fast trajectory runs."""
    return [_local(p).detach().to(device=device or _local(p).device, copy=True) for p in params]


@torch.no_grad()
def reposition_(params: Iterable[torch.Tensor], slow: Iterable[torch.Tensor], alpha: float) -> None:
    """In place: theta = slow + alpha * (theta - slow).

    `lerp_(slow, 1 - alpha)` computes it with no temporary copy of the fast weights; alpha = 1 leaves them
    unchanged and alpha = 0 restores the slow weights exactly.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"algorithm.sfpo.alpha must be in [0, 1], got {alpha}")
    params, slow = [_local(p) for p in params], list(slow)
    _check_pairs(params, slow)
    for p, s in zip(params, slow):
        p.lerp_(s.to(p.device, non_blocking=True), 1.0 - alpha)


@torch.no_grad()
def restore_(params: Iterable[torch.Tensor], slow: Iterable[torch.Tensor]) -> None:
    """In place: theta = slow."""
    params, slow = [_local(p) for p in params], list(slow)
    _check_pairs(params, slow)
    for p, s in zip(params, slow):
        p.copy_(s)


@torch.no_grad()
def displacement_norm(params: Iterable[torch.Tensor], slow: Iterable[torch.Tensor]) -> torch.Tensor:
    """||theta - slow||_2 over this rank's (local) tensors, in float64; combine ranks by sqrt(sum of squares)."""
    params, slow = [_local(p) for p in params], list(slow)
    _check_pairs(params, slow)
    total = torch.zeros((), dtype=torch.float64)
    for p, s in zip(params, slow):
        total += (p.double() - s.to(p.device).double()).square().sum().cpu()
    return total.sqrt()


def _check_pairs(params: list[torch.Tensor], slow: list[torch.Tensor]) -> None:
    if len(params) != len(slow):
        raise ValueError(f"SFPO: {len(params)} parameters but {len(slow)} slow copies")
    for i, (p, s) in enumerate(zip(params, slow)):
        if p.shape != s.shape:
            raise ValueError(
                f"SFPO: parameter {i} has shape {tuple(p.shape)}, its slow copy {tuple(s.shape)}"
            )


# ---------------------------------------------------------------------------------------------- controller


@dataclass
class SFPOConfig:
    """`algorithm.sfpo.*`. With enable=false every step is a plain (GRPO-style) update."""

    enable: bool = True
    inner_steps: int = 3  # K fast updates per step
    alpha: float = 0.8  # reposition: theta0 + alpha (thetaK - theta0)
    stop_step: int | None = None  # steps >= stop_step are plain updates
    adaptive_switch: bool = True  # entropy z-score switch-off
    entropy_window: int = 30  # W, including the newest value
    entropy_threshold: float = 1.0
    two_sided: bool = False  # |z| >= threshold (the paper's text) instead of z >= threshold (its code)

    def __post_init__(self) -> None:
        for name in ("enable", "adaptive_switch", "two_sided"):
            value = getattr(self, name)
            require(isinstance(value, bool), f"algorithm.sfpo.{name}", "true or false", value)
        k, alpha, stop, window = self.inner_steps, self.alpha, self.stop_step, self.entropy_window
        require(is_int(k) and k >= 1, "algorithm.sfpo.inner_steps", "an integer >= 1", k)
        require(is_number(alpha) and 0.0 <= alpha <= 1.0, "algorithm.sfpo.alpha", "a number in [0, 1]", alpha)
        require(
            stop is None or (is_int(stop) and stop >= 0),
            "algorithm.sfpo.stop_step",
            "null or an integer >= 0",
            stop,
        )
        require(is_int(window) and window >= 2, "algorithm.sfpo.entropy_window", "an integer >= 2", window)
        threshold = self.entropy_threshold
        require(is_number(threshold), "algorithm.sfpo.entropy_threshold", "a number", threshold)

    @classmethod
    def from_any(cls, config: Any) -> SFPOConfig:
        return options_from_any(cls, config, "algorithm.sfpo")


@dataclass(frozen=True)
class StepPlan:
    sfpo: bool  # run the fast trajectory + reposition + slow correction; else one plain update
    inner_steps: int
    alpha: float
    reason: str  # why a plain step: "disabled", "stop_step", "entropy_switch"; "sfpo" otherwise


def entropy_z(window: list[float]) -> float:
    """z of the newest value against its window (which includes it), population std."""
    t = torch.tensor(window, dtype=torch.float64)
    return float((t[-1] - t.mean()) / (t.std(correction=0) + 1e-9))


class SFPOController:
    """Decides per step between an SFPO step and a plain step, and owns the entropy switch-off.

    The trainer calls `plan(step)` before each update and `observe(step, entropy)` after it with the token-mean
    policy entropy of that update's training passes. Once `entropy_window` values are recorded, the newest
    value's z-score against the last W values (the newest included, population std) is checked; when
    z >= threshold (|z| with two_sided) SFPO is switched off for good. The switch, its step and the entropy
    history are part of `state_dict()`, so a resumed run does not silently turn SFPO back on.
    """

    def __init__(self, config: SFPOConfig | Mapping[str, Any] | Any = None):
        self.config = SFPOConfig.from_any(config)
        self.history: list[tuple[int, float]] = []
        self.switched_off_after: int | None = None  # the step whose entropy fired the switch
        self.last_z: float | None = None

    @property
    def active(self) -> bool:
        """Whether the entropy switch still allows SFPO (enable / stop_step are checked per step in plan)."""
        return self.switched_off_after is None

    def plan(self, step: int) -> StepPlan:
        cfg = self.config
        if not cfg.enable:
            reason = "disabled"
        elif cfg.stop_step is not None and step >= cfg.stop_step:
            reason = "stop_step"
        elif not self.active:
            reason = "entropy_switch"
        else:
            return StepPlan(True, cfg.inner_steps, cfg.alpha, "sfpo")
        return StepPlan(False, cfg.inner_steps, cfg.alpha, reason)

    def observe(self, step: int, entropy: float) -> bool:
        """Record the step's training entropy; returns True when this value switches SFPO off."""
        entropy = float(entropy)
        if not math.isfinite(entropy):
            raise ValueError(f"SFPO controller: step {step} reported a non-finite entropy ({entropy})")
        if self.history and step <= self.history[-1][0]:
            raise ValueError(f"SFPO controller: step {step} observed after step {self.history[-1][0]}")
        self.history.append((int(step), entropy))
        cfg = self.config
        window = [e for _, e in self.history[-cfg.entropy_window :]]
        if len(window) < cfg.entropy_window:
            self.last_z = None
            return False
        self.last_z = entropy_z(window)
        score = abs(self.last_z) if cfg.two_sided else self.last_z
        if cfg.enable and cfg.adaptive_switch and self.active and score >= cfg.entropy_threshold:
            self.switched_off_after = int(step)
            return True
        return False

    def metrics(self, plan: StepPlan) -> dict[str, float]:
        out = {"sfpo/active": float(plan.sfpo), "sfpo/switched_off": float(not self.active)}
        if self.last_z is not None:
            out["sfpo/entropy_z"] = self.last_z
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [list(item) for item in self.history],
            "switched_off_after": self.switched_off_after,
            "last_z": self.last_z,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore history and switch; the current config is kept (a resumed run may change e.g. stop_step)."""
        self.history = [(int(s), float(e)) for s, e in state["history"]]
        self.switched_off_after = state["switched_off_after"]
        self.last_z = state.get("last_z")
