"""A run's provenance: the commit and dirty flag of the checkout, a config hash blind to the run directory, a
weights hash that changes with one byte."""

import subprocess

from sfpo_rl.utils.provenance import append_launch, config_hash, git_state, read_launches, weights_hash


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_git_state_names_the_commit_and_sees_uncommitted_changes(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert git_state(tmp_path) == {"commit": head.stdout.strip(), "dirty": False}
    (tmp_path / "untracked.txt").write_text("outputs do not make a checkout dirty")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_git_state_outside_a_checkout_is_unknown(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_config_hash_ignores_the_run_directory_only():
    a = "trainer:\n  run_dir: outputs/a\n  seed: 0\n"
    assert config_hash(a) == config_hash(a.replace("outputs/a", "/elsewhere/b"))
    assert config_hash(a) != config_hash(a.replace("seed: 0", "seed: 1"))


def test_weights_hash_changes_with_one_byte(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    before = weights_hash(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert weights_hash(tmp_path) != before


def test_launches_append_one_line_each(tmp_path):
    path = tmp_path / "provenance.jsonl"
    append_launch(path, {"commit": "a"})
    append_launch(path, {"commit": "b"})
    assert [r["commit"] for r in read_launches(path)] == ["a", "b"]
