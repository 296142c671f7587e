"""The default warm-start, shipped in the package: every machine starts the embedded default from the same bytes.

Building the default warm-start takes about 9 minutes on one idle core, and float kernels can differ between
CPUs, so two machines may build slightly different weights. The package therefore carries one build of the default
(`default_warmstart/`: weights, tokenizer, model config, `warmstart.json`) and a manifest with the sha256 of
every file of that build. The task's data files are not shipped (5 MB); they are regenerated, which is
deterministic and takes a second, and checked against the manifest. `ensure_warmstart` installs this copy
whenever the requested config is the one it was built from; any other config is built locally.
`tests/integration/test_warmstart.py` checks that the build code still reproduces it.

To ship a new build (after a change to the task or the warm-start code):
`python -m sfpo_rl.tiny.shipped ~/.cache/sfpo_rl/warmstart-<key>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from sfpo_rl.data import arith
from sfpo_rl.tiny.warmstart import INFO_FILE
from sfpo_rl.utils.console import say

SHIPPED_DIR = Path(__file__).parent / "default_warmstart"
MANIFEST = "shipped.json"
DATA_FILES = ("train.jsonl", "val.jsonl")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict[str, Any] | None:
    path = SHIPPED_DIR / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def serves(cfg: Any) -> bool:
    """Whether the shipped copy was built from exactly these warm-start options."""
    info = manifest()
    plain = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as the manifest holds them
    return info is not None and info["config"] == plain


def install(out_dir: Path, cfg: Any) -> bool:
    """Copy the shipped files into `out_dir` and regenerate the data files; False (and `out_dir` emptied)
    when this code's data differ from the data the shipped model was trained on, so it must be built here."""
    info = manifest()
    for name in info["files"]:
        if name not in DATA_FILES:
            shutil.copyfile(SHIPPED_DIR / name, out_dir / name)
    shutil.copyfile(SHIPPED_DIR / MANIFEST, out_dir / MANIFEST)
    arith.write_arith_dataset(out_dir, cfg.num_train, cfg.num_val, cfg.seed, cfg.levels)
    changed = [name for name, digest in info["files"].items() if sha256(out_dir / name) != digest]
    if changed:
        say(
            f"the shipped warm-start does not match this code ({', '.join(changed)} differ): building it here instead"
        )
        for path in out_dir.iterdir():
            path.unlink()
    return not changed


def ship(built_dir: Path, shipped_dir: Path | None = None) -> dict[str, Any]:
    """Make the warm-start built in `built_dir` the shipped one: copy everything but the data files and write
    the manifest (the build's config and cache key, and the sha256 of every file, data files included)."""
    shipped_dir = shipped_dir or SHIPPED_DIR
    info = json.loads((built_dir / INFO_FILE).read_text())
    names = sorted(p.name for p in built_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    if shipped_dir.exists():
        shutil.rmtree(shipped_dir)
    shipped_dir.mkdir(parents=True)
    for name in names:
        if name not in DATA_FILES:
            shutil.copyfile(built_dir / name, shipped_dir / name)
    record = {
        "config": info["config"],
        "key": info["key"],
        "files": {name: sha256(built_dir / name) for name in names},
    }
    (shipped_dir / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / INFO_FILE).is_file():
        sys.exit("usage: python -m sfpo_rl.tiny.shipped <a built warm-start directory, with warmstart.json>")
    print(json.dumps(ship(Path(sys.argv[1])), indent=2))
