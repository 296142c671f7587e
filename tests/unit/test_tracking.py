import math

import pytest

from sfpo_rl.trainer.tracking import ConsoleSink, Tracker, due, eta_seconds, read_jsonl, validations_after


def test_jsonl_records_every_step_and_drops_non_finite(tmp_path):
    t = Tracker(tmp_path, loggers=[])
    t.log({"reward/mean": 0.5, "actor/pg_loss": math.nan}, step=1)
    t.log({"reward/mean": 0.75}, step=2)
    t.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 1, "reward/mean": 0.5, "actor/pg_loss": None}, {"step": 2, "reward/mean": 0.75}]


def test_resume_truncates_steps_after_the_checkpoint(tmp_path):
    t = Tracker(tmp_path, loggers=[])
    for step in range(1, 6):
        t.log({"x": step}, step=step)
    t.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "x"')  # a half-written line from a killed run
    t = Tracker(tmp_path, loggers=[], resume_from_step=3)
    t.log({"x": 40}, step=4)
    t.close()
    assert [(r["step"], r["x"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 40),
    ]


def test_console_and_tensorboard(tmp_path, capsys):
    t = Tracker(tmp_path, loggers=["console", "tensorboard"])
    t.log({"reward/mean": 0.25, "sfpo/active": 1}, step=7)
    t.close()
    out = capsys.readouterr().out
    assert "step 7" in out and "reward=0.25" in out and "sfpo=1" in out
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_unknown_logger_is_named():
    with pytest.raises(ValueError, match=r"trainer.logger.*\['nope'\]"):
        Tracker("/tmp/unused", loggers=["console", "nope"])


def test_console_shows_position_and_time_left(capsys):
    ticks = iter([100.0, 110.0, 130.0])  # steps 4, 5, 6 logged at these times: 15 s per step
    sink = ConsoleSink(total_steps=10, clock=lambda: next(ticks))
    for step in (4, 5, 6):
        sink.log({"reward/acc": 0.5}, step=step)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step 4/10 | acc=0.5"  # no estimate from a single point
    assert lines[1].endswith("eta 50s") and lines[2].endswith("eta 1m00s")


@pytest.mark.parametrize("total_steps, every", [(40, 5), (42, 5), (7, 3), (10, 1), (10, 20), (10, 0)])
def test_validations_after_counts_the_steps_that_validate(total_steps, every):
    for step in range(total_steps + 1):
        expected = sum(due(s, every, total_steps) for s in range(step + 1, total_steps + 1))
        assert validations_after(step, total_steps, every) == expected


def test_due_matches_the_trainer_rule():
    assert [s for s in range(1, 13) if due(s, 5, 12)] == [5, 10, 12]
    assert not any(due(s, 0, 12) for s in range(1, 13))


def test_eta_adds_the_remaining_validations():
    # The default run at step 1: 39 steps of 5 s left and validations due after steps 5, 10, ..., 40 (8).
    assert eta_seconds(1, 40, 5.0, 5, 30.0) == 39 * 5 + 8 * 30
    assert eta_seconds(40, 40, 5.0, 5, 30.0) == 0
    assert eta_seconds(3, 10, 2.0, 5, None) == 14  # validation not timed yet: left out
    assert eta_seconds(3, 10, 2.0, 0, 30.0) == 14  # no validation in this run


def test_console_eta_counts_validation_time(capsys):
    """Validation before training (30 s), then 5 s steps with a 30 s validation after step 5, of 10 steps."""
    ticks = iter([30.0, 35.0, 40.0, 45.0, 50.0, 85.0, 90.0])
    sink = ConsoleSink(total_steps=10, val_every=5, clock=lambda: next(ticks))
    sink.log({"val/acc": 0.25, "timing/validate": 30.0}, step=0)
    for step in range(1, 7):
        sink.log({"timing/validate": 30.0} if step == 5 else {}, step=step)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step 0/10 | val_acc=0.25"
    assert lines[1].endswith("eta 1m45s")  # 9 steps x 5 s + 2 validations x 30 s
    assert lines[5].endswith("eta 55s")  # after step 5's validation: 5 x 5 s + 1 x 30 s
    assert lines[6].endswith("eta 50s")


def test_console_eta_says_when_validation_is_not_timed_yet(capsys):
    ticks = iter([0.0, 5.0])
    sink = ConsoleSink(total_steps=10, val_every=5, clock=lambda: next(ticks))
    sink.log({}, step=1)
    sink.log({}, step=2)
    assert capsys.readouterr().out.splitlines()[1].endswith("eta >40s")  # 8 x 5 s, plus validations
