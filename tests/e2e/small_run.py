"""The small runs the end-to-end tests launch, as a user does (`python -m sfpo_rl.trainer.main` with Hydra
overrides), and the checks they share: a kill after a checkpoint, and "the resumed run equals the uninterrupted
one" on step metrics and exported weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

TRAIN = [sys.executable, "-m", "sfpo_rl.trainer.main"]
# Small enough for CI on 2 cores: 8 prompts x 4 samples; the shapes of the default run otherwise.
SMALL = [
    "data.train_batch_size=8",
    "rollout.n=4",
    "actor.batching.ppo_mini_batch_size=16",
    "data.val_max_samples=32",
    "trainer.logger=[console]",
]
# Three steps, validation at start and end, checkpoints at 2 and 3.
THREE_STEPS = ["trainer.total_steps=3", "trainer.val_every=3", "trainer.save_every=2"]


def train_cmd(run_dir: Path, cache_dir: Path, *overrides: str) -> list[str]:
    return [*TRAIN, f"trainer.run_dir={run_dir}", f"model.cache_dir={cache_dir}", *SMALL, *overrides]


def run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def finished(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """`cmd` run to its end, which must be a success."""
    proc = run(cmd, timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def kill_after_checkpoint(cmd: list[str], run_dir: Path, step: int = 2) -> None:
    """Start `cmd` and SIGKILL it (the driver and every Ray process it started) once step `step`'s checkpoint
    is complete."""
    checkpoint = run_dir / "checkpoints" / f"step_{step}" / "trainer_state.json"
    with open(run_dir / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while not checkpoint.exists():
            assert first.poll() is None, (run_dir / "first.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def assert_same_step(resumed: dict, uninterrupted: dict, min_keys: int) -> list[str]:
    """Every deterministic metric (all but timings, throughput and sync sizes) of one step is equal; returns
    their names."""
    deterministic = sorted(k for k in uninterrupted if not k.startswith(("timing/", "perf/", "sync/")))
    assert len(deterministic) > min_keys
    assert {k: resumed[k] for k in deterministic} == {k: uninterrupted[k] for k in deterministic}
    return deterministic


def assert_same_weights(
    run_dir: Path, reference_dir: Path, name: str = "final_model/model.safetensors"
) -> None:
    final, reference = load_file(run_dir / name), load_file(reference_dir / name)
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)
