"""Actor checkpoints through real Ray worker groups (2 FSDP2 ranks each, gloo): a save loaded into a fresh group
(fresh processes, fresh process group) gives identical log-probs and an identical next update; the HF export
loads in transformers with identical logits."""

from __future__ import annotations

import shutil

import pytest
import torch
from actor_helpers import actor_args, make_batch, perturbed, plain_log_probs, plain_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sfpo_rl.bench.full_state import FullStateActorWorker
from sfpo_rl.controller import RayWorkerGroup, ResourcePool, WorkerError

pytestmark = pytest.mark.slow

# Warmup + cosine (the restored schedule must give step 1's LR), shuffled mini-batches (the restored step must
# give step 1's row order), 2 mini-batches of 6 rows per update.
CONFIG = dict(
    lr=1e-3,
    lr_schedule="cosine",
    warmup_steps=2,
    total_steps=6,
    ppo_mini_batch_size=6,
    micro_batch_size_per_gpu=2,
    log_prob_micro_batch_size=4,
    shuffle_mini_batches=True,
    entropy_coeff=0.001,
)


def _actor_group(model_dir, name: str) -> RayWorkerGroup:
    return RayWorkerGroup(
        ResourcePool([2], name=name), FullStateActorWorker, "actor", str(model_dir), *actor_args(CONFIG)
    )


def test_checkpoint_roundtrip_and_hf_export(ray_local, tiny_model_dir, tmp_path):
    model = plain_model(tiny_model_dir)
    batch = make_batch(model.config.vocab_size, model.config.pad_token_id, seed=5)
    with torch.no_grad():
        initial_log_probs, _ = plain_log_probs(model, batch)
    batch["old_log_probs"] = perturbed(initial_log_probs, batch["response_mask"], seed=6)
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"

    group = _actor_group(tiny_model_dir, "actor_ckpt_a")
    try:
        first = group.update(batch)
        assert len(first) == 2 and first[0] == first[1]  # per-rank results, identical after the all_reduce
        group.save_checkpoint(str(ckpt))
        log_probs = group.compute_log_prob(batch)
        second = group.update(batch)[0]
        weights = group.state_dict_for_rollout()
        group.export_hf(str(export))
    finally:
        group.shutdown()
    assert weights[1] is None
    # Every HF name, the tied LM head included (vLLM's in-place reload needs it).
    assert weights[0].keys() == model.state_dict().keys()
    weights = weights[0]
    assert second.metrics["actor/lr"] == pytest.approx(1e-3) and first[0].metrics[
        "actor/lr"
    ] == pytest.approx(5e-4)

    fresh = _actor_group(tiny_model_dir, "actor_ckpt_b")
    try:
        meta = fresh.load_checkpoint(str(ckpt))
        assert meta[0]["step"] == 1 and meta[0]["world_size"] == 2
        restored_log_probs = fresh.compute_log_prob(batch)
        restored_second = fresh.update(batch)[0]
        restored_weights = fresh.state_dict_for_rollout()[0]

        # An interrupted save (no marker file) is refused on every rank with a message naming the cause.
        broken = tmp_path / "broken"
        shutil.copytree(ckpt, broken)
        (broken / "actor_meta.json").unlink()
        with pytest.raises(WorkerError, match="incomplete"):
            fresh.load_checkpoint(str(broken))
    finally:
        fresh.shutdown()

    mask = batch["response_mask"].bool()
    moved = (log_probs["old_log_probs"] - initial_log_probs)[mask].abs().max().item()
    assert moved > 1e-3  # the checkpoint holds trained weights, not the initial ones
    assert torch.equal(restored_log_probs["old_log_probs"], log_probs["old_log_probs"])
    assert torch.equal(restored_log_probs["entropy"], log_probs["entropy"])
    assert restored_second == second
    assert restored_weights.keys() == weights.keys()
    assert all(torch.equal(restored_weights[k], weights[k]) for k in weights)

    # The export holds the weights after the second update, with the original config and tokenizer.
    exported = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    reference = plain_model(tiny_model_dir)
    reference.load_state_dict(weights)
    with torch.no_grad():
        ids = batch["input_ids"]
        kwargs = dict(attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
        assert torch.equal(exported(ids, **kwargs).logits, reference(ids, **kwargs).logits)
    tokenizer = AutoTokenizer.from_pretrained(export)
    original = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Compute 12 + 34 - 5."
    assert tokenizer(text)["input_ids"] == original(text)["input_ids"]
    assert tokenizer.eos_token == original.eos_token and tokenizer.pad_token == original.pad_token
