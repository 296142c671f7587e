"""The driver's restart policy for dead workers: which failures are retried, and how many times."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from sfpo_rl.controller import WorkerError
from sfpo_rl.trainer.ray_trainer import RLTrainer, TrainerState


class RecordingGroups:
    restartable_roles = ("rollout", "reward", "ref")  # split placement's

    def __init__(self):
        self.restarted: list[str] = []

    def restart(self, role: str) -> None:
        self.restarted.append(role)

    def write_pids(self, run_dir: Path) -> None:
        pass


def trainer(max_restarts: int) -> RLTrainer:
    t = RLTrainer.__new__(RLTrainer)  # only the parts the restart policy reads
    t.config = SimpleNamespace(trainer=SimpleNamespace(max_worker_restarts=max_restarts))
    t.groups, t.run_dir, t.progress, t.worker_restarts = RecordingGroups(), Path("."), TrainerState(step=7), 0
    return t


def failing(failures: list[WorkerError]):
    """Work that raises the given errors one per call, then succeeds; counts its calls."""
    calls = []

    def work():
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "experience"

    return work, calls


def death(role: str) -> WorkerError:
    return WorkerError(f"{role} worker rank 0 died", role=role, rank=0, died=True)


def hang(role: str) -> WorkerError:
    return WorkerError(f"{role} worker rank 0 did not finish", role=role, rank=0, timed_out=True)


def test_dead_or_hung_rollout_reward_and_ref_workers_are_restarted_and_the_work_redone():
    t = trainer(4)
    work, calls = failing([death("rollout"), death("reward"), death("ref"), hang("rollout")])
    assert t._restarting_dead_workers(work) == "experience"
    assert t.groups.restarted == ["rollout", "reward", "ref", "rollout"] and len(calls) == 5
    assert t.worker_restarts == 4


def test_the_restart_budget_is_per_launch_and_then_the_death_is_raised_with_a_note():
    t = trainer(1)
    work, _ = failing([death("reward")])
    t._restarting_dead_workers(work)
    work, calls = failing([death("rollout")])
    with pytest.raises(WorkerError) as info:
        t._restarting_dead_workers(work)
    assert info.value.__notes__ == ["no worker restarts left (trainer.max_worker_restarts=1)"]
    assert t.groups.restarted == ["reward"] and len(calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        death("actor"),  # its state lives only in its ranks: resume from a checkpoint instead
        hang("actor"),
        WorkerError("reward worker rank 0 raised ValueError", role="reward", rank=0),  # a bug, not a crash
    ],
)
def test_dead_actor_ranks_and_exceptions_are_not_retried(error):
    t = trainer(5)
    work, calls = failing([error])
    with pytest.raises(WorkerError):
        t._restarting_dead_workers(work)
    assert t.groups.restarted == [] and len(calls) == 1
