"""Turn the public math datasets (files the user downloaded) into the loader's format.

Each output record has `prompt` (one user chat message: the problem and an instruction to box the final
answer), `ground_truth`, `data_source` (which selects the verifier) and `extra_info` (split, index and what the
source has besides: level, subject, id, reference solution). Nothing is fetched; the input formats accepted
are the public ones listed in recipes/preprocess/README.md. A file of another shape is refused, naming the
fields expected and found, rather than converted by guessing (an AIME converter given MATH rows would write
worked solutions as ground truths). Run as `python -m sfpo_rl.data.preprocess` or
`python recipes/preprocess/convert.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sfpo_rl.data.io import DataError, read_rows, write_records
from sfpo_rl.rewards.answer import last_boxed

BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
# DAPO-Math-17K wraps each problem in an "Answer: $Answer" instruction; it is replaced by the boxed one.
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


class SkipRow(Exception):
    """A row without a usable answer: it is left out and counted, not an error."""


@dataclass(frozen=True)
class Converted:
    records: list[dict[str, Any]]
    skipped: list[str]  # "file, row N: why" for every row left out
    duplicates: int


def user_prompt(problem: str, instruction: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{problem.strip()}\n\n{instruction}"}]


def pick(row: dict[str, Any], names: Sequence[str], where: str) -> Any:
    """The first of `names` present (case-insensitive) and not null, or a DataError listing what exists."""
    lowered = {str(key).lower(): value for key, value in row.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value is not None:
            return value
    raise DataError(
        f"{where}: missing field {' or '.join(repr(n) for n in names)} (fields present: {', '.join(sorted(row))})"
    )


def _text(value: Any, name: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{where}: field '{name}' must be text or a number, got {value!r}")
    return str(value).strip()


def gsm8k_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """openai/gsm8k: question, answer ("<worked solution>\\n#### 72")."""
    question = _text(pick(row, ["question"], where), "question", where)
    answer = _text(pick(row, ["answer"], where), "answer", where)
    if "####" not in answer:
        raise SkipRow("no '####' final answer in field 'answer'")
    final = answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "")
    if not final:
        raise SkipRow("empty final answer after '####'")
    return {
        "prompt": user_prompt(question, GSM8K_INSTRUCTION),
        "ground_truth": final,
        "extra_info": {"question": question, "solution": answer},
    }


def math_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Hendrycks MATH (problem, solution, level "Level 3", type) and MATH-500 (problem, solution, answer,
    subject, level 3, unique_id): the answer column when there is one, else the solution's last \\boxed{}."""
    problem = _text(pick(row, ["problem"], where), "problem", where)
    solution = _text(pick(row, ["solution"], where), "solution", where)
    lowered = {str(key).lower(): value for key, value in row.items()}
    answer = lowered.get("answer")
    answer = _text(answer, "answer", where) if answer is not None else last_boxed(solution)
    if not answer:
        raise SkipRow("no 'answer' field and no \\boxed{} answer in 'solution'")
    extra: dict[str, Any] = {"solution": solution}
    level = lowered.get("level")
    if level is not None:
        digits = "".join(ch for ch in str(level) if ch.isdigit())  # "Level 3" -> 3; "Level ?" has none
        extra["level"] = int(digits) if digits else None
    subject = lowered.get("subject", lowered.get("type"))
    if subject is not None:
        extra["subject"] = str(subject)
    if lowered.get("unique_id") is not None:
        extra["id"] = str(lowered["unique_id"])
    return {"prompt": user_prompt(problem, BOXED_INSTRUCTION), "ground_truth": answer, "extra_info": extra}


def problem_and_answer_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """DAPO-Math-17K and the AIME sets: either verl-style rows (prompt as chat messages, reward_model.ground_truth)
    or plain ones (problem / question, answer; any capitalisation)."""
    lowered = {str(key).lower(): value for key, value in row.items()}
    extra: dict[str, Any] = {}
    if isinstance(lowered.get("reward_model"), dict):
        messages = lowered.get("prompt")
        if not isinstance(messages, list | tuple) or not messages:
            raise DataError(f"{where}: field 'prompt' must be a list of chat messages, got {messages!r}")
        content = pick(dict(messages[-1]), ["content"], f"{where}, prompt[-1]")
        problem = (
            _text(content, "prompt[-1].content", where).removeprefix(DAPO_PREFIX).removesuffix(DAPO_SUFFIX)
        )
        answer = _text(
            pick(lowered["reward_model"], ["ground_truth"], where), "reward_model.ground_truth", where
        )
        source_extra = lowered.get("extra_info")
        if isinstance(source_extra, dict) and source_extra.get("index") is not None:
            extra["id"] = str(source_extra["index"])
    else:
        problem = _text(pick(row, ["problem", "question"], where), "problem", where)
        answer = _text(pick(row, ["answer"], where), "answer", where)
        if lowered.get("id") is not None:
            extra["id"] = str(lowered["id"])
        if lowered.get("solution") is not None:
            extra["solution"] = str(lowered["solution"])
    if not answer:
        raise SkipRow("empty answer")
    return {"prompt": user_prompt(problem, BOXED_INSTRUCTION), "ground_truth": answer, "extra_info": extra}


def aime_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """An AIME problem: its answer is an integer from 0 to 999 (written "073" or 73.0 in some copies)."""
    converted = problem_and_answer_row(row, where)
    answer = converted["ground_truth"]
    try:
        value = Decimal(answer)
    except InvalidOperation:
        value = None
    if value is None or value != value.to_integral_value() or not 0 <= value <= 999:
        shown = answer if len(answer) <= 60 else answer[:57] + "..."
        raise DataError(
            f"{where}: the answer field holds {shown!r}, not an AIME answer (an integer from 0 to 999); "
            f"fields found: {', '.join(map(str, row))}. Is this a file of another dataset?"
        )
    converted["ground_truth"] = str(int(value))
    return converted


