"""Rule-based rewards: verifiers by data source, custom functions, time-limited batch scoring."""

from sfpo_rl.rewards.answer import is_no_answer, last_boxed, last_number
from sfpo_rl.rewards.registry import (
    VerifierError,
    get_verifier,
    ground_truth_problem,
    load_custom_verifier,
    register_verifier,
    registered_verifiers,
    verifier_name,
)
from sfpo_rl.rewards.scoring import (
    RewardConfig,
    RewardScorer,
    VerifierResolver,
    score_responses,
    token_level_scores,
)
from sfpo_rl.rewards.verifier_pool import Outcome, VerifierPool, VerifierTimeout, score_with_timeout
from sfpo_rl.rewards.verifiers import arith_score, gsm8k_score, math_score

__all__ = [
    "Outcome",
    "RewardConfig",
    "RewardScorer",
    "VerifierError",
    "VerifierPool",
    "VerifierResolver",
    "VerifierTimeout",
    "arith_score",
    "get_verifier",
    "gsm8k_score",
    "ground_truth_problem",
    "is_no_answer",
    "last_boxed",
    "last_number",
    "load_custom_verifier",
    "math_score",
    "register_verifier",
    "registered_verifiers",
    "score_responses",
    "score_with_timeout",
    "token_level_scores",
    "verifier_name",
]
