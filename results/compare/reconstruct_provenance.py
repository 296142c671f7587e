"""Attach to each run of the first study (results/compare/curves.json) a provenance record reconstructed after
the fact: its 66 runs predate provenance recording (issue 19).

What is reconstructed, and from what:
- commit: PROTOCOL.md, Deviations, states that every run trained from one pinned checkout at a4ab052 (stated
  there, not recorded by the runs);
- config_sha256: recomputed by composing each run's overrides (those the study runner of a4ab052 passed:
  its sfpo_rl/experiments/compare.py) with the configs and config schema of a4ab052, exported with `git
  archive`, hashed as the trainer hashes run_dir/config.yaml today (sfpo_rl/utils/provenance.py). It assumes
  HOME=/root and SFPO_RL_CACHE unset (model.cache_dir is part of the resolved config), as on the study's machine.
- everything else (dirty flag, starting weights, versions, python, host, cpu count, start time, the number of
  launches, wall-clock, load) is unknown and stays null.

    .venv/bin/python results/compare/reconstruct_provenance.py      # from the repository root; rewrites curves.json
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

COMMIT = "a4ab052"
ROOT = Path(__file__).resolve().parents[2]
CURVES = ROOT / "results/compare/curves.json"
HOW = (
    "after the fact (issue 19): the commit is the one results/compare/PROTOCOL.md (Deviations) "
    "states every run trained from, not one the run recorded; config_sha256 was recomputed by composing the run's "
    f"overrides with the configs and schema at {COMMIT} (HOME=/root assumed); the dirty flag, starting weights, "
    "versions, host, start time, launches, wall-clock and load are unknown"
)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hash_configs(overrides_by_run: dict[str, list[str]]) -> dict[str, str]:
    """In this process `sfpo_rl` is a4ab052's (PYTHONPATH); today's compose and hash helpers are loaded by path."""
    here = Path(os.environ["RECONSTRUCT_FROM"])
    compose = _load("study_compose", here / "sfpo_rl/experiments/compose.py")
    provenance = _load("study_provenance", here / "sfpo_rl/utils/provenance.py")
    import sfpo_rl

    assert Path(sfpo_rl.__file__).resolve().is_relative_to(Path(os.environ["PYTHONPATH"]).resolve()), (
        sfpo_rl.__file__
    )
    return {
        name: provenance.config_hash(compose.resolved_config(overrides))
        for name, overrides in overrides_by_run.items()
    }


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from sfpo_rl.experiments.records import read_curves, write_curves
    from sfpo_rl.experiments.study import load_study, plan

    study = load_study(ROOT / "results/compare/study.yaml")
    records = read_curves(CURVES)
    overrides = {}
    for run in plan(study):
        # a4ab052's runner: run_dir, console logger, no export, the arm's overrides, lr and seeds (steps: default 40)
        overrides[run.name] = [
            f"trainer.run_dir=outputs/compare/{run.name}", "trainer.logger=[console]", "trainer.export_hf=false",
            *run.arm.overrides, f"actor.optimizer.lr={run.lr.value:g}", f"trainer.seed={run.seed}", f"data.seed={run.seed}",
        ]  # fmt: skip
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", COMMIT], capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "src.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "src", filter="tar")
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(tmp) / "src"),
            "RECONSTRUCT_FROM": str(ROOT),
            "HOME": "/root",
        }
        env.pop("SFPO_RL_CACHE", None)
        env.pop("SFPO_RL_CONFIG_DIR", None)
        done = subprocess.run(
            [sys.executable, __file__, "--hash"], input=json.dumps(overrides), capture_output=True, text=True,
            env=env, cwd=tmp, check=True,
        )  # fmt: skip
    hashes = json.loads(done.stdout.strip().splitlines()[-1])
    for name, record in records.items():
        record.launches = [
            {
                "commit": commit,
                "dirty": None,
                "config_sha256": hashes[name],
                "weights_sha256": None,
                "versions": None,
                "python": None,
                "host": None,
                "cpu_count": None,
                "started_at": None,
                "reconstructed": HOW,
            }  # fmt: skip
        ]
    order = {run.name: i for i, run in enumerate(plan(study))}
    write_curves(CURVES, sorted(records.values(), key=lambda r: order[r.name]))
    print(
        f"{len(records)} runs: commit {commit}, {len(set(hashes.values()))} distinct config hashes -> {CURVES}"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--hash"]:
        print(json.dumps(hash_configs(json.loads(sys.stdin.read()))))
    else:
        main()
