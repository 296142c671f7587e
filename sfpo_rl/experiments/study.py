"""The GRPO-vs-SFPO study's design, fixed before any of its numbers (results/compare/PROTOCOL.md says why).

Six arms, each at every learning rate of the grid, each a normal `sfpo-rl-train` run of the embedded default
(task, model, batch, steps, validation) with only the arm's overrides, `actor.lr` and the seed changed:

    grpo        plain GRPO, one optimizer pass per batch
    sfpo        SFPO with the paper's defaults: K=3, alpha=0.8, entropy switch-off      (headline pair: 5 seeds)
    grpo_x4     GRPO with actor.ppo_epochs=4: SFPO K=3's optimizer steps per batch, no reposition
    sfpo_k7_a0.2, sfpo_k7_a0.5   K=7 with a strongly damped reposition
    grpo_x8     GRPO with actor.ppo_epochs=8: the K=7 arms' optimizer steps per batch
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...]
    seeds: int  # how many seeds (0, 1, ...) each learning rate gets
    matched_to: str | None = None  # the GRPO arm with as many optimizer steps per batch
    description: str = ""


ARMS = (
    Arm("grpo", ("algorithm=grpo",), 5, description="GRPO, 1 pass per batch"),
    Arm("sfpo", ("algorithm=sfpo",), 5, "grpo_x4", "SFPO K=3, alpha=0.8 (paper defaults)"),
    Arm("grpo_x4", ("algorithm=grpo", "actor.ppo_epochs=4"), 3, description="GRPO, 4 passes per batch"),
    Arm(
        "sfpo_k7_a0.2",
        ("algorithm=sfpo", "algorithm.sfpo.inner_steps=7", "algorithm.sfpo.alpha=0.2"),
        3,
        "grpo_x8",
        "SFPO K=7, alpha=0.2",
    ),
    Arm(
        "sfpo_k7_a0.5",
        ("algorithm=sfpo", "algorithm.sfpo.inner_steps=7", "algorithm.sfpo.alpha=0.5"),
        3,
        "grpo_x8",
        "SFPO K=7, alpha=0.5",
    ),
    Arm("grpo_x8", ("algorithm=grpo", "actor.ppo_epochs=8"), 3, description="GRPO, 8 passes per batch"),
)
ARMS_BY_NAME = {arm.name: arm for arm in ARMS}
# Log-spaced over 10x, ending at the embedded default's 1e-4 (results/compare/PROTOCOL.md).
LEARNING_RATES = (1e-5, 3e-5, 1e-4)
BASELINE = "grpo"


@dataclass(frozen=True)
class Run:
    arm: Arm
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.name}_lr{self.lr:g}_seed{self.seed}"

    def overrides(self) -> list[str]:
        return [
            *self.arm.overrides,
            f"actor.lr={self.lr:g}",
            f"trainer.seed={self.seed}",
            f"data.seed={self.seed}",
        ]


def plan(arms=ARMS, learning_rates=LEARNING_RATES, max_seeds: int | None = None) -> list[Run]:
    """Every run of the study, ordered so that an interrupted study is still balanced: seed by seed, each
    seed's runs over all arms and learning rates before the next seed starts (the largest lr, the embedded
    default's, first)."""
    most = max(arm.seeds for arm in arms)
    if max_seeds is not None:
        most = min(most, max_seeds)
    return [
        Run(arm, lr, seed)
        for seed in range(most)
        for lr in sorted(learning_rates, reverse=True)
        for arm in arms
        if seed < arm.seeds
    ]
