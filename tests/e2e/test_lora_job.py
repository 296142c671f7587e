"""The main job with a LoRA actor (`actor.lora.rank=8`), as a user runs it: real Ray, vLLM and FSDP2 on the
built-in task. It trains with a KL loss whose reference is the actor with its adapter off (no reference
workers), every sync ships the adapter alone, checkpoints hold the adapter and its optimizer state, the export
writes a merged HF model and a PEFT adapter; a run killed after its step-2 checkpoint and resumed matches the
uninterrupted run bit for bit. An unknown target module is refused before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from small_run import (
    THREE_STEPS,
    assert_same_step,
    assert_same_weights,
    finished,
    kill_after_checkpoint,
    run,
    train_cmd,
)
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from sfpo_rl.trainer.checkpoint import CheckpointManager
from sfpo_rl.trainer.tracking import read_jsonl

pytestmark = pytest.mark.slow  # starts Ray, vLLM and torch.distributed

LORA_RUN = (
    "actor.lora.rank=8",
    "actor.optimizer.lr=1e-3",
    "actor.loss.use_kl_loss=true",
    *THREE_STEPS,
    "algorithm.sfpo.inner_steps=2",
)


def cmd(run_dir: Path, cache_dir: Path, *overrides: str) -> list[str]:
    return train_cmd(run_dir, cache_dir, *LORA_RUN, *overrides)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, warmstart_cache):
    run_dir = tmp_path_factory.mktemp("lora_run")
    return run_dir, finished(cmd(run_dir, warmstart_cache))


def test_lora_run_trains_against_its_own_base_and_ships_the_adapter(lora_run, warmstart_cache):
    run_dir, proc = lora_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "[sfpo_rl] LoRA rank 8: every weight sync sends the adapter alone" in proc.stdout
    [base_dir] = warmstart_cache.glob("warmstart-*")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    for r in rows[1:]:
        assert r["sync/buckets"] == 1 and 0 < r["sync/load_weights_mb"] < 0.2 * model_mb
        # KL > 0: the reference (the adapter off) is not the policy that trains.
        assert r["actor/kl_loss"] > 0 and r["sfpo/slow_copy_bytes"] < 0.2 * model_mb * 2**20
    workers = json.loads((run_dir / "workers.json").read_text())
    assert "ref" not in workers  # the reference policy is the actor itself

    # Checkpoints hold the adapter and its Adam moments, not the base model: every model entry is an adapter
    # weight, and the model state, exp_avg and exp_avg_sq are each the adapter's size (what a sync ships).
    metadata = FileSystemReader(run_dir / "checkpoints" / "step_3" / "actor" / "dcp").read_metadata()
    tensor_bytes: dict[str, int] = {}
    for key, entry in metadata.state_dict_metadata.items():
        if key.startswith("model.") or key.endswith((".exp_avg", ".exp_avg_sq")):
            assert "lora_" in key, key
            kind = "model" if key.startswith("model.") else key.rsplit(".", 1)[1]
            tensor_bytes[kind] = tensor_bytes.get(kind, 0) + entry.size.numel() * 4
    adapter_bytes = rows[-1]["sync/load_weights_mb"] * 2**20
    assert tensor_bytes == {"model": adapter_bytes, "exp_avg": adapter_bytes, "exp_avg_sq": adapter_bytes}
    assert adapter_bytes < 0.2 * model_mb * 2**20
    # The export: a merged HF model, and a PEFT adapter that gives the same logits on the base model.
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "final_model", dtype=torch.float32)
    adapted = PeftModel.from_pretrained(model, run_dir / "final_adapter")
    ids = torch.tensor([[5, 17, 42, 9, 11]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)
    assert "exported LoRA adapter (PEFT):" in proc.stdout


def test_killed_lora_run_resumes_and_matches_the_uninterrupted_run(tmp_path, warmstart_cache, lora_run):
    command = cmd(tmp_path, warmstart_cache)
    kill_after_checkpoint(command, tmp_path)
    last, _ = CheckpointManager(tmp_path).latest()

    second = finished(command)
    assert f"resumed from {last}" in second.stdout
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    ref_dir, _ = lora_run
    resumed, uninterrupted = rows[3], read_jsonl(ref_dir / "metrics.jsonl")[3]
    assert_same_step(resumed, uninterrupted, min_keys=30)
    for name in ("final_model/model.safetensors", "final_adapter/adapter_model.safetensors"):
        assert_same_weights(tmp_path, ref_dir, name)


def test_an_unknown_target_module_exits_2_before_anything_starts(tmp_path):
    proc = run(
        cmd(tmp_path / "run", tmp_path / "cache", "actor.lora.target_modules=[q_proj,qkv]"), timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "actor.lora.target_modules: ['qkv'] not in the built-in model" in proc.stderr
    assert "q_proj" in proc.stderr and "down_proj" in proc.stderr  # the model's names are listed
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()
