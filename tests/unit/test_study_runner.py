"""The study runner with a stand-in for `sfpo-rl-train` that writes what a run leaves behind (metrics.jsonl,
summary.json, provenance.jsonl): finished and recorded runs are not trained again, a failed run is reported and
the others go on, a run stopped for non-finite training is a collapsed result, N run at a time, the report is
rewritten after every run, and runs of different commits or weights are refused by name. The real trainer runs
in tests/e2e/test_study_job.py."""

from __future__ import annotations

import calendar
import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from sfpo_rl.experiments import runner
from sfpo_rl.experiments.records import (
    HALTED,
    MixedRunsError,
    RunRecord,
    check_same_code,
    read_curves,
    read_run,
    write_curves,
)
from sfpo_rl.experiments.study import load_study, plan
from sfpo_rl.trainer.learning_curve import Curve
from sfpo_rl.utils.provenance import git_state

pytestmark = pytest.mark.timeout(300)  # each study command composes its arms' configs and redraws its figures

HERE = git_state(Path(runner.__file__).resolve().parent)["commit"]
STUDY = {
    "name": "tiny",
    "steps": 4,
    "learning_rates": ["1e-3"],
    "seeds": 2,
    "arms": {"grpo": {"overrides": ["algorithm=grpo"]}, "sfpo": {"overrides": ["algorithm=sfpo"]}},
    "comparisons": [
        {
            "title": "SFPO vs GRPO",
            "kind": "same_lr",
            "baseline": "grpo",
            "endpoints": ["final", "rollouts"],
            "decide": ["final"],
        },  # fmt: skip
    ],
}


def write_study(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "runs": str(tmp_path / "runs"), "out": "report", **changes}))
    return path


