"""`sfpo-rl-study` end to end with the real trainer (Ray, vLLM, FSDP2 over gloo) on the random tiny model and a
small arithmetic dataset: a study of 2 arms x 1 lr x 2 seeds of 3 steps runs and reports; a study whose runner
is killed mid-run and started again does not retrain its finished runs, resumes the interrupted one from its
checkpoint and ends with the same result as the uninterrupted study; runs whose recorded commit differs are
refused by name; and every run's recorded config hash is the one the runner's own composition gives (the
method that reconstructed the first study's hashes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sfpo_rl.data.arith import write_arith_dataset
from sfpo_rl.experiments.compose import resolved_config
from sfpo_rl.experiments.study import load_study, plan
from sfpo_rl.trainer.tracking import read_jsonl
from sfpo_rl.utils.provenance import config_hash, read_launches

# Starts Ray, vLLM and torch.distributed; the module trains 8 short runs (about 2-4 minutes each on 2 loaded cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

STUDY = [sys.executable, "-m", "sfpo_rl.experiments.runner"]
RUNS = ["grpo_lr1e-3_seed0", "sfpo_lr1e-3_seed0", "grpo_lr1e-3_seed1", "sfpo_lr1e-3_seed1"]


@pytest.fixture(scope="module")
def study_file(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("study")
    train, val = write_arith_dataset(root / "data", num_train=64, num_val=16)
    study = {
        "name": "tiny end-to-end study",
        "steps": 3,
        "learning_rates": ["1e-3"],
        "seeds": 2,
        "overrides": [
            f"model.path={tiny_model_dir}",
            f"model.cache_dir={root / 'cache'}",
            "data=files",
            f"data.train_files=[{train}]",
            f"data.val_files=[{val}]",
            "data.train_batch_size=4",
            "rollout.n=2",
            "actor.batching.ppo_mini_batch_size=8",
            "rollout.max_prompt_length=256",
            "rollout.max_response_length=32",
            "trainer.val_every=3",
            "trainer.save_every=1",
        ],  # fmt: skip
        "arms": {
            "grpo": {"label": "GRPO", "overrides": ["algorithm=grpo"]},
            "sfpo": {"label": "SFPO K=2", "overrides": ["algorithm=sfpo", "algorithm.sfpo.inner_steps=2"]},
        },
        "comparisons": [
            {
                "title": "SFPO against GRPO",
                "kind": "same_lr",
                "baseline": "grpo",
                "endpoints": ["final", "rollouts"],
                "decide": ["final"],
            },  # fmt: skip
        ],
        "out": "report",
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def study_cmd(path: Path, runs: Path, out: Path, *flags: str) -> list[str]:
    return [*STUDY, str(path), "--runs", str(runs), "--out", str(out), *flags]


@pytest.fixture(scope="module")
def uninterrupted(study_file):
    runs, out = study_file.parent / "runs_a", study_file.parent / "report_a"
    proc = subprocess.run(study_cmd(study_file, runs, out), capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return runs, out, proc.stdout


def deterministic(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if not k.startswith(("timing/", "perf/", "sync/"))}
        for row in read_jsonl(run_dir / "metrics.jsonl")
    ]


def test_a_small_study_runs_end_to_end_and_reports(uninterrupted, study_file):
    runs, out, stdout = uninterrupted
    assert "tiny end-to-end study: 4 runs planned, 0 done, 4 to go" in stdout
    assert [
        line.split("done: ")[1].split(" ")[0]
        for line in stdout.splitlines()
        if "] " in line and "done: " in line
    ] == RUNS
    assert "4 of 4 done, 0 to go" in stdout
    for name in RUNS:
        assert [r["step"] for r in read_jsonl(runs / name / "metrics.jsonl")] == [0, 1, 2, 3]
    summary = json.loads((out / "report.json").read_text())
    assert summary["provenance"]["runs"] == 4 and set(summary["comparisons"][0]["rows"]) == {"sfpo@1e-3"}
    assert {p.name for p in out.iterdir()} >= {
        "report.md",
        "report.json",
        "curves.json",
        "val_acc_vs_rollouts.png",
    }
    study = load_study(study_file)
    for run in plan(study):
        (launch,) = read_launches(runs / run.name / "provenance.jsonl")
        composed = resolved_config(
            [
                f"trainer.run_dir={runs / run.name}",
                "trainer.logger=[console]",
                "trainer.export_hf=false",
                *run.overrides(study),
            ]  # fmt: skip
        )
        assert launch["config_sha256"] == config_hash(composed)  # the runner's composition is the trainer's
        assert launch["commit"] and launch["weights_sha256"] and launch["host"]


def test_a_killed_study_resumes_without_retraining_and_ends_as_the_uninterrupted_one(
    uninterrupted, study_file
):
    runs, out = study_file.parent / "runs_b", study_file.parent / "report_b"
    log = open(study_file.parent / "killed.log", "w")
    first = subprocess.Popen(
        study_cmd(study_file, runs, out), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    # Kill the runner and its trainer once the first run has finished and the second has a checkpoint.
    done, checkpoint = (
        runs / RUNS[0] / "summary.json",
        runs / RUNS[1] / "checkpoints/step_1/trainer_state.json",
    )
    deadline = time.monotonic() + 1800
    while not (done.exists() and checkpoint.exists()):
        assert first.poll() is None, (study_file.parent / "killed.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "the second run wrote no checkpoint within 30 minutes"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (runs / RUNS[1] / "summary.json").exists()
    finished_log = (runs / RUNS[0] / "train.log").read_text()

    second = subprocess.run(study_cmd(study_file, runs, out), capture_output=True, text=True, timeout=3600)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "4 runs planned, 1 done, 3 to go" in second.stdout
    assert (runs / RUNS[0] / "train.log").read_text() == finished_log  # not trained again
    assert len(read_launches(runs / RUNS[0] / "provenance.jsonl")) == 1
    assert len(read_launches(runs / RUNS[1] / "provenance.jsonl")) == 2  # resumed, from its checkpoint:
    assert "resumed from" in (runs / RUNS[1] / "train.log").read_text()

    ref_runs, ref_out, _ = uninterrupted
    for name in RUNS:
        assert deterministic(runs / name) == deterministic(ref_runs / name), name
    rows, ref_rows = (
        json.loads((o / "report.json").read_text())["comparisons"][0]["rows"] for o in (out, ref_out)
    )
    assert rows["sfpo@1e-3"]["final"] == ref_rows["sfpo@1e-3"]["final"]
    assert rows["sfpo@1e-3"]["rollouts"] == ref_rows["sfpo@1e-3"]["rollouts"]


def test_runs_of_another_commit_are_refused_by_name(uninterrupted, study_file, tmp_path):
    ref_runs, _, _ = uninterrupted
    runs = tmp_path / "runs"
    shutil.copytree(ref_runs, runs)
    edited = runs / RUNS[3] / "provenance.jsonl"
    launch = read_launches(edited)[0]
    edited.write_text(json.dumps({**launch, "commit": "0" * 40}) + "\n")
    refused = subprocess.run(
        study_cmd(study_file, runs, tmp_path / "out", "--analyze-only"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "not all made by the same code" in refused.stderr
    assert (
        f"commit 000000000000, weights {launch['weights_sha256'][:12]}: 1 run(s): {RUNS[3]}" in refused.stderr
    )
    allowed = subprocess.run(
        study_cmd(study_file, runs, tmp_path / "out", "--analyze-only", "--allow-mixed-commits"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "analysed together (--allow-mixed-commits)" in (tmp_path / "out" / "report.md").read_text()

    # The same refusal from a curves file alone (the committed results of another machine).
    shutil.rmtree(runs)
    curves = tmp_path / "out" / "curves.json"
    data = json.loads(curves.read_text())
    assert data["sfpo@1e-3"]["1"]["run"]["launches"][0]["commit"] == "0" * 40
    data["sfpo@1e-3"]["1"]["run"]["launches"][0]["commit"] = "1" * 40
    curves.write_text(json.dumps(data))
    refused = subprocess.run(
        study_cmd(study_file, runs, tmp_path / "out", "--analyze-only"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (
        refused.returncode == 2
        and "commit 111111111111, weights" in refused.stderr
        and RUNS[3] in refused.stderr
    )
