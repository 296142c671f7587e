"""The benchmarks' shared plumbing: number formatting, tables, the JSON result and the synthetic workload."""

from __future__ import annotations

import json

import pytest
import torch

from sfpo_rl.bench.common import bench_main, fmt_value, format_table, row, summary_table
from sfpo_rl.bench.workload import synthetic_rollouts


@pytest.mark.parametrize(
    "value, text",
    [
        (None, "n/a"),
        (12345, "12,345"),
        (0.012345, "0.0123"),
        (1.23456, "1.23"),
        (4567.8, "4,568"),
        ("x", "x"),
    ],
)
def test_fmt_value(value, text):
    assert fmt_value(value) == text


def test_format_table_pads_columns_and_rejects_ragged_rows():
    table = format_table(["name", "v"], [["a", 1.5], ["longer", 10000]])
    assert table.splitlines() == [
        "| name   | v      |",
        "|--------|--------|",
        "| a      | 1.5    |",
        "| longer | 10,000 |",
    ]
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 headers"):
        format_table(["name", "v"], [["a"]])


def test_summary_table_names_the_benchmark_of_each_row():
    rows = [{**row("ratio", 1.02, "x", "target <= 1.03"), "benchmark": "sfpo_overhead"}, row("peak", 3.0)]
    lines = summary_table(rows, benchmark="other").splitlines()
    assert lines[0].split("|")[1].strip() == "benchmark"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["sfpo_overhead", "other"]


def test_bench_main_prints_and_writes_the_result(tmp_path, capsys):
    def add_arguments(parser):
        parser.add_argument("--size", type=int, default=3)

    def run(args):
        return {"rows": [row("size", args.size, "items")], "tables": {"t": (["a"], [[args.size * 2]])}}

    result = bench_main(
        "demo", "a demo", add_arguments, run, ["--out", str(tmp_path), "--quick", "--size", "5"]
    )
    written = json.loads((tmp_path / "demo.json").read_text())
    assert written["rows"] == [{"metric": "size", "value": 5, "unit": "items", "note": ""}]
    assert written["quick"] is True and written["args"]["size"] == 5 and "machine" in written
    assert result["benchmark"] == "demo"
    out = capsys.readouterr().out
    assert "### demo: t" in out and "| 10 |" in out and "noisy" in out


def test_synthetic_rollouts_have_the_rollout_engines_padded_layout():
    batch = synthetic_rollouts(vocab_size=50, pad_id=1, rows=6, prompt_width=8, response_width=10, seed=3)
    prompt_mask, response_mask = batch["attention_mask"][:, :8], batch["response_mask"]
    assert torch.equal(batch["attention_mask"][:, 8:], response_mask)
    prompt_lens, response_lens = prompt_mask.sum(-1), response_mask.sum(-1)
    assert ((prompt_lens >= 4) & (prompt_lens <= 8)).all() and (
        (response_lens >= 5) & (response_lens <= 10)
    ).all()
    for i in range(6):  # prompts left-padded, responses right-padded, pads where the mask is 0
        p, r = int(prompt_lens[i]), int(response_lens[i])
        assert prompt_mask[i, 8 - p :].all() and not prompt_mask[i, : 8 - p].any()
        assert response_mask[i, :r].all() and not response_mask[i, r:].any()
        assert (batch["input_ids"][i][batch["attention_mask"][i] == 0] == 1).all()
        assert batch["position_ids"][i, -10 + r - 1] == p + r - 1  # the last real token's position
    assert set(batch["advantages"][response_mask.bool()].tolist()) <= {-1.0, 1.0}
    assert (batch["advantages"][~response_mask.bool()] == 0).all()


def test_runner_rejects_an_unknown_benchmark_by_name(capsys):
    from sfpo_rl.bench.__main__ import BENCHMARKS, parse_args

    assert parse_args(["--only", "throughput, rollout"]).only == ["throughput", "rollout"]
    assert parse_args([]).only == list(BENCHMARKS)
    with pytest.raises(SystemExit):
        parse_args(["--only", "rollout,speed"])
    assert "--only: unknown benchmark 'speed'" in capsys.readouterr().err
