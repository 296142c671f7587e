"""Where a launch starts from what its run directory holds, decided before any worker starts: a finished run is
reported and left alone, one that cannot be continued is refused by name, a fresh start replaces the earlier
run's files, and no step is ever logged twice. Trainer state round-trips through a checkpoint from one
description of its fields, and reads checkpoints written before that description existed."""

import json
from pathlib import Path

import pytest
import ray
from hydra import compose, initialize_config_dir

from sfpo_rl.algorithms.sfpo import SFPOController
from sfpo_rl.trainer.checkpoint import CheckpointManager
from sfpo_rl.trainer.config import ConfigError, TrainerConfig, register_schema
from sfpo_rl.trainer.main import print_summary, run
from sfpo_rl.trainer.ray_trainer import RLTrainer, TrainerState
from sfpo_rl.trainer.setup import CONFIG_DIR
from sfpo_rl.trainer.start_point import RunFinished, clear_earlier_run, start_point
from sfpo_rl.trainer.tracking import Tracker, read_jsonl


def summary(run_dir: Path, steps: int, val_history=()) -> dict:
    vals = list(val_history)
    return {
        "steps": steps,
        "val_acc_first": vals[0][1] if vals else None,
        "val_acc_last": vals[-1][1] if vals else None,
        "val_acc_best": max((a for _, a in vals), default=None),
        "val_history": vals,
        "sfpo_switched_off_after": None,
        "rollouts": 32 * steps,
        "train_seconds": 1.0,
        "run_dir": str(run_dir),
    }


def finished(run_dir: Path, steps: int, checkpoint_at: int | None = None) -> None:
    """What a finished run leaves: metrics of every step, summary.json, a checkpoint if it saved one."""
    tracker = Tracker(run_dir, loggers=[])
    for step in range(1, steps + 1):
        tracker.log({"x": step}, step=step)
    tracker.close()
    (run_dir / "summary.json").write_text(json.dumps(summary(run_dir, steps)))
    if checkpoint_at is not None:
        manager = CheckpointManager(run_dir)
        manager.commit(manager.staging_dir(checkpoint_at), checkpoint_at, {"step": checkpoint_at})


def trainer(run_dir: Path, **options) -> TrainerConfig:
    return TrainerConfig(run_dir=str(run_dir), total_steps=options.pop("total_steps", 12), **options)


def test_an_empty_run_dir_starts_at_step_one(tmp_path):
    assert start_point(trainer(tmp_path)) is None


def test_a_finished_run_is_reported_not_trained_again(tmp_path):
    finished(tmp_path, 12)  # trainer.save_every=0: no checkpoint
    with pytest.raises(RunFinished, match=f"{tmp_path} holds a finished run of 12 steps; nothing to do"):
        start_point(trainer(tmp_path))
    finished(tmp_path, 12, checkpoint_at=12)
    with pytest.raises(RunFinished):
        start_point(trainer(tmp_path, total_steps=10))


def test_a_finished_run_without_a_checkpoint_cannot_be_continued(tmp_path):
    finished(tmp_path, 12)
    with pytest.raises(ConfigError, match="finished run of 12 steps and no checkpoint to continue it from"):
        start_point(trainer(tmp_path, total_steps=20))


def test_a_finished_run_with_a_checkpoint_continues_to_more_steps(tmp_path):
    finished(tmp_path, 12, checkpoint_at=12)
    path, state = start_point(trainer(tmp_path, total_steps=20))
    assert path == tmp_path / "checkpoints" / "step_12" and state["step"] == 12


def test_unreadable_summary_is_named(tmp_path):
    (tmp_path / "summary.json").write_text("{")
    with pytest.raises(ConfigError, match=r"trainer.run_dir: .*summary.json is unreadable"):
        start_point(trainer(tmp_path))


