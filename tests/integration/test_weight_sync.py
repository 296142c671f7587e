"""Streamed weight sync on real parts: a 2-rank FSDP actor (gloo) on Ray and vLLM CPU engines, placed
colocated (an engine in each actor rank's process, fed from that rank's shards) and split (buckets from actor
rank 0 to an engine of its own, through the object store). The engines start from a different model than the
actor's, the actor takes one update, and after a sync every engine generates exactly what a fresh engine loaded
from the actor's exported weights generates: greedily and with seeded sampling, log-probs included."""

from __future__ import annotations

import pytest
import torch
from actor_helpers import make_batch, sectioned

from sfpo_rl.controller import RayWorkerGroup, ResourcePool
from sfpo_rl.protocol import Batch
from sfpo_rl.tiny.model import build_model, save_pretrained
from sfpo_rl.trainer.worker_groups import WorkerGroups
from sfpo_rl.workers.actor_worker import ActorWorker
from sfpo_rl.workers.colocated import ColocatedRolloutWorker
from sfpo_rl.workers.rollout import RolloutWorker, VLLMRollout

pytestmark = pytest.mark.slow

# Buckets of 0.05 MB hold less than one layer of the tiny model: every layer (and the embedding, the LM head)
# travels as a bucket of its own, 5 in all.
ROLLOUT = dict(
    n=2,
    max_prompt_length=16,
    max_response_length=12,
    dtype="float32",
    kv_cache_gib=0.0625,
    sync_bucket_mb=0.05,
)
ACTOR = sectioned(dict(lr=1e-2, ppo_mini_batch_size=12, micro_batch_size_per_gpu=6, grad_clip=None))
TEXTS = ["Compute 12 + 34 - 5.", "The answer is", "46 - 5 = 41.", "Compute", "\\boxed{", "x"]


@pytest.fixture(scope="module")
def other_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's architecture and tokenizer with other random weights: where the engines start."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return save_pretrained(build_model(tokenizer, seed=1), tokenizer, tmp_path_factory.mktemp("other_model"))


def prompts() -> Batch:
    return Batch.from_dict({"raw_prompt": TEXTS, "sampling_seed": [11 * i for i in range(len(TEXTS))]})


def train_one_step(groups: WorkerGroups, tiny_model_dir) -> None:
    """One update on a fixed batch, so the actor holds weights that exist nowhere on disk."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = make_batch(len(tokenizer), tokenizer.pad_token_id)
    batch = batch.union(groups.actor.compute_log_prob(batch).select(keys=["old_log_probs"]))
    groups.actor.update(batch)


def generations(generate) -> dict[str, Batch]:
    return {
        "greedy": generate(prompts(), n=1, temperature=0.0),
        "sampled": generate(prompts(), n=2, temperature=1.0),
    }


def assert_same(got: dict[str, Batch], expected: dict[str, Batch]) -> None:
    for kind in expected:
        for key in ("responses", "response_mask", "rollout_log_probs"):
            assert torch.equal(got[kind][key], expected[kind][key]), (kind, key)


def fresh_engine_generations(export_dir, chunks: int) -> dict[str, Batch]:
    """What a new engine loaded from `export_dir` generates for the prompts, split into the chunks a worker
    group's ranks get (the same batch shapes, so the same kernels)."""
    engine = VLLMRollout(export_dir, ROLLOUT)
    return {
        kind: Batch.concat([engine.generate(chunk, **options) for chunk in prompts().split(chunks)])
        for kind, options in (("greedy", dict(n=1, temperature=0.0)), ("sampled", dict(n=2, temperature=1.0)))
    }


def sync_and_compare(groups: WorkerGroups, tiny_model_dir, export_dir, chunks: int) -> None:
    """Train one step, sync, and check the engines now generate what a fresh engine loaded from the exported
    weights generates (and did not before). Shuts the groups down."""
    try:
        before = generations(groups.generate)
        train_one_step(groups, tiny_model_dir)
        stats = groups.sync_weights()
        # Colocated on CPU: sleeping, waking and the optimizer offload change nothing, but the calls run.
        groups.to_training()
        after = generations(groups.generate)
        groups.actor.export_hf(str(export_dir))
    finally:
        groups.shutdown()
    expected = fresh_engine_generations(export_dir, chunks)
    assert not torch.equal(before["greedy"]["responses"], expected["greedy"]["responses"])
    assert_same(after, expected)
    assert (
        stats["sync/buckets"] == 5 and stats["sync/load_weights_tensors"] == 27
    )  # 26 weights + tied lm_head
    return stats


def test_colocated_engines_take_the_actors_weights_from_their_own_process(
    ray_local, tiny_model_dir, other_model_dir, tmp_path
):
    roles = {
        "actor": (ActorWorker, (tiny_model_dir, ACTOR)),
        "rollout": (ColocatedRolloutWorker, (other_model_dir, ROLLOUT), {"offload_optimizer": True}),
    }
    hosted = RayWorkerGroup.colocated(ResourcePool([2], name="sync-colocated"), roles)
    assert hosted["actor"].worker_info == hosted["rollout"].worker_info  # one process per rank, both roles
    groups = WorkerGroups(**hosted, reward=None, colocated=True, sync_bucket_mb=0.05)
    sync_and_compare(groups, tiny_model_dir, tmp_path / "exported", chunks=2)


def test_split_engines_receive_the_weights_bucket_by_bucket(
    ray_local, tiny_model_dir, other_model_dir, tmp_path
):
    actor = RayWorkerGroup(ResourcePool([2], name="sync-actor"), ActorWorker, "actor", tiny_model_dir, ACTOR)
    rollout = RayWorkerGroup(
        ResourcePool([1], name="sync-rollout"), RolloutWorker, "rollout", other_model_dir, ROLLOUT
    )
    groups = WorkerGroups(actor=actor, rollout=rollout, reward=None, sync_bucket_mb=0.05)
    sync_and_compare(groups, tiny_model_dir, tmp_path / "exported", chunks=1)
