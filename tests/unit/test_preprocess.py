"""Preprocessing of the public math datasets, each on a tiny hand-written file in its public format: the output
loads as a prompt dataset, its ground truths verify against the reference solutions, bad inputs fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sfpo_rl.data.dataset import load_records
from sfpo_rl.data.io import DataError, write_records
from sfpo_rl.data.preprocess import BOXED_INSTRUCTION, DAPO_PREFIX, DAPO_SUFFIX, convert, main
from sfpo_rl.rewards import get_verifier

REPO = Path(__file__).resolve().parents[2]

# openai/gsm8k main/{train,test}-00000-of-00001.parquet (and the GitHub release's jsonl): question, answer.
GSM8K = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
        "May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
        "altogether in April and May.\n#### 72",
    },
    {"question": "A house costs $1,200 more than ... How much?", "answer": "It costs $1,250.\n#### 1,250"},
    {"question": "No final answer here.", "answer": "Just text."},
]

# The original MATH release: MATH/{train,test}/<subject>/<n>.json with problem, level, type, solution.
MATH_FILES = {
    "algebra/1.json": {
        "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
        "level": "Level 1",
        "type": "Algebra",
        "solution": "We have $\\frac{1}{2} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$.",
    },
    "geometry/7.json": {
        "problem": "Find the side.",
        "level": "Level ?",
        "type": "Geometry",
        "solution": "The side is $\\boxed{3\\sqrt{13}}$.",
    },
    "geometry/8.json": {
        "problem": "Unboxed.",
        "level": "Level 2",
        "type": "Geometry",
        "solution": "It is 4.",
    },
}

# HuggingFaceH4/MATH-500 test.jsonl: problem, solution, answer, subject, level, unique_id.
MATH500 = [
    {
        "problem": "Solve $x^2 < 4$.",
        "solution": "So $x \\in \\boxed{(-2, 2)}$.",
        "answer": "(-2,2)",
        "subject": "Algebra",
        "level": 2,
        "unique_id": "test/algebra/1.json",
    }
]

# BytedTsinghua-SIA/DAPO-Math-17k data/dapo-math-17k.parquet: verl-style rows, each problem repeated.
DAPO = [
    {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": f"{DAPO_PREFIX}Compute $2^{{10}}$.{DAPO_SUFFIX}"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": "1024", "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": "9a9b6eb4-a1cb-49d1-8c1e-62eaf2f74079"},
    }
] * 3 + [
    {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": f"{DAPO_PREFIX}Find $k$ if $k+1=35$.{DAPO_SUFFIX}"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": "34", "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": "b426d104-244d-4831-a2c4-cd756b61700a"},
    }
]

# Maxwell-Jia/AIME_2024 (ID, Problem, Solution, Answer) and AI-MO/aimo-validation-aime (id, problem, ...).
AIME_CAPITALISED = [
    {"ID": "2024-I-1", "Problem": "Every morning Aya ...", "Solution": "... 204", "Answer": 204}
]
AIME_LOWER = [{"id": 60, "problem": "Let $x$ be ...", "solution": "... $\\boxed{25}$", "answer": "25"}]


def contents(record: dict) -> str:
    assert record["prompt"][0]["role"] == "user" and len(record["prompt"]) == 1
    return record["prompt"][0]["content"]


def test_gsm8k(tmp_path):
    source = write_records(GSM8K, tmp_path / "train-00000-of-00001.parquet")
    result = convert("gsm8k", [source])
    assert [r["ground_truth"] for r in result.records] == ["72", "1250"]
    assert len(result.skipped) == 1 and "row 2: no '####' final answer" in result.skipped[0]
    first = result.records[0]
    assert contents(first).startswith("Natalia sold clips") and contents(first).endswith('after "####".')
    assert first["data_source"] == "openai/gsm8k"
    assert first["extra_info"]["split"] == "train" and first["extra_info"]["index"] == 0
    verify = get_verifier(first["data_source"])
    # The dataset's own worked solution scores as correct against the extracted ground truth.
    assert all(verify(r["extra_info"]["solution"], r["ground_truth"])["acc"] for r in result.records)


def test_math_from_the_original_folder_layout(tmp_path):
    for name, row in MATH_FILES.items():
        (tmp_path / "MATH" / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "MATH" / "train" / name).write_text(json.dumps(row))
    result = convert("math", [tmp_path / "MATH" / "train"])
    assert [r["ground_truth"] for r in result.records] == ["\\frac{3}{4}", "3\\sqrt{13}"]
    assert [r["extra_info"]["level"] for r in result.records] == [1, None]
    assert result.records[0]["extra_info"]["subject"] == "Algebra"
    assert len(result.skipped) == 1 and "8.json: no 'answer' field and no \\boxed{}" in result.skipped[0]
    assert contents(result.records[0]).endswith(BOXED_INSTRUCTION)
    verify = get_verifier(result.records[0]["data_source"])
    assert all(verify(r["extra_info"]["solution"], r["ground_truth"])["acc"] for r in result.records)


def test_math500_uses_its_answer_column(tmp_path):
    source = write_records(MATH500, tmp_path / "test.jsonl")
    (record,) = convert("math500", [source]).records
    assert record["ground_truth"] == "(-2,2)"
    assert record["data_source"] == "HuggingFaceH4/MATH-500"
    assert record["extra_info"] == {
        "split": "test",
        "index": 0,
        "solution": MATH500[0]["solution"],
        "level": 2,
        "subject": "Algebra",
        "id": "test/algebra/1.json",
    }
    assert get_verifier(record["data_source"])(MATH500[0]["solution"], record["ground_truth"])["acc"]


def test_dapo_math_dedupes_and_rewraps_the_prompt(tmp_path):
    source = write_records(DAPO, tmp_path / "dapo-math-17k.parquet")
    result = convert("dapo_math", [source])
    assert result.duplicates == 2
    assert [r["ground_truth"] for r in result.records] == ["1024", "34"]
    assert contents(result.records[1]) == f"Find $k$ if $k+1=35$.\n\n{BOXED_INSTRUCTION}"
    assert result.records[1]["extra_info"]["id"] == "b426d104-244d-4831-a2c4-cd756b61700a"
    assert result.records[0]["data_source"] == "math_dapo"
    assert get_verifier("math_dapo")("so $\\boxed{1024}$", "1024")["acc"]
    assert len(convert("dapo_math", [source], dedupe=False).records) == 4


def test_aime_accepts_either_capitalisation(tmp_path):
    a = write_records(AIME_CAPITALISED, tmp_path / "aime_2024.jsonl")
    b = write_records(AIME_LOWER, tmp_path / "aime_validation.parquet")
    result = convert("aime", [a, b], data_source="aime_2024")
    assert [r["ground_truth"] for r in result.records] == ["204", "25"]
    assert [r["extra_info"]["id"] for r in result.records] == ["2024-I-1", "60"]
    assert {r["data_source"] for r in result.records} == {"aime_2024"}
    assert get_verifier("aime_2024")("$\\boxed{204}$", "204")["acc"]


def test_aime_answers_are_integers_as_written_in_any_copy(tmp_path):
    rows = [
        {"problem": "p1", "answer": "073"},
        {"problem": "p2", "answer": 204.0},
        {"problem": "p3", "answer": 0},
    ]
    result = convert("aime", [write_records(rows, tmp_path / "aime.jsonl")])
    assert [r["ground_truth"] for r in result.records] == ["73", "204", "0"]


@pytest.mark.parametrize(
    ("dataset", "rows", "message"),
    [
        # MATH rows given to the AIME converter (before: accepted when they had an answer-like column).
        ("aime", MATH500, "not in the aime format: .*the fields level, subject, unique_id belong to another"),
        ("aime", list(MATH_FILES.values()), "not in the aime format: .*found level, problem, solution, type"),
        # Problem / answer rows whose answer is a worked solution (before: written as the ground truth).
        (
            "aime",
            [{"problem": "Find it.", "answer": "We have $x = 3$, so the answer is $\\boxed{3}$."}],
            "line 1: the answer field holds 'We have .*', not an AIME answer \\(an integer from 0 to 999\\); "
            "fields found: problem, answer",
        ),
        ("aime", [{"question": GSM8K[0]["question"], "answer": GSM8K[0]["answer"]}], "not an AIME answer"),
        ("aime", [{"problem": "p", "answer": "1000"}], "holds '1000', not an AIME answer"),
        (
            "gsm8k",
            MATH500,
            "not in the gsm8k format: expected the fields question, answer; found answer, level",
        ),
        (
            "math500",
            [{"problem": "p", "solution": "s"}],
            "expected the fields problem, solution, answer",
        ),
        ("dapo_math", MATH500, "not in the dapo_math format: .*the fields level, subject, unique_id"),
    ],
)
def test_a_file_of_another_shape_is_refused_not_guessed(tmp_path, dataset, rows, message):
    with pytest.raises(DataError, match=message):
        convert(dataset, [write_records(rows, tmp_path / "input.jsonl")])


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_command_line_writes_loadable_files(tmp_path, suffix, capsys):
    source = write_records(GSM8K, tmp_path / "test.jsonl")
    out = tmp_path / f"gsm8k_test{suffix}"
    assert main(["gsm8k", str(source), "-o", str(out), "--split", "test", "--limit", "1"]) == 0
    assert "wrote 1 records" in capsys.readouterr().out
    (record,) = load_records(out)
    assert (record.ground_truth, record.data_source, record.extra_info["split"]) == (
        "72",
        "openai/gsm8k",
        "test",
    )
    assert isinstance(record.prompt, list) and record.prompt[0]["content"].startswith("Natalia")


def test_recipe_script_runs(tmp_path):
    source = write_records(MATH500, tmp_path / "test.jsonl")
    out = tmp_path / "math500.parquet"
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes/preprocess/convert.py"), "math500", str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert load_records(out)[0].ground_truth == "(-2,2)"


def test_bad_inputs_fail_clearly(tmp_path, capsys):
    wrong = write_records([{"question": "q", "solution": "s"}], tmp_path / "wrong.jsonl")
    with pytest.raises(
        DataError,
        match="wrong.jsonl: not in the gsm8k format: expected the fields question, answer; found question, "
        "solution; the fields solution belong to another dataset",
    ):
        convert("gsm8k", [wrong])
    with pytest.raises(
        DataError, match="wrong.jsonl: not in the math format: expected the fields problem, solution"
    ):
        convert("math", [wrong])
    with pytest.raises(
        DataError, match="expected the fields problem/question, answer or prompt, reward_model; found answer$"
    ):
        convert("aime", [write_records([{"answer": 3}], tmp_path / "a.jsonl")])
    one_lacks = write_records([GSM8K[0], {"question": "q"}], tmp_path / "one_lacks.jsonl")
    with pytest.raises(DataError, match="one_lacks.jsonl, line 2: missing field 'answer'"):
        convert("gsm8k", [one_lacks])
    bad_prompt = write_records(
        [{"prompt": "text", "reward_model": {"ground_truth": "1"}}], tmp_path / "d.jsonl"
    )
    with pytest.raises(DataError, match="d.jsonl, line 1: field 'prompt' must be a list of chat messages"):
        convert("dapo_math", [bad_prompt])
    only_skipped = write_records([GSM8K[2]], tmp_path / "skip.jsonl")
    with pytest.raises(DataError, match="no usable rows in .*skip.jsonl \\(1 skipped\\)"):
        convert("gsm8k", [only_skipped])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder holds no .json files"):
        convert("math", [tmp_path / "empty"])
    assert main(["gsm8k", str(tmp_path / "missing.parquet"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "missing.parquet: no such file" in capsys.readouterr().err
