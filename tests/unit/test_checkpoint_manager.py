import json

import pytest

from sfpo_rl.trainer.checkpoint import MANIFEST, CheckpointError, CheckpointManager


def write_checkpoint(mgr, step, payload=b"weights"):
    staging = mgr.staging_dir(step)
    (staging / "actor").mkdir()
    (staging / "actor" / "shard0.bin").write_bytes(payload)
    return mgr.commit(staging, step, {"step": step})


def test_commit_publishes_complete_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path)
    path = write_checkpoint(mgr, 3)
    assert path.name == "step_3" and not list(mgr.root.glob(".tmp-*"))
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"actor/shard0.bin", "trainer_state.json"}
    found, state = mgr.latest()
    assert found == path and state == {"step": 3}


def test_unfinished_staging_dir_is_never_picked(tmp_path):
    mgr = CheckpointManager(tmp_path)
    write_checkpoint(mgr, 1)
    staging = mgr.staging_dir(2)  # a crash after the workers wrote but before commit
    (staging / "trainer_state.json").write_text(json.dumps({"step": 2}))
    assert mgr.latest()[1] == {"step": 1}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest"])
def test_damaged_checkpoint_is_refused_and_resume_falls_back(tmp_path, damage, capsys):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    write_checkpoint(mgr, 1)
    newest = write_checkpoint(mgr, 2, payload=b"abcdefgh")
    shard = newest / "actor" / "shard0.bin"
    if damage == "truncate":
        shard.write_bytes(b"abc")
    elif damage == "flip":
        shard.write_bytes(b"abcdefgX")
    elif damage == "delete":
        shard.unlink()
    else:
        (newest / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="step_2"):
        mgr.load(newest)
    assert mgr.latest()[1] == {"step": 1}
    assert "skipping checkpoint" in capsys.readouterr().out


def test_keep_last_prunes_oldest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        write_checkpoint(mgr, step)
    assert sorted(p.name for p in mgr.root.iterdir()) == ["step_2", "step_3"]


def test_resaving_a_step_replaces_it(tmp_path):
    mgr = CheckpointManager(tmp_path)
    write_checkpoint(mgr, 5, payload=b"old")
    path = write_checkpoint(mgr, 5, payload=b"new")
    assert (path / "actor" / "shard0.bin").read_bytes() == b"new"
    mgr.verify(path)
