"""Non-finite losses injected (faults.nonfinite_loss) into each stage of the FSDP2 actor on 2 CPU ranks:
a poisoned step is skipped and no NaN reaches the weights; a poisoned SFPO fast pass restores the slow weights.
Results are compared with a plain single-process transformers + AdamW reference (tests/integration's)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the shared actor test helpers
from actor_helpers import (  # noqa: E402
    ADAM_EPS,
    assert_update_matches,
    compare_updates,
    make_batch,
    max_param_diff,
    perturbed,
    plain_log_probs,
    plain_model,
    plain_optimizer,
    plain_update,
    record_steps,
    run_ranks,
    sectioned,
)

from sfpo_rl.workers.actor import FSDPActor  # noqa: E402
from sfpo_rl.workers.faults import inject_nonfinite_loss  # noqa: E402
from sfpo_rl.workers.update_result import FastTrajectory  # noqa: E402

pytestmark = pytest.mark.slow

WORLD, K, ALPHA = 2, 2, 0.6
# 12 rows: 2 global mini-batches of 6 per pass, a constant LR (the reference needs no schedule).
CONFIG = dict(
    lr=1e-3,
    weight_decay=0.01,
    betas=(0.9, 0.99),
    eps=ADAM_EPS,  # Adam's sensitivity to float32 rounding is then bounded (tests/integration/actor_helpers.py)
    grad_clip=1.0,
    ppo_mini_batch_size=6,
    micro_batch_size_per_gpu=2,
    ppo_epochs=1,
    clip_ratio_low=0.2,
    clip_ratio_high=0.28,
    entropy_coeff=0.01,
)
POISONED = {"update": "1:update", "fast0": "1:fast0", "fast1": "1:fast1", "slow": "1:slow"}


def _job(rank: int, model_dir: str, batch, out: str) -> None:
    local = batch.split(WORLD)[rank]
    results = {}
    for name, point in [("clean", None), *POISONED.items()]:
        actor = FSDPActor(model_dir, sectioned(CONFIG))
        if point:
            inject_nonfinite_loss(actor, [point])
        steps = record_steps(actor.optimizer, actor.model.named_parameters(), lambda g: g.full_tensor())
        plain = name in ("clean", "update")
        result = actor.update(local) if plain else actor.sfpo_update(local, K, ALPHA)
        results[name] = (result, actor.state_dict_for_rollout(), steps)
        del actor
    if rank == 0:
        torch.save(results, out)


@pytest.fixture(scope="module")
def results(tiny_model_dir, tmp_path_factory, faults):
    model = plain_model(tiny_model_dir)
    batch = make_batch(model.config.vocab_size, model.config.pad_token_id, seed=0)
    with torch.no_grad():
        log_probs, _ = plain_log_probs(model, batch)
    batch["old_log_probs"] = perturbed(log_probs, batch["response_mask"], seed=1)
    out = tmp_path_factory.mktemp("nonfinite") / "results.pt"
    for name in POISONED:
        faults.inject(f"NaN loss in the actor's {name} pass")
    start = time.perf_counter()
    run_ranks(_job, str(tiny_model_dir), batch, str(out), world_size=WORLD)
    print(f"\n2-rank non-finite job: {time.perf_counter() - start:.1f} s")
    return batch, torch.load(out, weights_only=False)


def _reference(model_dir, batch, passes: list[str]):
    """A plain model after `passes`: "update" (one plain update), "snapshot", "restore", "reposition"; and its
    recorded optimizer steps."""
    model = plain_model(model_dir)
    optimizer = plain_optimizer(model, CONFIG, CONFIG["lr"])
    steps = record_steps(optimizer, model.named_parameters())
    slow = None
    for what in passes:
        if what == "update":
            plain_update(model, optimizer, batch, CONFIG)
        elif what == "snapshot":
            slow = [p.detach().clone() for p in model.parameters()]
        else:
            with torch.no_grad():
                for p, s in zip(model.parameters(), slow):
                    p.copy_(s if what == "restore" else s + ALPHA * (p - s))
    return model, steps


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state.values())


def test_poisoned_plain_update_leaves_the_weights_untouched(results, tiny_model_dir, faults):
    _, res = results
    with faults.survives("NaN loss in the actor's update pass"):
        result, state, _ = res["update"]
        assert result.skipped_steps == 2 and result.sfpo is None and result.nonfinite
        assert result.metrics["actor/skipped_steps"] == 2 and result.metrics["actor/n_optimizer_steps"] == 0
        assert max_param_diff(state, plain_model(tiny_model_dir)) == 0.0
        assert math.isnan(result.metrics["actor/grad_norm"])  # no step ran to average over
        assert not res["clean"][0].nonfinite


def test_poisoned_first_fast_pass_makes_the_step_a_plain_update(results, faults):
    _, res = results
    with faults.survives("NaN loss in the actor's fast0 pass"):
        result, state, _ = res["fast0"]
        metrics = result.metrics
        assert result.sfpo == FastTrajectory(skipped_steps=2, restored=True) and result.skipped_steps == 0
        assert result.nonfinite and result.all_skipped_steps == 2
        assert metrics["sfpo/fast_restored"] == 1 and metrics["sfpo/fast_skipped_steps"] == 2
        assert "sfpo/fast_loss_k1" not in metrics  # the fast trajectory stopped at the poisoned pass
        assert metrics["sfpo/fast_displacement_norm"] == 0 and metrics["sfpo/reposition_norm"] == 0
        # Nothing moved in the fast pass, so the slow pass is exactly the clean plain update.
        clean = res["clean"][1]
        assert all(torch.equal(state[k], clean[k]) for k in clean)


def test_poisoned_later_fast_pass_restores_the_slow_weights(results, tiny_model_dir, faults):
    batch, res = results
    with faults.survives("NaN loss in the actor's fast1 pass"):
        result, state, steps = res["fast1"]
        metrics = result.metrics
        assert result.sfpo == FastTrajectory(skipped_steps=2, restored=True)
        assert metrics["sfpo/fast_displacement_norm"] > 0 and metrics["sfpo/reposition_norm"] == 0
        assert result.skipped_steps == 0 and _finite(state)
        # Fast pass 0 moved the weights and Adam's moments; the weights go back, the moments carry on.
        reference, reference_steps = _reference(
            tiny_model_dir, batch, ["snapshot", "update", "restore", "update"]
        )
        comparison = compare_updates(steps, state, reference_steps, reference, CONFIG)
        assert_update_matches("fast pass 1 poisoned", comparison)


def test_poisoned_slow_pass_keeps_the_repositioned_weights(results, tiny_model_dir, faults):
    batch, res = results
    with faults.survives("NaN loss in the actor's slow pass"):
        result, state, steps = res["slow"]
        metrics = result.metrics
        assert result.sfpo == FastTrajectory(skipped_steps=0, restored=False) and result.skipped_steps == 2
        assert metrics["sfpo/reposition_norm"] == pytest.approx(
            ALPHA * metrics["sfpo/fast_displacement_norm"]
        )
        assert math.isfinite(result.entropy) and result.entropy == metrics["actor/entropy"] and _finite(state)
        reference, reference_steps = _reference(
            tiny_model_dir, batch, ["snapshot", *["update"] * K, "reposition"]
        )
        comparison = compare_updates(steps, state, reference_steps, reference, CONFIG, extra_ops=1)
        assert_update_matches("slow pass poisoned", comparison)
