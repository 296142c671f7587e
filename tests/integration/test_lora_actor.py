"""The LoRA actor on 2 CPU ranks (FSDP2 over gloo) against single-process PEFT references: adapter gradients,
an SFPO step, the slow copy's size, reference log-probs with the adapter off, and an adapter-only checkpoint.

One spawned 2-rank job (module fixture) runs every distributed computation; the tests compare its results with a
transformers + PEFT model in the test process (the same seeded adapter, plain AdamW, a full-mini-batch loss).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from actor_helpers import (
    actor_args,
    global_mini_batches,
    make_batch,
    perturbed,
    plain_log_probs,
    plain_loss,
    plain_model,
    plain_optimizer,
    plain_update,
    run_ranks,
)
from peft import set_peft_model_state_dict

from sfpo_rl.workers.actor import _SUM_KEYS, FSDPActor
from sfpo_rl.workers.fsdp_utils import local_shards
from sfpo_rl.workers.lora import LoraConfig, add_adapter, saved_name

pytestmark = pytest.mark.slow

WORLD = 2
LORA = {"rank": 4, "alpha": 8.0}
# As the full-model actor tests: 12 rows, 2 local mini-batches of 3 rows, 2 epochs; warmup halves step 1's LR.
CONFIG = dict(
    lr=1e-2,
    weight_decay=0.01,
    betas=(0.9, 0.99),
    eps=1e-8,
    grad_clip=1.0,
    lr_schedule="cosine",
    warmup_steps=2,
    total_steps=10,
    min_lr_ratio=0.1,
    ppo_mini_batch_size=6,
    micro_batch_size_per_gpu=2,
    log_prob_micro_batch_size=4,
    ppo_epochs=2,
    clip_ratio_low=0.2,
    clip_ratio_high=0.28,
    entropy_coeff=0.01,
    lora=LORA,
)
FIRST_STEP_LR = CONFIG["lr"] * 0.5
K, ALPHA = 2, 0.6


def _local(batch, rank):
    return batch.split(WORLD)[rank]


def _adapter_gradients(actor: FSDPActor, local) -> dict[str, torch.Tensor]:
    """The full gradient of global mini-batch 0 (reduced over ranks) by saved adapter name, and that no frozen
    weight got one."""
    data = actor._training_data(local)
    mini = data[0 : CONFIG["ppo_mini_batch_size"] // WORLD]
    sums = torch.zeros(len(_SUM_KEYS), dtype=torch.float64)
    ratio_max = torch.full((1,), -math.inf, dtype=torch.float64)
    actor.model.train()
    actor._backward_mini_batch(mini, actor._temperature(local), sums, ratio_max)
    assert all(p.grad is None for p in actor.model.parameters() if not p.requires_grad)
    grads = {
        saved_name(n): p.grad.full_tensor() for n, p in actor.model.named_parameters() if p.requires_grad
    }
    actor.optimizer.zero_grad(set_to_none=True)
    return grads


def _job(rank: int, model_dir: str, batch, out_dir: str) -> None:
    local = _local(batch, rank)
    results: dict = {}

    # SFPO step from the seeded adapter; then the gradients at the adapter it left.
    actor = FSDPActor(model_dir, *actor_args(CONFIG))
    trainable = local_shards(actor.params)
    everything = local_shards(list(actor.model.parameters()))
    results["local_adapter_bytes"] = sum(t.nbytes for t in trainable)
    results["local_model_bytes"] = sum(t.nbytes for t in everything)
    results["adapter_shapes"] = {
        saved_name(n): tuple(p.shape) for n, p in actor.model.named_parameters() if p.requires_grad
    }
    results["sfpo"] = actor.sfpo_update(local, K, ALPHA)
    results["optimizer_bytes_after"] = sum(
        v.to_local().nbytes if hasattr(v, "to_local") else v.nbytes
        for state in actor.optimizer.state.values()
        for v in state.values()
        if torch.is_tensor(v) and v.ndim > 0
    )
    results["sfpo_adapter"] = actor.adapter_state()
    results["sfpo_merged"] = actor.state_dict_for_rollout()
    results["log_probs"] = actor.compute_log_prob(local)
    results["ref_log_probs"] = actor.compute_ref_log_prob(local)
    results["after_ref_log_probs"] = actor.compute_log_prob(local)  # the adapter is back on

    # An adapter-only checkpoint, loaded into a fresh actor: the same log-probs and the same next update.
    ckpt = Path(out_dir) / "ckpt"
    actor.save_checkpoint(ckpt)
    results["grads"] = _adapter_gradients(actor, local)
    results["next"] = actor.update(local)
    results["next_adapter"] = actor.adapter_state()
    del actor
    fresh = FSDPActor(model_dir, *actor_args(CONFIG))
    fresh.load_checkpoint(ckpt)
    results["restored_log_probs"] = fresh.compute_log_prob(local)
    results["restored_grads"] = _adapter_gradients(fresh, local)
    results["restored_next"] = fresh.update(local)
    results["restored_next_adapter"] = fresh.adapter_state()
    del fresh

    gathered = [None] * WORLD
    dist.all_gather_object(
        gathered,
        {k: results[k] for k in ("local_adapter_bytes", "local_model_bytes", "log_probs", "ref_log_probs")}
        | {k: results[k] for k in ("after_ref_log_probs", "restored_log_probs")},
    )
    if rank == 0:
        results["per_rank"] = gathered
        torch.save(results, Path(out_dir) / "results.pt")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    model = plain_model(tiny_model_dir)
    batch = make_batch(model.config.vocab_size, model.config.pad_token_id, seed=0)
    with torch.no_grad():
        log_probs, _ = plain_log_probs(model, batch)
    batch["old_log_probs"] = perturbed(log_probs, batch["response_mask"], seed=1)
    out_dir = tmp_path_factory.mktemp("lora_actor")
    run_ranks(_job, str(tiny_model_dir), batch, str(out_dir), world_size=WORLD)
    return batch, torch.load(out_dir / "results.pt", weights_only=False), out_dir


def _peft_reference(model_dir, adapter: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """transformers + PEFT: the base model with the actor's seeded initial adapter, or with `adapter`."""
    model = add_adapter(plain_model(model_dir), LoraConfig(**LORA), seed=CONFIG.get("seed", 0))
    if adapter is not None:
        result = set_peft_model_state_dict(model, adapter)
        assert not result.unexpected_keys
    return model


