"""The main job with a LoRA actor (`actor.lora.rank=8`), as a user runs it: real Ray, vLLM and FSDP2 on the
built-in task. It trains with a KL loss whose reference is the actor with its adapter off (no reference
workers), every sync ships the adapter alone, checkpoints hold the adapter and its optimizer state, the export
writes a merged HF model and a PEFT adapter; a run killed after its step-2 checkpoint and resumed matches the
uninterrupted run bit for bit. An unknown target module is refused before anything starts."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sfpo_rl.trainer.checkpoint import CheckpointManager
from sfpo_rl.trainer.tracking import read_jsonl

pytestmark = pytest.mark.slow  # starts Ray, vLLM and torch.distributed

LORA_RUN = [
    sys.executable,
    "-m",
    "sfpo_rl.trainer.main",
    "actor.lora.rank=8",
    "actor.lr=1e-3",
    "actor.use_kl_loss=true",
    "data.train_batch_size=8",
    "rollout.n=4",
    "actor.ppo_mini_batch_size=16",
    "data.val_max_samples=32",
    "trainer.logger=[console]",
    "trainer.total_steps=3",
    "trainer.val_every=3",
    "trainer.save_every=2",
    "algorithm.sfpo.inner_steps=2",
]


def cmd(run_dir: Path, cache_dir: Path, *overrides: str) -> list[str]:
    return [*LORA_RUN, f"trainer.run_dir={run_dir}", f"model.cache_dir={cache_dir}", *overrides]


def run(command: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, warmstart_cache):
    run_dir = tmp_path_factory.mktemp("lora_run")
    proc = run(cmd(run_dir, warmstart_cache))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run_dir, proc


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

    # Checkpoints hold the adapter and its Adam moments, not the base model (read from the DCP metadata: on
    # this tiny model the files' own overhead is as large as the adapter).
    dcp_dir = run_dir / "checkpoints" / "step_3" / "actor" / "dcp"
    metadata = dcp.FileSystemReader(dcp_dir).read_metadata().state_dict_metadata
    tensors = {k: v for k, v in metadata.items() if hasattr(v, "size") and len(v.size) > 0}
    model_keys = [k for k in tensors if k.startswith("model.")]
    assert model_keys and all(".lora_A." in k or ".lora_B." in k for k in model_keys)
    stored = sum(4 * math.prod(v.size) for v in tensors.values())
    assert stored == 3 * rows[-1]["sync/load_weights_mb"] * 2**20  # the adapter, exp_avg, exp_avg_sq
    # The export: a merged HF model, and a PEFT adapter that gives the same logits on the base model.
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "final_model", dtype=torch.float32)
    adapted = PeftModel.from_pretrained(model, run_dir / "final_adapter")
    ids = torch.tensor([[5, 17, 42, 9, 11]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)
    assert "exported LoRA adapter (PEFT):" in proc.stdout


def test_killed_lora_run_resumes_and_matches_the_uninterrupted_run(tmp_path, warmstart_cache, lora_run):
    command = cmd(tmp_path, warmstart_cache)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoint = tmp_path / "checkpoints" / "step_2" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    last, _ = CheckpointManager(tmp_path).latest()

    second = run(command)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    assert f"resumed from {last}" in second.stdout
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    ref_dir, _ = lora_run
    resumed, uninterrupted = rows[3], read_jsonl(ref_dir / "metrics.jsonl")[3]
    deterministic = sorted(k for k in uninterrupted if not k.startswith(("timing/", "perf/", "sync/")))
    assert len(deterministic) > 30
    assert {k: resumed[k] for k in deterministic} == {k: uninterrupted[k] for k in deterministic}
    for name in ("final_model/model.safetensors", "final_adapter/adapter_model.safetensors"):
        final, reference = load_file(tmp_path / name), load_file(ref_dir / name)
        assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)


def test_an_unknown_target_module_exits_2_before_anything_starts(tmp_path):
    proc = run(
        cmd(tmp_path / "run", tmp_path / "cache", "actor.lora.target_modules=[q_proj,qkv]"), timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "actor.lora.target_modules: ['qkv'] not in the built-in model" in proc.stderr
    assert "q_proj" in proc.stderr and "down_proj" in proc.stderr  # the model's names are listed
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()
