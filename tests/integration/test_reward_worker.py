"""The reward worker: decoding + scoring in process, and through a real 2-worker Ray group (DP split) whose
per-sample columns must equal single-process scoring."""

from __future__ import annotations

import os
import signal

import pytest
import ray
import torch
from transformers import AutoTokenizer

from sfpo_rl.controller import RayWorkerGroup, ResourcePool, init_ray
from sfpo_rl.protocol import Batch
from sfpo_rl.workers.reward import BatchRewarder, RewardWorker, reward_metrics

R = 24  # response length
# (response text, ground truth, data source, expected score under the paper's shaping)
CASES = [
    ("12+5=17. \\boxed{17}", "17", "arith", 1.0),
    ("12+5=18. \\boxed{18}", "17", "arith", 0.1),
    ("12+5=17.", "17", "arith", 0.0),
    ("so \\boxed{1/2}", "0.5", "math", 1.0),
    ("so \\boxed{3}", "\\frac{1}{2}", "math", 0.1),
    ("#### 1,234", "1234", "gsm8k", 1.0),
    ("it is 7", "8", "gsm8k", 0.0),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def rollout_batch(tokenizer, cases=CASES) -> Batch:
    """Responses as the rollout lays them out: right-padded ids, eos after the text, mask over text + eos."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    responses = torch.full((len(cases), R), pad, dtype=torch.long)
    mask = torch.zeros((len(cases), R), dtype=torch.long)
    for row, (text, *_) in enumerate(cases):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        assert len(ids) <= R
        responses[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return Batch.from_dict(
        {
            "responses": responses,
            "response_mask": mask,
            "ground_truth": [c[1] for c in cases],
            "data_source": [c[2] for c in cases],
            "extra_info": [{"row": i} for i in range(len(cases))],
        }
    )


def test_batch_rewarder_scores_and_places_rewards(tiny_model_dir, tokenizer):
    batch = rollout_batch(tokenizer)
    rewarder = BatchRewarder(tiny_model_dir, {"timeout_mode": "signal"})
    out = rewarder.compute_score(batch)
    scores = out["token_level_scores"]
    assert scores.shape == (len(CASES), R) and scores.dtype == torch.float32
    last = batch["response_mask"].sum(-1) - 1  # the eos token: the last response token
    assert torch.equal(scores.sum(-1), torch.tensor([c[3] for c in CASES]))
    assert torch.equal(scores[torch.arange(len(CASES)), last], scores.sum(-1))
    assert out["acc"].tolist() == [float(c[3] == 1.0) for c in CASES]
    assert out["verifier_error"].sum() == 0 and out["verifier_timeout"].sum() == 0

    metrics = reward_metrics(batch.union(out))
    assert metrics["reward/acc"] == pytest.approx(3 / 7)
    assert metrics["reward/mean"] == pytest.approx(sum(c[3] for c in CASES) / 7)
    assert metrics["reward/response_length"] == pytest.approx(float(batch["response_mask"].sum()) / 7)

    with pytest.raises(KeyError, match="the batch lacks \\['ground_truth'\\]"):
        rewarder.compute_score(
            batch.select(keys=["responses", "response_mask"], non_tensor_keys=["data_source"])
        )


def test_failed_verifications_are_columns_not_crashes(tiny_model_dir, tokenizer, tmp_path):
    custom = tmp_path / "flaky.py"
    custom.write_text(
        "def score(solution_str, ground_truth, extra_info=None):\n"
        "    if 'boom' in solution_str:\n"
        "        raise ValueError('bad')\n"
        "    if 'hang' in solution_str:\n"
        "        while True:\n"
        "            pass\n"
        "    return 1.0\n"
    )
    cases = [("fine", "1", "x", 0), ("boom", "1", "x", 0), ("hang", "1", "x", 0), ("ok", "1", "x", 0)]
    rewarder = BatchRewarder(tiny_model_dir, {"custom_function": f"{custom}:score", "timeout_s": 0.5})
    try:
        out = rewarder.compute_score(rollout_batch(tokenizer, cases))
    finally:
        rewarder.close()
    assert out["token_level_scores"].sum(-1).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert out["verifier_error"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert out["verifier_timeout"].tolist() == [0.0, 0.0, 1.0, 0.0]
    metrics = reward_metrics(out)
    assert (metrics["reward/verifier_errors"], metrics["reward/verifier_timeouts"]) == (1.0, 1.0)


@pytest.mark.slow
def test_two_worker_group_matches_single_process(tiny_model_dir, tokenizer):
    cases = CASES * 3  # 21 rows: an uneven split, 11 and 10
    batch = rollout_batch(tokenizer, cases)
    local = BatchRewarder(tiny_model_dir, {"timeout_mode": "signal"}).compute_score(batch)

    started = not ray.is_initialized()
    init_ray()
    group = RayWorkerGroup(
        ResourcePool([2], name="reward_test"),
        RewardWorker,
        "reward",
        str(tiny_model_dir),
        {"num_processes": 1},
    )
    try:
        out = group.compute_score(batch)
        group.close()
    finally:
        group.shutdown()
        if started:  # later modules start Ray with their own options
            ray.shutdown()
    assert len(out) == len(cases)
    for key in ("token_level_scores", "acc", "verifier_error", "verifier_timeout"):
        assert torch.equal(out[key], local[key]), key


def test_a_reward_worker_keeps_scoring_after_its_verifier_process_is_killed(tiny_model_dir, tokenizer):
    """The reward worker's verifier child SIGKILLed between two batches (as an OOM kill would): the next
    batch scores normally (before: BrokenPipeError on every later batch, a non-restartable worker error)."""
    cases = [*CASES, ("so \\boxed{7 = 0}", "0", "math", 0.1), ("\\boxed{?}", "3", "math", 0.0)]
    batch = rollout_batch(tokenizer, cases)
    rewarder = BatchRewarder(tiny_model_dir, {"num_processes": 1})
    try:
        first = rewarder.compute_score(batch)
        child = rewarder.scorer._pool._children[0].proc
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        again = rewarder.compute_score(batch)
    finally:
        rewarder.close()
    assert torch.equal(again["token_level_scores"].sum(-1), torch.tensor([c[3] for c in cases]))
    assert torch.equal(again["token_level_scores"], first["token_level_scores"])
    assert again["verifier_error"].sum() == 0 and again["verifier_timeout"].sum() == 0
