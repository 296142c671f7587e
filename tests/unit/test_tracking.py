import math

import pytest

from sfpo_rl.trainer.tracking import ConsoleSink, Tracker, read_jsonl


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
