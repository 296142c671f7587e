"""A wheel of the repository ships the Hydra configs: installed into a fresh virtual environment (no editable
install, no repository on the path), `sfpo-rl-train --cfg job` composes the default run from another
directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("sfpo_rl", "configs", "pyproject.toml", "README.md")


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_wheel_ships_the_configs_and_runs_from_anywhere(tmp_path):
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, source / name, symlinks=True, ignore=ignore)  # sfpo_rl/configs stays a link
        else:
            shutil.copy(src, source / name)
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            ".",
        ],
        source,
    )
    (wheel,) = dist.glob("sfpo_rl-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("sfpo_rl/configs/")}
    expected = {
        f"sfpo_rl/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")
    }
    assert shipped == expected

    # A fresh environment that sees this one's dependencies (a .pth line, not a site dir: no editable finder).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    (Path(site.stdout.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import sfpo_rl; print(sfpo_rl.__file__)"], elsewhere).stdout
    assert where.startswith(str(venv))
    proc = run([str(venv / "bin" / "sfpo-rl-train"), "--cfg", "job", "algorithm=grpo"], elsewhere)
    printed = OmegaConf.create(proc.stdout)
    assert printed.rollout.n == 8 and not printed.algorithm.sfpo.enable  # tiny_arith experiment, grpo group
    assert not list(elsewhere.iterdir())
