"""The GPU check's pieces that need no device: it imports without Ray, vLLM or Hydra (the GPU machine has none
of them), its drift measure and tolerance on hand-worked numbers, and a clear refusal without CUDA."""

import math
import subprocess
import sys

import pytest
import torch

from sfpo_rl.bench.gpu_check import drift, drift_failures, main


def test_imports_without_ray_vllm_or_hydra():
    code = (
        "import sys, sfpo_rl.bench.gpu_check, sfpo_rl.workers.actor; "
        "print(sorted(m for m in ('ray', 'vllm', 'hydra', 'omegaconf') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_drift_over_response_tokens_only():
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    reference = torch.tensor([[-1.1, -2.0, -9.0], [-0.5, -0.2, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    measured = drift(log_probs, reference, mask)
    assert measured["mean"] == pytest.approx((0.1 + 0 + 0 + 0.3) / 4)
    assert measured["max"] == pytest.approx(0.3)
    assert drift_failures(measured, max_mean=0.11, max_any=0.31) == []
    assert drift_failures(measured, max_mean=0.05, max_any=0.2) == [
        "mean log-prob drift 0.1 > 0.05 nats",
        "largest log-prob drift 0.3 > 0.2 nats",
    ]
    nan = {"mean": math.nan, "max": math.nan}
    assert len(drift_failures(nan, max_mean=1.0, max_any=1.0)) == 2  # non-finite always fails


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_full_check_says_to_use_reduced(tmp_path):
    with pytest.raises(SystemExit, match="--reduced"):
        main(["--out", str(tmp_path)])
