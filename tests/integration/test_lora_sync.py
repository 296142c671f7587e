"""LoRA weight sync on real parts: a 2-rank FSDP LoRA actor (gloo) on Ray and vLLM CPU engines. The engines
start from the base model; after one update and a sync that ships the adapter alone, they generate greedily
exactly what transformers + PEFT generate with the exported adapter, in both placements. An adapter vLLM
cannot serve goes as merged full weights instead. An engine's memory stays flat over 100 adapter syncs."""

from __future__ import annotations

import pytest
import torch
from actor_helpers import make_batch, sectioned
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from sfpo_rl.controller import RayWorkerGroup, ResourcePool
from sfpo_rl.protocol import Batch
from sfpo_rl.trainer.worker_groups import WorkerGroups
from sfpo_rl.workers.actor_worker import ActorWorker
from sfpo_rl.workers.colocated import ColocatedRolloutWorker
from sfpo_rl.workers.lora import LoraConfig, add_adapter, saved_name
from sfpo_rl.workers.rollout import RolloutWorker, VLLMRollout

pytestmark = pytest.mark.slow

ROLLOUT = dict(n=1, max_prompt_length=16, max_response_length=12, dtype="float32", kv_cache_gib=0.0625)
LORA = dict(rank=8, alpha=16.0)
ACTOR = sectioned(
    dict(lr=3e-2, ppo_mini_batch_size=12, micro_batch_size_per_gpu=6, grad_clip=None, lora=LORA)
)
TEXTS = ["Compute 12 + 34 - 5.", "The answer is", "46 - 5 = 41.", "Compute", "\\boxed{", "x"]


def prompts() -> Batch:
    return Batch.from_dict({"raw_prompt": TEXTS})


def responses(batch: Batch) -> list[list[int]]:
    return [row[: int(n)].tolist() for row, n in zip(batch["responses"], batch["response_mask"].sum(-1))]


def transformers_greedy(model: torch.nn.Module, model_dir) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.eval()
    out = []
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        generated = model.generate(
            ids,
            max_new_tokens=ROLLOUT["max_response_length"],
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        out.append(generated[0, ids.shape[1] :].tolist())
    return out


def train_sync_generate(groups: WorkerGroups, model_dir, tmp_path) -> tuple[list, list, dict]:
    """Greedy responses before and after one update and a sync, and the sync's stats; exports the actor to
    tmp_path/model (merged) and tmp_path/adapter (PEFT). Shuts the groups down."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = make_batch(len(tokenizer), tokenizer.pad_token_id)
    try:
        before = responses(groups.generate(prompts(), n=1, temperature=0.0))
        batch = batch.union(groups.actor.compute_log_prob(batch).select(keys=["old_log_probs"]))
        groups.actor.update(batch)
        stats = groups.sync_weights()
        groups.to_training()
        after = responses(groups.generate(prompts(), n=1, temperature=0.0))
        groups.actor.export_hf(str(tmp_path / "model"), str(tmp_path / "adapter"))
    finally:
        groups.shutdown()
    return before, after, stats


def assert_adapter_served(before, after, stats, model_dir, tmp_path) -> None:
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    expected = transformers_greedy(peft_model, model_dir)
    assert after == expected
    assert before != expected  # the adapter changed the policy
    # The merged export is the same policy.
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    assert transformers_greedy(merged, model_dir) == expected
    # Only the adapter went: A and B of 7 projections in each of 2 layers, a fraction of the model's bytes.
    assert stats["sync/load_weights_tensors"] == 28 and stats["sync/buckets"] == 1
    model_mb = sum(p.numel() * 4 for p in base.parameters()) / 2**20
    assert stats["sync/load_weights_mb"] < 0.2 * model_mb


def test_split_engine_serves_the_synced_adapter(ray_local, tiny_model_dir, tmp_path):
    actor = RayWorkerGroup(ResourcePool([2], name="lora-actor"), ActorWorker, "actor", tiny_model_dir, ACTOR)
    rollout = RayWorkerGroup(
        ResourcePool([1], name="lora-rollout"), RolloutWorker, "rollout", tiny_model_dir, ROLLOUT, LORA
    )
    assert rollout.lora_fallback() == [None]
    groups = WorkerGroups(actor=actor, rollout=rollout, reward=None, sync_adapter=True)
    assert_adapter_served(*train_sync_generate(groups, tiny_model_dir, tmp_path), tiny_model_dir, tmp_path)


def test_colocated_engines_serve_the_synced_adapter(ray_local, tiny_model_dir, tmp_path):
    roles = {
        "actor": (ActorWorker, (tiny_model_dir, ACTOR)),
        "rollout": (ColocatedRolloutWorker, (tiny_model_dir, ROLLOUT), {"lora": LORA}),
    }
    hosted = RayWorkerGroup.colocated(ResourcePool([2], name="lora-colocated"), roles)
    groups = WorkerGroups(**hosted, reward=None, colocated=True)
    assert_adapter_served(*train_sync_generate(groups, tiny_model_dir, tmp_path), tiny_model_dir, tmp_path)


def test_an_adapter_vllm_cannot_serve_goes_as_merged_full_weights(ray_local, tiny_model_dir, tmp_path):
    """Rank 600 is above vLLM's largest LoRA rank: the engine starts without LoRA and takes merged weights."""
    lora = {**LORA, "rank": 600}
    actor = RayWorkerGroup(
        ResourcePool([2], name="fallback-actor"),
        ActorWorker,
        "actor",
        tiny_model_dir,
        {**ACTOR, "lora": lora},
    )
    rollout = RayWorkerGroup(
        ResourcePool([1], name="fallback-rollout"), RolloutWorker, "rollout", tiny_model_dir, ROLLOUT, lora
    )
    [reason] = rollout.lora_fallback()
    assert "above vLLM's largest LoRA rank" in reason
    groups = WorkerGroups(actor=actor, rollout=rollout, reward=None, sync_bucket_mb=0.05)
    before, after, stats = train_sync_generate(groups, tiny_model_dir, tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    expected = transformers_greedy(merged, tiny_model_dir)
    assert after == expected and before != expected
    assert (
        stats["sync/load_weights_tensors"] == 27
    )  # the base model's 26 weights + the tied LM head, HF names


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_engine_memory_stays_flat_over_100_adapter_syncs(tiny_model_dir):
    """Every sync replaces the adapter in place: resident memory after 100 syncs is what it was after 10, to
    well under one adapter's size per sync (a kept copy per sync would add 90 adapters)."""
    lora = LoraConfig(rank=64, alpha=64.0)
    engine = VLLMRollout(tiny_model_dir, ROLLOUT, lora)
    model = add_adapter(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), lora, seed=0
    )
    adapter = {saved_name(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    adapter_bytes = sum(t.nbytes for t in adapter.values())
    memory = []
    for sync in range(100):
        for tensor in adapter.values():
            tensor.add_(0.01)  # a new adapter every sync
        engine.load_adapter(adapter)
        if sync % 10 == 9:
            engine.generate(prompts(), n=1, temperature=0.0)
        memory.append(_rss_bytes())
    growth = memory[-1] - memory[9]
    print(
        f"\nadapter {adapter_bytes / 2**20:.2f} MiB; RSS after 10 syncs {memory[9] / 2**20:.1f} MiB, after 100 "
        f"{memory[-1] / 2**20:.1f} MiB (growth {growth / 2**20:.2f} MiB)"
    )
    assert growth < 0.1 * 90 * adapter_bytes
