"""Pure-torch algorithm core: advantages, policy loss, KL, log-probs/entropy, SFPO. No Ray, no I/O."""

from sfpo_rl.algorithms.advantages import advantage_estimators, compute_advantage, register_advantage
from sfpo_rl.algorithms.kl import KL_ESTIMATORS, kl_penalty
from sfpo_rl.algorithms.logprob import entropy_from_logits, log_probs_from_logits
from sfpo_rl.algorithms.policy_loss import (
    LOSS_AGG_MODES,
    LossInputs,
    agg_loss,
    get_policy_loss,
    gspo_loss,
    policy_losses,
    ppo_clip_loss,
    register_policy_loss,
)
from sfpo_rl.algorithms.sfpo import (
    SFPOConfig,
    SFPOController,
    StepPlan,
    displacement_norm,
    reposition_,
    restore_,
    snapshot_,
)

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "LossInputs",
    "SFPOConfig",
    "SFPOController",
    "StepPlan",
    "advantage_estimators",
    "agg_loss",
    "compute_advantage",
    "displacement_norm",
    "entropy_from_logits",
    "get_policy_loss",
    "gspo_loss",
    "kl_penalty",
    "log_probs_from_logits",
    "policy_losses",
    "ppo_clip_loss",
    "register_advantage",
    "register_policy_loss",
    "reposition_",
    "restore_",
    "snapshot_",
]
