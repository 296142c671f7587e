"""The reward-robustness benchmark's generated responses: labelled right / wrong as the verifier judges them
(so its acceptance rates mean something), 1% pathological, reproducible from the seed."""

from __future__ import annotations

import math
import random

from sfpo_rl.bench.reward_robustness import KINDS, PATHOLOGICAL, make_batch
from sfpo_rl.rewards import math_score


def test_every_generated_form_is_judged_as_labelled():
    rng = random.Random(3)
    for i in range(3 * len(KINDS)):
        problem = KINDS[i % len(KINDS)](rng)
        for answer in problem.right:
            assert math_score(f"\\boxed{{{answer}}}", problem.gold)["acc"], (answer, problem.gold)
        for answer in problem.wrong:
            assert not math_score(f"\\boxed{{{answer}}}", problem.gold)["acc"], (answer, problem.gold)


def test_batches_share_ground_truths_per_prompt_and_mix_in_one_percent():
    responses, golds, kinds = make_batch(prompts=30, n=8, seed=1, pathological_fraction=0.01)
    assert len(responses) == len(golds) == len(kinds) == 240
    assert all(len(set(golds[p * 8 : (p + 1) * 8])) == 1 for p in range(30))
    bad = [r for r, k in zip(responses, kinds) if k == "pathological"]
    assert len(bad) == math.ceil(240 * 0.01)
    assert all(any(f"\\boxed{{{a}}}" in r for a in PATHOLOGICAL.values()) for r in bad)
    assert make_batch(prompts=30, n=8, seed=1, pathological_fraction=0.01) == (responses, golds, kinds)
    assert "pathological" not in make_batch(prompts=30, n=8, seed=1, pathological_fraction=0.0)[2]
    scored = [math_score(r, g) for r, g, k in zip(responses, golds, kinds) if k in ("no box", "refusal")]
    assert scored and all(s == {"score": 0.0, "acc": False} for s in scored)
