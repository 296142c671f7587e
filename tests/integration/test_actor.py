"""The FSDP2 actor (and the inference-only reference policy) on 2 CPU ranks (gloo) against plain single-process
references.

One spawned 2-rank job (module fixture) runs every distributed computation and saves the results; the tests
compare them with a plain transformers model + AdamW + full-mini-batch loss computed in the test process, and
the micro-batching paths (token budget, packed forwards, one gradient reduction per mini-batch) with the
present path (fixed-count micro-batches, a reduction after each).

Each update test compares every optimizer step's gradient and the final parameters (actor_helpers.py says how
the bounds are derived). Broken by hand once each in FSDPActor._backward_mini_batch, the update is caught by
every update-equality test here and in tests/faults/test_nonfinite_actor.py: skipping micro-batch 0's backward
(12 tests fail), counting one response token twice in the loss (12 fail), and a backward without the
world-size scaling (11 fail).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from actor_helpers import (
    ADAM_EPS,
    actor_args,
    assert_update_matches,
    compare_updates,
    flat_params,
    global_mini_batches,
    make_batch,
    perturbed,
    plain_gradients,
    plain_log_probs,
    plain_model,
    plain_optimizer,
    plain_update,
    record_steps,
    run_ranks,
)
from bound_audit import below
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard import _fsdp_param_group as fsdp_param_group

from sfpo_rl.bench.memory import peak_rss_above_start
from sfpo_rl.bench.ranks import EAGER_FREE_MALLOC_ENV
from sfpo_rl.tiny.model import make_random_tiny_model
from sfpo_rl.workers.actor import _SUM_KEYS, ActorConfig, FSDPActor, FSDPPolicy
from sfpo_rl.workers.update_result import FastTrajectory

pytestmark = pytest.mark.slow

WORLD = 2
# 12 rows: 6 per rank = 2 local mini-batches of 3 rows = micro-batches of 2 + 1 rows; 2 epochs -> 4 steps.
CONFIG = dict(
    lr=1e-3,
    weight_decay=0.01,
    betas=(0.9, 0.99),
    eps=ADAM_EPS,  # Adam's sensitivity to float32 rounding is then bounded (actor_helpers explains)
    grad_clip=1.0,
    lr_schedule="cosine",
    warmup_steps=2,  # the first step runs at lr * 1/2
    total_steps=10,
    min_lr_ratio=0.1,
    ppo_mini_batch_size=6,
    micro_batch_size_per_gpu=2,
    log_prob_micro_batch_size=4,
    ppo_epochs=2,
    clip_ratio_low=0.2,
    clip_ratio_high=0.28,
    entropy_coeff=0.01,
)
FIRST_STEP_LR = CONFIG["lr"] * 0.5
# The defaults: micro-batches by token budget, rows grouped by length. 28 tokens split rank 1's first local
# mini-batch (prompts 2, 6, 4, responses 6, 7, 8 tokens) into rows [2, 1] (2 x 14 columns) and [0]; rank 0's
# (prompts 2, 3, 4, responses 3, 5, 2) would fit one micro-batch (3 x 9 columns), and is split to match rank
# 1's count: [1, 0] and [2].
TOKEN_BUDGET = {
    **{k: v for k, v in CONFIG.items() if k not in ("micro_batch_size_per_gpu", "log_prob_micro_batch_size")},
    "max_tokens_per_micro_batch": 28,
}
PACKED = {**TOKEN_BUDGET, "forward_layout": "packed"}
# The present path before token budgets and no-sync: fixed-count micro-batches, a gradient reduction after each.
PRESENT = {**CONFIG, "sync_grads_every_micro_batch": True}
GRADIENT_PATHS = {"present": PRESENT, "no_sync": CONFIG, "token_budget": TOKEN_BUDGET, "packed": PACKED}
# Activation checkpointing, per-sequence loss aggregation and the KL loss: the same reference must hold.
CONFIG_AC_SEQ_KL = {
    **CONFIG,
    "activation_checkpointing": True,
    "loss_agg_mode": "seq-mean-token-mean",
    "use_kl_loss": True,
    "kl_loss_coef": 0.1,
    "kl_loss_type": "low_var_kl",
}
CONSTANT_LR = {**CONFIG, "lr_schedule": "constant", "warmup_steps": None}
# GSPO from the policy-loss registry: one ratio per sequence, clipped to a range some sequences leave.
CONFIG_GSPO = {
    **CONFIG,
    "policy_loss": "gspo",
    "loss_agg_mode": "seq-mean-token-mean",
    "clip_ratio_low": 0.1,
    "clip_ratio_high": 0.1,
}
K, ALPHA = 2, 0.6


def _local(batch, rank):
    return batch.split(WORLD)[rank]


def _memory_job(rank: int, model_dir: str, batch) -> dict:
    """Peak memory of update and of sfpo_update on the same data, after a warm-up of both (Adam state exists,
    code paths are paged in). The minimum of two runs of each damps heap noise."""
    local = _local(batch, rank)
    actor = FSDPActor(model_dir, *actor_args(CONSTANT_LR))
    actor.update(local)
    actor.sfpo_update(local, K, ALPHA)
    peaks_update, peaks_sfpo = [], []
    for _ in range(2):
        peaks_update.append(peak_rss_above_start(lambda: actor.update(local)))
        peaks_sfpo.append(peak_rss_above_start(lambda: actor.sfpo_update(local, K, ALPHA)))
    shard_bytes = sum(p.to_local().numel() * p.to_local().element_size() for p in actor.params)
    full_bytes = sum(p.numel() * p.element_size() for p in actor.params)
    return {
        "shard_bytes": shard_bytes,
        "full_bytes": full_bytes,
        "peak_update": min(peaks_update),
        "peak_sfpo": min(peaks_sfpo),
    }


def _log_probs(actor: FSDPPolicy, batch, rank: int, name: str) -> dict:
    """This rank's log-probs of an even split, an uneven one (9 + 3 rows) and 12 + 0 rows: a rank with fewer
    micro-batches joins the extra forwards."""
    return {
        f"{name}/even": actor.compute_log_prob(_local(batch, rank)),
        f"{name}/uneven": actor.compute_log_prob(batch[0:9] if rank == 0 else batch[9:12]),
        f"{name}/empty": actor.compute_log_prob(batch if rank == 0 else batch[12:]),
    }


def _mini_batch_gradients(model_dir: str, config: dict, local) -> dict:
    """The full gradient of global mini-batch 0 (reduced over ranks), each rank's micro-batches (rows), and how
    many gradient reductions per FSDP module (decoder layer or root) the backward ran."""
    actor = FSDPActor(model_dir, *actor_args(config))
    data = actor._training_data(local)
    mini = data[0 : config["ppo_mini_batch_size"] // WORLD]
    sums = torch.zeros(len(_SUM_KEYS), dtype=torch.float64)
    ratio_max = torch.full((1,), -math.inf, dtype=torch.float64)
    actor.model.train()
    reductions = []
    reduce = fsdp_param_group.foreach_reduce  # FSDP2's reduce-scatter of one module's gradients
    fsdp_param_group.foreach_reduce = lambda *a, **k: reductions.append(1) or reduce(*a, **k)
    try:
        actor._backward_mini_batch(mini, actor._temperature(local), sums, ratio_max)
    finally:
        fsdp_param_group.foreach_reduce = reduce
    grads = {name: p.grad.full_tensor() for name, p in actor.model.named_parameters()}
    rows = [g.tolist() for g in actor._micro_batches(mini, config.get("micro_batch_size_per_gpu"), True)]
    per_rank = [None] * WORLD
    dist.all_gather_object(per_rank, rows)
    modules = sum(isinstance(m, FSDPModule) for m in actor.model.modules())
    return {"grads": grads, "micro_batch_rows": per_rank, "reductions_per_module": len(reductions) / modules}


def _recording_actor(model_dir: str, config: dict) -> tuple[FSDPActor, list[dict]]:
    """An actor whose every optimizer step records its learning rate and full gradients (actor_helpers)."""
    actor = FSDPActor(model_dir, *actor_args(config))
    return actor, record_steps(actor.optimizer, actor.model.named_parameters(), lambda g: g.full_tensor())


def _job(rank: int, model_dir: str, batch, memory_model_dir: str, memory_batch, out_dir: str) -> None:
    local = _local(batch, rank)
    results: dict = {}

    actor, results["update_steps"] = _recording_actor(model_dir, CONFIG)
    log_probs = _log_probs(actor, batch, rank, "fixed")
    results["update"] = actor.update(local)
    results["update_state"] = actor.state_dict_for_rollout()
    t0 = time.perf_counter()
    actor.update(local)
    results["time_update_s"] = time.perf_counter() - t0
    del actor
    results["update_steps"] = results["update_steps"][
        : len(results["update_steps"]) // 2
    ]  # the first update's

    results["gradients"] = {
        name: _mini_batch_gradients(model_dir, config, local) for name, config in GRADIENT_PATHS.items()
    }
    for name, config in (
        ("token_budget", TOKEN_BUDGET),
        ("packed", PACKED),
        ("token_budget_again", TOKEN_BUDGET),
    ):
        actor, results[f"{name}_steps"] = _recording_actor(model_dir, config)
        if name != "token_budget_again":
            log_probs.update(_log_probs(actor, batch, rank, name))
        results[name] = actor.update(local)
        results[f"{name}_state"] = actor.state_dict_for_rollout()
        del actor

    actor, results["sfpo_steps"] = _recording_actor(model_dir, TOKEN_BUDGET)
    t0 = time.perf_counter()
    results["sfpo"] = actor.sfpo_update(local, K, ALPHA)
    results["time_sfpo_s"] = time.perf_counter() - t0
    results["sfpo_state"] = actor.state_dict_for_rollout()
    del actor

    actor, results["ac_steps"] = _recording_actor(model_dir, CONFIG_AC_SEQ_KL)
    results["ac"] = actor.update(local)
    results["ac_state"] = actor.state_dict_for_rollout()
    del actor

    # alpha = 1 keeps the whole fast trajectory: K + 1 ordinary updates (constant LR, so the schedule is moot).
    actor = FSDPActor(model_dir, *actor_args(CONSTANT_LR))
    actor.sfpo_update(local, K, 1.0)
    results["alpha1_state"] = actor.state_dict_for_rollout()
    del actor
    actor = FSDPActor(model_dir, *actor_args(CONSTANT_LR))
    for _ in range(K + 1):
        actor.update(local)
    results["k_plus_1_state"] = actor.state_dict_for_rollout()
    del actor

    # A NaN advantage in rank 0's first row poisons global mini-batch 0 of each epoch: those steps are skipped.
    actor, results["nan_steps"] = _recording_actor(model_dir, CONFIG)
    poisoned = _local(batch, rank)
    if rank == 0:
        advantages = poisoned["advantages"].clone()
        advantages[0] = float("nan")
        poisoned["advantages"] = advantages
    results["nan"] = actor.update(poisoned)
    results["nan_state"] = actor.state_dict_for_rollout()
    del actor

    actor, results["gspo_steps"] = _recording_actor(model_dir, CONFIG_GSPO)
    results["gspo"] = actor.update(local)
    results["gspo_state"] = actor.state_dict_for_rollout()
    del actor

    reference = FSDPPolicy(model_dir, actor_args(CONFIG)[0])  # inference only: no gradients, no optimizer
    log_probs["reference"] = reference.compute_log_prob(local)
    frozen = not any(p.requires_grad for p in reference.model.parameters())
    results["reference_frozen"] = frozen and not hasattr(reference, "optimizer")
    del reference

    memory = _memory_job(rank, memory_model_dir, memory_batch)
    gathered = [None] * WORLD
    dist.all_gather_object(gathered, {"log_prob": log_probs, "memory": memory})
    if rank == 0:
        results["per_rank"] = gathered
        torch.save(results, Path(out_dir) / "results.pt")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    model = plain_model(tiny_model_dir)
    batch = make_batch(model.config.vocab_size, model.config.pad_token_id, seed=0)
    with torch.no_grad():
        log_probs, _ = plain_log_probs(model, batch)
    mask = batch["response_mask"]
    batch["old_log_probs"] = perturbed(log_probs, mask, seed=1)
    batch["ref_log_probs"] = perturbed(log_probs, mask, seed=2, scale=0.1)
    # A larger model for the memory measurement, so its shard (~6 MiB) dwarfs the heap's page-level noise.
    memory_dir = make_random_tiny_model(
        tmp_path_factory.mktemp("memory_model"), hidden_size=256, num_layers=4
    )
    memory_config = plain_model(memory_dir).config
    memory_batch = make_batch(memory_config.vocab_size, memory_config.pad_token_id, seed=3)
    memory_batch["old_log_probs"] = perturbed(
        torch.full((12, 8), -5.0), memory_batch["response_mask"], seed=4
    )
    out_dir = tmp_path_factory.mktemp("actor_results")
    start = time.perf_counter()
    args = (str(tiny_model_dir), batch, str(memory_dir), memory_batch, str(out_dir))
    run_ranks(_job, *args, world_size=WORLD, env=EAGER_FREE_MALLOC_ENV)
    print(f"\n2-rank actor job: {time.perf_counter() - start:.1f} s")
    return batch, torch.load(out_dir / "results.pt", weights_only=False)


def _recording_reference(model_dir, cfg):
    """The plain model and AdamW at the first step's lr, recording every step as the actor's optimizer does."""
    model = plain_model(model_dir)
    optimizer = plain_optimizer(model, cfg, FIRST_STEP_LR)
    return model, optimizer, record_steps(optimizer, model.named_parameters())


LOG_PROB_SPLITS = [
    f"{path}/{split}" for path in ("fixed", "token_budget", "packed") for split in ("even", "uneven", "empty")
]


@pytest.mark.parametrize("split", [*LOG_PROB_SPLITS, "reference"])
def test_compute_log_prob_matches_single_process_transformers(setup, tiny_model_dir, split):
    batch, results = setup
    model = plain_model(tiny_model_dir)
    with torch.no_grad():
        ref_lp, ref_ent = plain_log_probs(model, batch)
    out = [r["log_prob"][split] for r in results["per_rank"]]
    assert sum(len(o) for o in out) == len(batch)
    log_probs = torch.cat([o["old_log_probs"] for o in out])
    entropy = torch.cat([o["entropy"] for o in out])
    mask = batch["response_mask"].bool()
    lp_err = (log_probs - ref_lp)[mask].abs().max().item()
    ent_err = (entropy - ref_ent)[mask].abs().max().item()
    print(f"\ncompute_log_prob ({split} split) max |diff|: log-prob {lp_err:.2e}, entropy {ent_err:.2e}")
    assert below(lp_err, 1e-5) and below(ent_err, 1e-5)
    assert (log_probs[~mask] == 0).sum() > 0  # the trimmed padding came back as zeros


def test_update_matches_single_process_reference(setup, tiny_model_dir):
    batch, results = setup
    model, optimizer, steps = _recording_reference(tiny_model_dir, CONFIG)
    before = flat_params(model).clone()
    ref = plain_update(model, optimizer, batch, CONFIG)
    moved = (flat_params(model) - before).abs().max().item()
    comparison = compare_updates(results["update_steps"], results["update_state"], steps, model, CONFIG)
    update = results["update"]
    metrics = update.metrics
    print(f"\nupdate: params moved up to {moved:.2e}; metrics {metrics}")
    assert moved > 1e-3  # the comparison is not trivially passed by parameters that did not change
    assert comparison["bound"] < moved / 100  # the bound is far tighter than the update it checks
    assert_update_matches("update", comparison)
    assert metrics["actor/lr"] == pytest.approx(FIRST_STEP_LR)
    assert metrics["actor/pg_loss"] == pytest.approx(ref["pg_loss"], abs=1e-6)
    assert update.entropy == metrics["actor/entropy"] == pytest.approx(ref["entropy"], abs=1e-6)
    assert metrics["actor/n_optimizer_steps"] == 4 and update.skipped_steps == 0 and update.sfpo is None
    assert 0 < metrics["actor/clipfrac"] < 1 and metrics["actor/ratio_max"] > 1 + CONFIG["clip_ratio_high"]


@pytest.mark.parametrize("path", ["no_sync", "token_budget", "packed"])
def test_mini_batch_gradient_equals_present_path_and_single_process_reference(setup, tiny_model_dir, path):
    batch, results = setup
    mini = global_mini_batches(batch, WORLD, CONFIG["ppo_mini_batch_size"])[0]
    reference = plain_gradients(plain_model(tiny_model_dir), mini, CONFIG)
    scale = max(g.abs().max().item() for g in reference.values())
    got = results["gradients"][path]
    present = results["gradients"]["present"]
    vs_reference = max((got["grads"][k] - reference[k]).abs().max().item() for k in reference) / scale
    vs_present = max((got["grads"][k] - present["grads"][k]).abs().max().item() for k in reference) / scale
    present_vs_reference = (
        max((present["grads"][k] - reference[k]).abs().max().item() for k in reference) / scale
    )
    print(
        f"\n{path}: micro-batch rows {got['micro_batch_rows']} (present {present['micro_batch_rows']}); "
        f"max |grad diff| / max |grad|: vs present path {vs_present:.2e}, vs single process {vs_reference:.2e} "
        f"(present vs single process {present_vs_reference:.2e})"
    )
    assert below(vs_reference, 1e-5) and below(vs_present, 1e-5) and below(present_vs_reference, 1e-5)
    # Two micro-batches: the present path reduces gradients after each, the others once per mini-batch.
    assert present["reductions_per_module"] == 2 and got["reductions_per_module"] == 1
    assert present["micro_batch_rows"] == [[[0, 1], [2]]] * WORLD
    if path != "no_sync":  # rows grouped by length, not the fixed-count split
        assert got["micro_batch_rows"] == [[[1, 0], [2]], [[2, 1], [0]]]


@pytest.mark.parametrize("path", ["token_budget", "packed"])
def test_token_budget_update_matches_single_process_reference(setup, tiny_model_dir, path):
    batch, results = setup
    model, optimizer, steps = _recording_reference(tiny_model_dir, CONFIG)
    ref = plain_update(model, optimizer, batch, CONFIG)
    metrics = results[path].metrics
    assert_update_matches(
        f"{path} update",
        compare_updates(results[f"{path}_steps"], results[f"{path}_state"], steps, model, CONFIG),
    )
    assert metrics["actor/pg_loss"] == pytest.approx(ref["pg_loss"], abs=1e-6)
    assert results[path].entropy == pytest.approx(ref["entropy"], abs=1e-6)
    assert metrics["actor/n_optimizer_steps"] == 4


def test_token_budget_update_is_deterministic(setup):
    _, results = setup
    a, b = results["token_budget_state"], results["token_budget_again_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert results["token_budget"] == results["token_budget_again"]


def test_update_with_activation_checkpointing_seq_mean_and_kl_matches_reference(setup, tiny_model_dir):
    batch, results = setup
    model, optimizer, steps = _recording_reference(tiny_model_dir, CONFIG_AC_SEQ_KL)
    ref = plain_update(model, optimizer, batch, CONFIG_AC_SEQ_KL)
    comparison = compare_updates(results["ac_steps"], results["ac_state"], steps, model, CONFIG_AC_SEQ_KL)
    assert_update_matches("update (activation checkpointing, seq-mean-token-mean, KL loss)", comparison)
    assert results["ac"].metrics["actor/pg_loss"] == pytest.approx(ref["pg_loss"], abs=1e-6)
    assert results["ac"].metrics["actor/kl_loss"] > 0


def test_gspo_update_matches_single_process_reference(setup, tiny_model_dir):
    batch, results = setup
    model, optimizer, steps = _recording_reference(tiny_model_dir, CONFIG_GSPO)
    ref = plain_update(model, optimizer, batch, CONFIG_GSPO)
    metrics = results["gspo"].metrics
    print(f"\nGSPO clipfrac {metrics['actor/clipfrac']:.2f}")
    assert_update_matches(
        "GSPO update",
        compare_updates(results["gspo_steps"], results["gspo_state"], steps, model, CONFIG_GSPO),
    )
    assert metrics["actor/pg_loss"] == pytest.approx(ref["pg_loss"], abs=1e-6)
    assert 0 < metrics["actor/clipfrac"] < 1  # both clipped and live sequences
    # Not PPO-clip under another name: PPO-clip's update of the same data and options gives other weights.
    gspo, ppo = results["gspo_state"], results["update_state"]
    assert max((gspo[k] - ppo[k]).abs().max().item() for k in ppo) > 1e-4


def test_reference_policy_is_inference_only(setup):
    _, results = setup
    assert results["reference_frozen"]


def test_non_finite_gradient_skips_only_that_step(setup, tiny_model_dir):
    batch, results = setup
    metrics = results["nan"].metrics
    assert results["nan"].skipped_steps == 2 and metrics["actor/n_optimizer_steps"] == 2
    assert math.isfinite(metrics["actor/grad_norm"])  # the mean over the steps that ran
    # Equal to an update that never saw mini-batch 0: no NaN reached the weights or the Adam moments.
    model, optimizer, steps = _recording_reference(tiny_model_dir, CONFIG)
    plain_update(
        model, optimizer, global_mini_batches(batch, WORLD, CONFIG["ppo_mini_batch_size"])[1], CONFIG
    )
    comparison = compare_updates(results["nan_steps"], results["nan_state"], steps, model, CONFIG)
    assert_update_matches("update with a skipped non-finite step", comparison)


def test_sfpo_update_matches_single_process_reference(setup, tiny_model_dir):
    batch, results = setup
    model, optimizer, steps = _recording_reference(tiny_model_dir, TOKEN_BUDGET)
    slow = [p.detach().clone() for p in model.parameters()]
    fast_losses = [plain_update(model, optimizer, batch, CONFIG)["pg_loss"] for _ in range(K)]
    displacement = math.sqrt(sum(((p - s) ** 2).sum().item() for p, s in zip(model.parameters(), slow)))
    with torch.no_grad():
        for p, s in zip(model.parameters(), slow):
            p.copy_(s + ALPHA * (p - s))
    reposition = math.sqrt(sum(((p - s) ** 2).sum().item() for p, s in zip(model.parameters(), slow)))
    slow_pass = plain_update(model, optimizer, batch, CONFIG)

    metrics = results["sfpo"].metrics
    print(f"\nsfpo_update metrics {metrics}")
    # The reposition is one more rounding of every parameter on each side.
    comparison = compare_updates(
        results["sfpo_steps"], results["sfpo_state"], steps, model, CONFIG, extra_ops=1
    )
    assert_update_matches(f"sfpo_update (K={K}, alpha={ALPHA})", comparison)
    assert metrics["sfpo/fast_displacement_norm"] == pytest.approx(displacement, rel=1e-5)
    assert metrics["sfpo/reposition_norm"] == pytest.approx(reposition, rel=1e-5)
    assert reposition == pytest.approx(ALPHA * displacement, rel=1e-5)
    for k in range(K):
        assert metrics[f"sfpo/fast_loss_k{k}"] == pytest.approx(fast_losses[k], abs=1e-6)
    assert metrics["sfpo/slow_loss"] == pytest.approx(slow_pass["pg_loss"], abs=1e-6)
    assert metrics["actor/pg_loss"] == metrics["sfpo/slow_loss"]
    assert results["sfpo"].entropy == pytest.approx(slow_pass["entropy"], abs=1e-6)
    assert results["sfpo"].sfpo == FastTrajectory(skipped_steps=0, restored=False)
    assert metrics["actor/lr"] == pytest.approx(FIRST_STEP_LR)  # one schedule step for the whole SFPO step


def test_sfpo_alpha_one_equals_k_plus_one_updates(setup):
    _, results = setup
    a, b = results["alpha1_state"], results["k_plus_1_state"]
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\nsfpo alpha=1 vs {K + 1} updates: max |diff| {diff:.2e}")
    assert diff == 0.0


def test_sfpo_peak_memory_over_update_is_at_most_one_local_shard(setup):
    _, results = setup
    for rank, r in enumerate(results["per_rank"]):
        mem = r["memory"]
        extra = mem["peak_sfpo"] - mem["peak_update"]
        shards = extra / mem["shard_bytes"]
        print(
            f"\nrank {rank}: local shard {mem['shard_bytes'] / 2**20:.2f} MiB (full model "
            f"{mem['full_bytes'] / 2**20:.2f} MiB); peak RSS above start: update {mem['peak_update'] / 2**20:.2f} "
            f"MiB, sfpo_update {mem['peak_sfpo'] / 2**20:.2f} MiB; extra {extra / 2**20:.2f} MiB = {shards:.2f} shards"
        )
        # The slow copy of the shard (the lower bound shows the measurement sees it) plus a few hundred KiB of
        # page rounding and small objects; a second copy (fast weights, any full-parameter clone) adds >= 1 shard.
        assert 0.9 < shards < 1.15
    print(f"time: update {results['time_update_s']:.3f} s, sfpo_update(K={K}) {results['time_sfpo_s']:.3f} s")


def test_config_errors_name_the_option():
    with pytest.raises(ValueError, match=r"actor\.loss\.loss_agg_mode"):
        ActorConfig.from_any({"loss": {"loss_agg_mode": "mean"}})
    with pytest.raises(ValueError, match=r"actor\.total_steps.*trainer\.total_steps"):
        ActorConfig.from_any({"total_steps": 10})
    with pytest.raises(ValueError, match=r"actor\.bogus"):
        ActorConfig.from_any({"bogus": 1})
    with pytest.raises(ValueError, match=r"actor\.loss\.policy_loss must be one of gspo, ppo_clip"):
        ActorConfig.from_any({"loss": {"policy_loss": "ppo"}})
    with pytest.raises(
        ValueError, match=r"actor\.loss\.clip_ratio_c must be null with actor\.loss\.policy_loss=gspo"
    ):
        ActorConfig.from_any({"loss": {"policy_loss": "gspo", "clip_ratio_c": 3.0}})