def test_a_fresh_start_replaces_the_earlier_run_and_logs_no_step_twice(tmp_path, capsys):
    """resume=never on a finished run; and a run that stopped before its first checkpoint, run again."""
    finished(tmp_path, 12, checkpoint_at=12)
    (tmp_path / "final_model").mkdir()
    (tmp_path / "logs").mkdir()
    assert start_point(trainer(tmp_path, resume="never")) is None
    clear_earlier_run(tmp_path)
    assert (
        "replacing the earlier run's checkpoints, summary.json, final_model, logs, metrics.jsonl"
        in capsys.readouterr().out
    )
    assert not any(
        (tmp_path / name).exists() for name in ("checkpoints", "summary.json", "final_model", "logs")
    )
    tracker = Tracker(tmp_path, loggers=[], resume_from_step=None)
    tracker.log({"x": 100}, step=1)
    tracker.close()
    assert [(r["step"], r["x"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [(1, 100)]
    assert start_point(trainer(tmp_path)) is None  # metrics but no checkpoint and no summary: start over


def test_run_reports_a_finished_run_without_starting_anything(tmp_path, capsys):
    register_schema()
    (tmp_path / "summary.json").write_text(json.dumps(summary(tmp_path, 3)))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"trainer.run_dir={tmp_path}", "trainer.experiment_name=t", "trainer.total_steps=3"],
        )
    assert run(cfg)["steps"] == 3
    out = capsys.readouterr().out
    assert "holds a finished run of 3 steps; nothing to do" in out
    assert "validation: off (trainer.val_every=0 and trainer.val_before_train=false)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"] and not ray.is_initialized()


def test_summary_reports_validation_accuracy_when_validated(tmp_path, capsys):
    print_summary(summary(tmp_path, 2, [(0, 0.1), (2, 0.25)]))
    assert "validation accuracy: 10.0% before -> 25.0% after (best 25.0%)" in capsys.readouterr().out


def test_summary_says_when_the_first_validation_came_after_training_began(tmp_path, capsys):
    print_summary(summary(tmp_path, 4, [(2, 0.1), (4, 0.25)]))  # trainer.val_before_train=false
    assert "validation accuracy: 10.0% at step 2 -> 25.0% after (best 25.0%)" in capsys.readouterr().out


# ------------------------------------------------------------------ trainer state through a checkpoint


class FakeActor:
    def save_checkpoint(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "shard").write_text("weights")

    def load_checkpoint(self, path: str) -> None:
        assert (Path(path) / "shard").read_text() == "weights"


class FakeGroups:
    actor = FakeActor()

    def to_training(self) -> None:
        pass

    def sync_weights(self) -> dict:
        return {}


class FakeLoader:
    def __init__(self, position: int = 0):
        self.position = position

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def driver(run_dir: Path, loader: FakeLoader) -> RLTrainer:
    t = RLTrainer.__new__(RLTrainer)  # only the parts checkpointing reads
    t.run_dir, t.groups, t.train_loader = run_dir, FakeGroups(), loader
    t.checkpoints, t.sfpo, t.progress = CheckpointManager(run_dir), SFPOController(), TrainerState()
    return t


def test_trainer_state_round_trips_through_a_checkpoint(tmp_path):
    first = driver(tmp_path, FakeLoader(position=40))
    first.progress = TrainerState(7, 224, 12.5, [(0, 0.1), (5, 0.3)], nonfinite_total=2, nonfinite_in_a_row=1)
    first.sfpo.observe(7, 1.25)
    first.save_checkpoint()
    state = json.loads((tmp_path / "checkpoints" / "step_7" / "trainer_state.json").read_text())
    assert set(state) == {*TrainerState.__dataclass_fields__, "sfpo", "train_loader"}

    second = driver(tmp_path, FakeLoader())
    second.resume_from = CheckpointManager(tmp_path).latest()
    assert second._resume() == 7
    assert second.progress == first.progress and second.train_loader.position == 40
    assert second.sfpo.history == [(7, 1.25)]


def test_a_checkpoint_written_before_trainer_state_existed_still_loads():
    """The trainer_state.json of a checkpoint from an earlier version (the same keys, listed by hand)."""
    old = {
        "step": 20,
        "rollouts_done": 2560,
        "train_seconds": 180.25,
        "val_history": [[0, 0.114], [10, 0.132], [20, 0.15]],
        "sfpo": {"history": [[20, 1.1]], "switched_off_after": None, "last_z": None, "config": {}},
        "train_loader": {"epoch": 0, "position": 320},
        "nonfinite_total": 0,
        "nonfinite_in_a_row": 0,
    }
    progress = TrainerState.from_checkpoint(old)
    assert progress.step == 20 and progress.rollouts_done == 2560 and progress.train_seconds == 180.25
    assert progress.val_history == [(0, 0.114), (10, 0.132), (20, 0.15)]