def _adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {saved_name(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_adapter_gradients_equal_a_single_process_peft_reference(setup, tiny_model_dir):
    batch, results, _ = setup
    model = _peft_reference(tiny_model_dir, results["sfpo_adapter"])
    mini = global_mini_batches(batch, WORLD, CONFIG["ppo_mini_batch_size"])[0]
    plain_loss(model, mini, CONFIG)[0].backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    reference = {saved_name(n): p.grad for n, p in model.named_parameters() if p.requires_grad}
    got = results["grads"]
    scale = max(g.abs().max().item() for g in reference.values())
    diff = _max_diff(got, reference) / scale
    print(f"\nadapter gradients, 2-rank FSDP2 vs single-process PEFT: max |diff| / max |grad| {diff:.2e}")
    assert scale > 1e-4 and diff < 1e-5
    assert set(got) == set(results["adapter_shapes"])  # every adapter weight, and nothing else


def test_sfpo_with_lora_equals_the_single_process_reference_on_the_adapter(setup, tiny_model_dir):
    batch, results, _ = setup
    model = _peft_reference(tiny_model_dir)
    optimizer = plain_optimizer(model, CONFIG, FIRST_STEP_LR)
    adapter = [p for p in model.parameters() if p.requires_grad]
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    slow = [p.detach().clone() for p in adapter]
    for _ in range(K):
        plain_update(model, optimizer, batch, CONFIG)
    displacement = math.sqrt(sum(((p - s) ** 2).sum().item() for p, s in zip(adapter, slow)))
    with torch.no_grad():
        for p, s in zip(adapter, slow):
            p.copy_(s + ALPHA * (p - s))
    slow_pass = plain_update(model, optimizer, batch, CONFIG)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)

    metrics = results["sfpo"].metrics
    diff = _max_diff(results["sfpo_adapter"], _adapter(model))
    print(f"\nSFPO with LoRA (K={K}, alpha={ALPHA}): max |adapter - reference| {diff:.2e}")
    assert diff < 1e-5
    assert metrics["sfpo/fast_displacement_norm"] == pytest.approx(displacement, rel=1e-5)
    assert metrics["sfpo/slow_loss"] == pytest.approx(slow_pass["pg_loss"], abs=1e-6)
    # The base stays the model directory's: the merged weights are W + (alpha / r) B A of the reference.
    merged = model.merge_and_unload().state_dict()
    assert max((results["sfpo_merged"][k] - merged[k]).abs().max().item() for k in merged) < 1e-5


def test_the_slow_copy_holds_the_adapters_local_shards_only(setup):
    _, results, _ = setup
    per_rank = results["per_rank"]
    # The adapter's shard on each rank from the full shapes: FSDP2 splits dim 0 into world-size chunks.
    expected = [
        sum(
            4 * math.prod(torch.empty(shape).chunk(WORLD)[r].shape)
            for shape in results["adapter_shapes"].values()
        )
        for r in range(WORLD)
    ]
    assert [r["local_adapter_bytes"] for r in per_rank] == expected
    slow_copy = results["sfpo"].metrics["sfpo/slow_copy_bytes"]  # the largest rank's
    assert slow_copy == max(expected)
    ratio = slow_copy / max(r["local_model_bytes"] for r in per_rank)
    print(f"\nslow copy {slow_copy / 2**10:.1f} KiB per rank = {ratio:.3f} of the rank's model shard")
    assert ratio < 0.1
    # Adam's moments cover the adapter alone too (two moments of each local adapter shard).
    assert results["optimizer_bytes_after"] == 2 * results["local_adapter_bytes"]


def test_reference_log_probs_with_the_adapter_off_equal_the_base_model(setup, tiny_model_dir):
    batch, results, _ = setup
    with torch.no_grad():
        base, _ = plain_log_probs(plain_model(tiny_model_dir), batch)
        tuned, _ = plain_log_probs(_peft_reference(tiny_model_dir, results["sfpo_adapter"]), batch)
    mask = batch["response_mask"].bool()

    def gathered(key, column):
        return torch.cat([r[key][column] for r in results["per_rank"]])

    ref = gathered("ref_log_probs", "ref_log_probs")
    assert (ref - base)[mask].abs().max().item() < 1e-5
    for key in ("log_probs", "after_ref_log_probs"):  # the adapter is on before and after
        assert (gathered(key, "old_log_probs") - tuned)[mask].abs().max().item() < 1e-5
    assert (tuned - base)[mask].abs().max().item() > 1e-2  # the adapter changes the policy


def test_an_adapter_checkpoint_resumes_bit_for_bit(setup):
    _, results, out_dir = setup
    for r in results["per_rank"]:
        assert torch.equal(r["restored_log_probs"]["old_log_probs"], r["log_probs"]["old_log_probs"])
    assert all(torch.equal(results["restored_grads"][k], results["grads"][k]) for k in results["grads"])
    assert results["restored_next"] == results["next"]
    assert all(
        torch.equal(results["restored_next_adapter"][k], results["next_adapter"][k])
        for k in results["next_adapter"]
    )
    # The checkpoint holds the adapter and its Adam moments (and step counts), not the frozen base.
    metadata = dcp.FileSystemReader(out_dir / "ckpt" / "dcp").read_metadata().state_dict_metadata
    tensors = {k: v for k, v in metadata.items() if hasattr(v, "size") and len(v.size) > 0}
    model_keys = [k for k in tensors if k.startswith("model.")]
    assert model_keys and all(".lora_A." in k or ".lora_B." in k for k in model_keys)
    adapter = sum(per["local_adapter_bytes"] for per in results["per_rank"])
    stored = sum(4 * math.prod(v.size) for v in tensors.values())
    print(f"\ncheckpoint tensors {stored / 2**10:.1f} KiB; adapter {adapter / 2**10:.1f} KiB")
    assert stored == 3 * adapter
