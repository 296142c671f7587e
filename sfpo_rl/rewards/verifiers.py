"""The built-in verifiers: math (math-verify), gsm8k (numeric), arith (the built-in task, exact integer).

Each returns {"score": float, "acc": bool}. `format_score` is the reward for a response that gives a final
answer in the expected form but a wrong one: the paper's shaping is 1.0 correct / 0.1 boxed-but-wrong /
0.0 no boxed answer (`format_score=0.0` gives plain 0/1). math-verify's own signal-based time limits are
switched off here; the caller bounds each call (see `sfpo_rl.rewards.timeout`).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from sfpo_rl.rewards.answer import as_fraction, last_boxed, last_number
from sfpo_rl.rewards.registry import register_verifier


class _DropTimeoutNotice(logging.Filter):
    """math-verify warns that its time limit is off when called with timeout None: we bound calls ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutNotice())


def _result(correct: bool, answered: bool, correct_score: float, format_score: float) -> dict[str, Any]:
    score = correct_score if correct else (format_score if answered else 0.0)
    return {"score": float(score), "acc": bool(correct)}


@lru_cache(maxsize=1)
def _boxed_first_config() -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _parse_boxed(content: str) -> list:
    from math_verify import parse

    return parse("\\boxed{" + content + "}", extraction_config=_boxed_first_config(), parsing_timeout=None)


@lru_cache(maxsize=8192)
def _parse_gold(ground_truth: str) -> tuple:
    """Parsed ground truth, cached: the n samples of one prompt share it (sympy objects are immutable)."""
    gold = last_boxed(ground_truth) or ground_truth
    return tuple(_parse_boxed(gold))


@register_verifier(
    "math",
    "lighteval/math",
    "digitallearninggmbh/math-lighteval",
    "huggingfaceh4/math-500",
    "math500",
    "math-500",
    "math_dapo",
    "aime*",
    "dapo*",
    "amc*",
    "*aime*",
    "*math*",
)
def math_score(
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    format_score: float = 0.1,
    correct_score: float = 1.0,
) -> dict[str, Any]:
    """Last \\boxed{} answer checked against the ground truth with math-verify (numbers, fractions, LaTeX
    expressions, sets, intervals are compared by value)."""
    from math_verify import verify

    answer = last_boxed(solution_str)
    if answer is None:
        return _result(False, False, correct_score, format_score)
    gold = list(_parse_gold(str(ground_truth)))
    pred = _parse_boxed(answer)
    correct = bool(gold and pred) and verify(gold, pred, timeout_seconds=None)
    if not gold:  # a ground truth math-verify cannot read: fall back to comparing the text
        correct = _squash(answer) == _squash(last_boxed(str(ground_truth)) or str(ground_truth))
    return _result(correct, True, correct_score, format_score)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def gsm8k_answer(solution_str: str) -> str | None:
    """The number after the last "####", else in the last \\boxed{}, else the last number in the text."""
    if "####" in solution_str:
        return last_number(solution_str.rsplit("####", 1)[1].split("\n", 1)[0])
    boxed = last_boxed(solution_str)
    if boxed is not None:
        return last_number(boxed)
    return last_number(solution_str)


@register_verifier("gsm8k", "openai/gsm8k", "*gsm8k*")
def gsm8k_score(
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    format_score: float = 0.0,
    correct_score: float = 1.0,
) -> dict[str, Any]:
    """Exact numeric comparison of the final answer (commas, "$" and trailing zeros do not matter)."""
    answer = gsm8k_answer(solution_str)
    expected = as_fraction(gsm8k_answer(str(ground_truth)) or str(ground_truth))
    value = as_fraction(answer) if answer is not None else None
    return _result(value is not None and value == expected, answer is not None, correct_score, format_score)


@register_verifier("arith")
def arith_score(
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    format_score: float = 0.1,
    correct_score: float = 1.0,
) -> dict[str, Any]:
    """The built-in task: the last \\boxed{} must hold exactly the integer answer."""
    answer = last_boxed(solution_str)
    correct = (
        answer is not None and re.fullmatch(r"-?\d+", answer) is not None and int(answer) == int(ground_truth)
    )
    return _result(correct, answer is not None, correct_score, format_score)