@dataclass(frozen=True)
class DatasetSpec:
    convert_row: Callable[[dict[str, Any], str], dict[str, Any]]
    data_source: str  # the default; every one of them is routed to a registered verifier
    split: str
    dedupe: bool  # DAPO-Math-17K repeats each problem many times
    # The file's columns: each entry is a set of alternatives one of which must be present (any
    # capitalisation), e.g. (("problem", "question"), ("answer",)); `shapes` lists the accepted layouts.
    shapes: tuple[tuple[tuple[str, ...], ...], ...]
    foreign: tuple[str, ...] = ()  # columns that mark another dataset's file (MATH's level / type / subject)


VERL_SHAPE = (("prompt",), ("reward_model",))
PROBLEM_ANSWER_SHAPE = (("problem", "question"), ("answer",))
MATH_MARKS = ("level", "type", "subject", "unique_id")

DATASETS = {
    "gsm8k": DatasetSpec(
        gsm8k_row, "openai/gsm8k", "train", False, ((("question",), ("answer",)),), ("problem", "solution")
    ),
    "math": DatasetSpec(math_row, "lighteval/MATH", "train", False, ((("problem",), ("solution",)),)),
    "math500": DatasetSpec(
        math_row, "HuggingFaceH4/MATH-500", "test", False, ((("problem",), ("solution",), ("answer",)),)
    ),
    "dapo_math": DatasetSpec(
        problem_and_answer_row, "math_dapo", "train", True, (VERL_SHAPE, PROBLEM_ANSWER_SHAPE), MATH_MARKS
    ),
    "aime": DatasetSpec(aime_row, "aime", "test", True, (PROBLEM_ANSWER_SHAPE, VERL_SHAPE), MATH_MARKS),
}


def check_shape(dataset: str, spec: DatasetSpec, source: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """Refuse a file whose columns are not one of the dataset's layouts, naming what was expected and found."""
    found = sorted({str(key) for _, row in rows for key in row})
    columns = {name.lower() for name in found}
    fits = any(all(columns & set(alternatives) for alternatives in shape) for shape in spec.shapes)
    marks = [name for name in spec.foreign if name in columns]
    if fits and not marks:
        return
    expected = " or ".join(
        ", ".join("/".join(alternatives) for alternatives in shape) for shape in spec.shapes
    )
    why = f"; the fields {', '.join(marks)} belong to another dataset" if marks else ""
    raise DataError(
        f"{source}: not in the {dataset} format: expected the fields {expected}; found {', '.join(found)}{why}"
    )


def input_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) from a jsonl / json / parquet file, or from a folder of the original MATH release's
    per-problem .json files (searched recursively, in sorted order)."""
    path = Path(path)
    if not path.is_dir():
        return [(f"{path}, {where}", row) for where, row in read_rows(path)]
    rows = []
    for file in sorted(path.rglob("*.json")):
        try:
            row = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: invalid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{file}: expected a JSON object, got {type(row).__name__}")
        rows.append((str(file), row))
    if not rows:
        raise DataError(f"{path}: folder holds no .json files")
    return rows


def convert(
    dataset: str,
    inputs: Iterable[str | Path],
    *,
    split: str | None = None,
    data_source: str | None = None,
    dedupe: bool | None = None,
    limit: int | None = None,
) -> Converted:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    split = split or spec.split
    dedupe = spec.dedupe if dedupe is None else dedupe
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    for path in inputs:
        rows = input_rows(path)
        check_shape(dataset, spec, str(path), rows)
        for where, row in rows:
            try:
                converted = spec.convert_row(row, where)
            except SkipRow as why:
                skipped.append(f"{where}: {why}")
                continue
            key = json.dumps([converted["prompt"], converted["ground_truth"]])
            if dedupe and key in seen:
                duplicates += 1
                continue
            seen.add(key)
            converted["data_source"] = data_source or spec.data_source
            converted["extra_info"] = {"split": split, "index": len(records), **converted["extra_info"]}
            records.append(converted)
            if limit is not None and len(records) >= limit:
                return Converted(records, skipped, duplicates)
    if not records:
        raise DataError(f"no usable rows in {', '.join(map(str, inputs))} ({len(skipped)} skipped)")
    return Converted(records, skipped, duplicates)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="preprocess",
        description="Convert downloaded public math datasets to sfpo_rl's jsonl / parquet format.",
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("inputs", nargs="+", help="downloaded files (.parquet/.jsonl/.json) or a MATH folder")
    parser.add_argument("-o", "--output", required=True, help="output file, .jsonl or .parquet")
    parser.add_argument("--split", help="recorded in extra_info (default: train, or test for math500/aime)")
    parser.add_argument("--data-source", help="data_source column (selects the verifier)")
    parser.add_argument("--limit", type=int, help="keep at most this many records")
    parser.add_argument("--no-dedupe", action="store_true", help="keep repeated problems")
    args = parser.parse_args(argv)
    try:
        result = convert(
            args.dataset,
            args.inputs,
            split=args.split,
            data_source=args.data_source,
            dedupe=False if args.no_dedupe else None,
            limit=args.limit,
        )
        out = write_records(result.records, args.output)
    except DataError as exc:
        print(f"preprocess: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(result.records)} records to {out}", end="")
    if result.duplicates:
        print(f"; dropped {result.duplicates} repeated problems", end="")
    if result.skipped:
        print(
            f"; skipped {len(result.skipped)} rows without a usable answer (first: {result.skipped[0]})",
            end="",
        )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
