"""Atomic checkpoints in the run directory.

A checkpoint is written into `checkpoints/.tmp-step_N/` (the actor ranks write their sharded DCP state under
`actor/`, the driver writes `trainer_state.json`), then `MANIFEST.json` (size and sha256 of every file) is
written last and the directory is renamed to `checkpoints/step_N`. A crash at any point before the rename
leaves only a `.tmp-` directory, which resume ignores; a complete directory whose files no longer match the
manifest (size, and sha256 with verify_checksums) is refused with a message, and resume falls back to the
previous complete one. The manifest covers every file, the actor's DCP shards and metadata included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from sfpo_rl.trainer.run_dir import RunDir
from sfpo_rl.utils.console import say

MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    def __init__(self, run_dir: str | Path, keep_last: int = 2, verify_checksums: bool = True):
        self.root = RunDir(run_dir).checkpoints
        self.keep_last = keep_last
        self.verify_checksums = verify_checksums

    def staging_dir(self, step: int) -> Path:
        """An empty directory for step `step`'s files; workers write into it before `commit`."""
        tmp = self.root / f".tmp-step_{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, staging: Path, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write the trainer state and the manifest, then publish the checkpoint with one rename."""
        (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1, sort_keys=True))
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest = {
            "step": step,
            "files": {
                str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
            },
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for p in [*files, staging / MANIFEST]:
            with p.open("rb") as f:
                os.fsync(f.fileno())
        final = self.root / f"step_{step}"
        if final.exists():  # re-saving a step after a resume: the old copy is replaced whole
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(self.root)
        self._prune()
        return final

    def committed(self) -> list[Path]:
        """The published checkpoint directories, newest first (not verified)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def _prune(self) -> None:
        for path in self.committed()[self.keep_last :]:
            shutil.rmtree(path, ignore_errors=True)

    def verify(self, path: Path) -> None:
        """Raise CheckpointError unless every file listed in the manifest is present and intact."""
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path}: no such directory")
        if not manifest_path.is_file():
            raise CheckpointError(f"checkpoint {path} has no {MANIFEST}: it was not completely written")
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable ({e})") from e
        for rel, info in files.items():
            f = path / rel
            if not f.is_file():
                raise CheckpointError(f"checkpoint {path}: file {rel} listed in the manifest is missing")
            if f.stat().st_size != info["bytes"]:
                raise CheckpointError(
                    f"checkpoint {path}: file {rel} has {f.stat().st_size} bytes, the manifest says {info['bytes']}"
                )
            if self.verify_checksums and _sha256(f) != info["sha256"]:
                raise CheckpointError(f"checkpoint {path}: file {rel} fails its sha256 check (corrupted)")

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies, with its trainer state; broken ones are reported and skipped."""
        for path in self.committed():
            try:
                return path, self.load(path)
            except CheckpointError as e:
                say(f"skipping checkpoint: {e}")
        return None

    def load(self, path: str | Path) -> dict[str, Any]:
        """Verify an explicitly named checkpoint and return its trainer state."""
        path = Path(path)
        self.verify(path)
        try:
            return json.loads((path / TRAINER_STATE).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: {TRAINER_STATE} is unreadable ({e})") from e
