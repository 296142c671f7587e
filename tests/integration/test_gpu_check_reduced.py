"""The GPU check's reduced CPU form, run as its command: a tiny model, one gloo rank, float32 (and once in
bf16 mixed precision with a tolerance it must fail)."""

import json
import subprocess
import sys

import pytest
from bound_audit import below

pytestmark = pytest.mark.slow  # starts torch.distributed (in a subprocess)


def _check(out, *extra):
    cmd = [sys.executable, "-m", "sfpo_rl.bench.gpu_check", "--reduced", "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc, json.loads((out / "gpu_check.json").read_text())


def test_reduced_check_runs_prints_and_writes_its_result(tmp_path):
    proc, result = _check(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| update throughput" in proc.stdout and "| log-prob drift, mean" in proc.stdout
    assert result["failures"] == [] and result["modules_loaded"] == []
    assert [s["step"] for s in result["steps"]] == [1, 2, 3]
    assert not any(s["nonfinite"] for s in result["steps"])
    # The token budget makes several micro-batches of the long-tailed batch.
    workload = result["workload"]
    assert workload["max_response"] > 2 * workload["median_response"]
    assert workload["tokens"] > result["actor"]["max_tokens_per_micro_batch"]
    # float32 against float32 through the same code: no drift.
    assert below(result["drift"]["max"], 1e-6)
    metrics = {r["metric"]: r["value"] for r in result["rows"]}
    assert metrics["update throughput"] > 0 and 0 < metrics["model FLOP utilisation"] < 1


def test_bf16_drift_beyond_the_tolerance_fails_loudly(tmp_path):
    proc, result = _check(tmp_path, "--param-dtype", "bfloat16", "--max-mean-drift", "1e-6")
    assert proc.returncode == 1
    assert "FAILED: mean log-prob drift" in proc.stderr
    assert 1e-6 < result["drift"]["mean"] < 0.05  # bf16 compute drifts, within the stated tolerance
    assert result["rows"][-1]["value"] == "FAILED"