def fake_run(
    run_dir: Path,
    accs,
    commit=HERE,
    weights="w0",
    halted=False,
    load=1.5,
    started="2026-12-05T10:00:00Z",
    steps=4,
):
    """What a run of `steps` steps (validated every 2 steps and before training) leaves in its directory; `accs`
    are its validation accuracies, the last repeated as needed."""
    accs = [*accs, *[accs[-1]] * steps]
    rows = [{"step": 0, "val/acc": accs[0], "val/acc_se": 0.01}]
    for step in range(1, steps + 1):
        row = {"step": step, "perf/rollouts": 32 * step, "perf/train_seconds": 2.0 * step, "reward/mean": 0.1,
               "perf/load_avg_1m": load + step, "train/nonfinite_in_a_row": 0,
               "sampling/zero_adv_group_frac": step / 10}  # fmt: skip
        if step % 2 == 0:
            row.update({"val/acc": accs[step // 2], "val/acc_se": 0.01})
        rows.append(row)
    if halted:  # the trainer stopped it after step 3: 2 non-finite steps in a row (the limit below)
        rows = rows[:4]
        rows[-1]["train/nonfinite_in_a_row"] = 2
        cfg = "trainer:\n  total_steps: 4\n  val_every: 2\n  val_before_train: true\n  max_consecutive_nonfinite: 2\n"
        (run_dir / "config.yaml").write_text(cfg)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    launch = {"commit": commit, "dirty": False, "config_sha256": "c", "weights_sha256": weights, "host": "h",
              "cpu_count": 2, "started_at": started}  # fmt: skip
    (run_dir / "provenance.jsonl").write_text(json.dumps(launch) + "\n")
    if not halted:
        (run_dir / "summary.json").write_text("{}")


def accs_of(name: str) -> list[float]:
    base = 0.3 if name.startswith("sfpo") else 0.2
    return [0.1, base, base + 0.1 + 0.01 * int(name[-1])]


class FakeTrainer:
    def __init__(self, fail=(), halt=(), delay=0.0):
        self.trained, self.fail, self.halt, self.delay = [], set(fail), set(halt), delay
        self.active = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, run, run_dir: Path, study) -> int:
        with self.lock:
            self.trained.append(run.name)
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        if run.name in self.fail:
            return 1
        fake_run(run_dir, accs_of(run.name), halted=run.name in self.halt, steps=study.steps)
        return 3 if run.name in self.halt else 0


def test_a_study_runs_reports_after_each_run_and_reuses_finished_runs(tmp_path, capsys):
    path = write_study(tmp_path)
    train = FakeTrainer(fail={"sfpo_lr1e-3_seed0"})
    assert runner.main([str(path)], train=train) == 1  # one run failed; the others went on
    out = capsys.readouterr().out
    assert train.trained == [
        "grpo_lr1e-3_seed0",
        "sfpo_lr1e-3_seed0",
        "grpo_lr1e-3_seed1",
        "sfpo_lr1e-3_seed1",
    ]
    assert "tiny: 4 runs planned, 0 done, 4 to go" in out
    assert "FAILED sfpo_lr1e-3_seed0 (exit 1)" in out and "the other runs go on" in out
    assert "done: grpo_lr1e-3_seed0" in out and "1 of 4 done, 3 to go, about" in out
    assert out.count("report: ") == 4 + 1  # after each run, and at the end
    assert "1 run(s) failed: sfpo_lr1e-3_seed0; run the same command again to retry them" in out
    report = tmp_path / "report"
    assert {p.name for p in report.iterdir()} == {
        "report.md", "report.json", "curves.json", "val_acc_vs_rollouts.png", "val_acc_vs_seconds.png",
    }  # fmt: skip
    assert set(read_curves(report / "curves.json")) == {
        "grpo_lr1e-3_seed0",
        "grpo_lr1e-3_seed1",
        "sfpo_lr1e-3_seed1",
    }

    again = FakeTrainer()
    assert runner.main([str(path)], train=again) == 0
    assert again.trained == ["sfpo_lr1e-3_seed0"]  # only the failed run
    assert "4 runs planned, 3 done, 1 to go" in capsys.readouterr().out
    summary = json.loads((report / "report.json").read_text())
    assert summary["comparisons"][0]["rows"]["sfpo@1e-3"]["final"]["estimate"] == pytest.approx(0.1)
    record = read_curves(report / "curves.json")["sfpo_lr1e-3_seed0"]
    assert record.launches[0]["commit"] == HERE and record.load_avg_1m == {"mean": 4.0, "max": 5.5}


def test_runs_recorded_in_the_curves_file_count_as_finished_and_stay_in_the_report(tmp_path, capsys):
    path = write_study(tmp_path)
    runs_dir = tmp_path / "first_machine"
    train = FakeTrainer()
    assert runner.main([str(path), "--runs", str(runs_dir)], train=train) == 0
    # Another machine: no run directories, only the committed curves file.
    elsewhere = FakeTrainer()
    assert runner.main([str(path), "--runs", str(tmp_path / "second_machine")], train=elsewhere) == 0
    assert elsewhere.trained == [] and "4 runs planned, 4 done, 0 to go" in capsys.readouterr().out
    assert json.loads((tmp_path / "report/report.json").read_text())["provenance"]["runs"] == 4


def test_runs_of_a_shorter_budget_are_continued_not_reused(tmp_path, capsys):
    assert runner.main([str(write_study(tmp_path))], train=FakeTrainer()) == 0
    longer = FakeTrainer()  # the file now asks for 6 steps; the runs validated last at step 4
    assert runner.main([str(write_study(tmp_path, steps=6))], train=longer) == 0
    assert len(longer.trained) == 4 and "4 runs planned, 0 done, 4 to go" in capsys.readouterr().out


def test_parallel_runs_go_n_at_a_time_in_plan_order(tmp_path):
    path = write_study(tmp_path, seeds=3)
    train = FakeTrainer(delay=0.3)
    assert runner.main([str(path), "--parallel", "2"], train=train) == 0
    assert train.most == 2 and len(train.trained) == 6
    assert train.trained[:2] == ["grpo_lr1e-3_seed0", "sfpo_lr1e-3_seed0"]


def test_a_report_that_fails_between_runs_does_not_stop_the_runs(tmp_path, monkeypatch, capsys):
    write, calls = runner.write_report, []

    def flaky(*args, **kwargs):  # the first report after a run fails, as Stage 1's did on a JSON type
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("not JSON serializable")
        return write(*args, **kwargs)

    monkeypatch.setattr(runner, "write_report", flaky)
    train = FakeTrainer()
    assert runner.main([str(write_study(tmp_path))], train=train) == 0
    assert len(train.trained) == 4
    out = capsys.readouterr().out
    assert "report not written (TypeError: not JSON serializable); the runs go on" in out
    assert json.loads((tmp_path / "report/report.json").read_text())["provenance"]["runs"] == 4

    def broken(*args, **kwargs):
        raise TypeError("final")

    monkeypatch.setattr(runner, "write_report", broken)
    with pytest.raises(TypeError, match="final"):  # the final report is the answer: its fault is not hidden
        runner.main([str(write_study(tmp_path))], train=FakeTrainer())


def test_a_run_stopped_for_non_finite_training_is_a_collapsed_result_not_a_failure(tmp_path, capsys):
    path = write_study(tmp_path, collapse_at=10)
    train = FakeTrainer(halt={"sfpo_lr1e-3_seed1"})
    assert runner.main([str(path)], train=train) == 0
    assert (
        "stopped: halted (non-finite training), counted as collapsed: sfpo_lr1e-3_seed1"
        in capsys.readouterr().out
    )
    record = read_run(tmp_path / "runs/sfpo_lr1e-3_seed1", "sfpo", "1e-3", 1)
    assert record.status == HALTED
    # Validated at 0 and 2 before the stop; step 4 is continued at accuracy 0 with rollouts at the run's rate.
    assert record.curve.steps == [0, 2, 4] and record.curve.acc == [0.1, 0.3, 0.0]
    assert record.curve.rollouts == [0.0, 64.0, 128.0] and record.curve.seconds == [0.0, 4.0, 4.0]
    summary = json.loads((tmp_path / "report/report.json").read_text())
    assert summary["runs"]["sfpo_lr1e-3_seed1"]["drop"] == pytest.approx(30.0)  # its peak: it lost everything
    assert "Stopped for non-finite training" in (tmp_path / "report/report.md").read_text()
    assert runner.main([str(path)], train=FakeTrainer()) == 0  # not retried


def test_wall_clock_and_load_are_read_from_the_run(tmp_path):
    fake_run(tmp_path, [0.1, 0.2, 0.3], load=0.5, started="2026-12-05T10:00:00Z")
    end = calendar.timegm((2026, 12, 5, 10, 7, 30, 0, 0, 0))  # 7.5 minutes after the start
    os.utime(tmp_path / "summary.json", (end, end))
    os.utime(tmp_path / "metrics.jsonl", (end - 5, end - 5))
    record = read_run(tmp_path, "grpo", "1e-3", 0)
    assert record.wall_clock_s == pytest.approx(450.0) and record.load_avg_1m == {"mean": 3.0, "max": 4.5}
    (tmp_path / "summary.json").unlink()
    assert read_run(tmp_path, "grpo", "1e-3", 0) is None  # still running (or killed): not done


def record(name: str, commit: str = "a" * 40, weights: str = "w0", launches: int = 1, config: str = "c"):
    arm, rest = name.split("_lr")
    lr, seed = rest.split("_seed")
    launch = {"commit": commit, "weights_sha256": weights, "config_sha256": config}
    return RunRecord(arm, lr, int(seed), Curve(), launches=[dict(launch) for _ in range(launches)])


def test_runs_of_different_commits_or_weights_are_refused_by_name():
    same = [record("grpo_lr1e-3_seed0"), record("sfpo_lr1e-3_seed0", launches=2)]
    assert check_same_code(same) == []
    odd = [*same, record("sfpo_lr1e-3_seed1", commit="b" * 40), record("grpo_lr1e-3_seed1", weights="w1")]
    with pytest.raises(MixedRunsError) as err:
        check_same_code(odd)
    message = str(err.value)
    assert "commit aaaaaaaaaaaa, weights w0: 2 run(s)\n" in message
    assert "commit bbbbbbbbbbbb, weights w0: 1 run(s): sfpo_lr1e-3_seed1" in message
    assert "commit aaaaaaaaaaaa, weights w1: 1 run(s): grpo_lr1e-3_seed1" in message
    assert "--allow-mixed-commits" in message
    (warning,) = check_same_code(odd, allow_mixed=True)
    assert "sfpo_lr1e-3_seed1" in warning and "grpo_lr1e-3_seed1" in warning
    resumed_elsewhere = record("grpo_lr1e-3_seed0")
    resumed_elsewhere.launches[0]["config_sha256"] = "other"
    resumed_elsewhere.launches.append(dict(same[0].launches[0]))
    with pytest.raises(
        MixedRunsError, match="runs whose launches differ in commit, weights or config: grpo_lr1e-3_seed0"
    ):
        check_same_code([resumed_elsewhere])


def test_the_command_refuses_mixed_runs_before_training_and_in_the_analysis(tmp_path, capsys):
    path = write_study(tmp_path)
    runs_dir = tmp_path / "runs"
    for name in ("grpo_lr1e-3_seed0", "sfpo_lr1e-3_seed0"):
        (runs_dir / name).mkdir(parents=True)
        fake_run(runs_dir / name, accs_of(name), commit="0" * 40)  # made by another commit
    train = FakeTrainer()
    assert runner.main([str(path)], train=train) == 2 and train.trained == []
    err = capsys.readouterr().err
    assert "the 2 runs done so far were made by commit(s) 000000000000, this checkout is" in err
    assert runner.main([str(path), "--allow-mixed-commits"], train=train) == 0 and len(train.trained) == 2
    capsys.readouterr()
    assert runner.main([str(path), "--analyze-only"]) == 2
    err = capsys.readouterr().err
    assert f"commit {HERE[:12]}, weights w0: 2 run(s): grpo_lr1e-3_seed1, sfpo_lr1e-3_seed1" in err
    assert runner.main([str(path), "--analyze-only", "--allow-mixed-commits"]) == 0
    assert "analysed together (--allow-mixed-commits)" in (tmp_path / "report/report.md").read_text()


def test_the_curves_file_round_trips_curves_and_provenance(tmp_path):
    study = load_study(write_study(tmp_path))
    found = []
    for run in plan(study):
        (tmp_path / run.name).mkdir()
        fake_run(tmp_path / run.name, accs_of(run.name))
        found.append(read_run(tmp_path / run.name, run.arm.name, run.lr.text, run.seed))
    write_curves(tmp_path / "curves.json", found)
    again = read_curves(tmp_path / "curves.json")
    assert [again[r.name] for r in found] == found
    assert list(json.loads((tmp_path / "curves.json").read_text())) == ["grpo@1e-3", "sfpo@1e-3"]


def test_step_metrics_are_read_from_the_runs_kept_in_the_curves_file_and_reported(tmp_path, capsys):
    metric = {"metric": "sampling/zero_adv_group_frac", "label": "zero-advantage share", "percent": True,
              "plot": True}  # fmt: skip
    path = write_study(tmp_path, step_metrics={"zero_adv": metric})
    assert runner.main([str(path)], train=FakeTrainer()) == 0
    report = tmp_path / "report"
    assert (report / "per_step_zero_adv.png").is_file()
    record = read_curves(report / "curves.json")["sfpo_lr1e-3_seed1"]
    assert record.curve.step_values == {"sampling/zero_adv_group_frac": [0.1, 0.2, 0.3, 0.4]}
    # Every run logs 0.1 .. 0.4 over steps 1-4: mean 25%, every seed alike.
    line = "| grpo@1e-3 | 2 | 25.0% [25.0%, 25.0%] | 40.0% |"
    assert line in (report / "report.md").read_text()
    # Another machine, only the curves file: the same report.
    assert runner.main([str(path), "--runs", str(tmp_path / "elsewhere")], train=FakeTrainer()) == 0
    assert line in (report / "report.md").read_text()
    capsys.readouterr()
    assert runner.main([str(path), "--check"]) == 0
    assert (
        "per step (descriptive): sampling/zero_adv_group_frac (zero-advantage share) for grpo, sfpo: steps 1-4"
        in (capsys.readouterr().out)
    )


def test_a_study_without_step_metrics_writes_its_curves_file_as_before(tmp_path):
    study = load_study(write_study(tmp_path))
    run = plan(study)[0]
    (tmp_path / run.name).mkdir()
    fake_run(tmp_path / run.name, accs_of(run.name))
    write_curves(tmp_path / "curves.json", [read_run(tmp_path / run.name, "grpo", "1e-3", 0)])
    assert "step_values" not in json.loads((tmp_path / "curves.json").read_text())["grpo@1e-3"]["0"]


def test_a_study_run_is_a_plain_training_job_with_the_runs_overrides(tmp_path, monkeypatch):
    seen = {}

    class Done:
        def __init__(self, cmd, stdout, stderr):
            seen["cmd"] = cmd

        def wait(self):
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", Done)
    study = load_study(write_study(tmp_path, overrides=["rollout.n=4"]))
    run = plan(study)[3]
    assert runner.Trainers().run(run, tmp_path, study) == 0
    cmd = seen["cmd"]
    assert cmd[1:3] == ["-m", "sfpo_rl.trainer.main"] and f"trainer.run_dir={tmp_path}" in cmd
    assert cmd[-6:] == [
        "rollout.n=4", "algorithm=sfpo", "actor.optimizer.lr=1e-3", "trainer.seed=1", "data.seed=1", "trainer.total_steps=4",
    ]  # fmt: skip
    assert (tmp_path / "train.log").is_file()
