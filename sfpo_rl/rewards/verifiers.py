"""The built-in verifiers: math (math-verify), gsm8k (numeric), arith (the built-in task, exact integer).

Each returns {"score": float, "acc": bool}. `format_score` is the reward for a response that gives a final
answer in the expected form but a wrong one: the paper's shaping is 1.0 correct / 0.1 boxed-but-wrong /
0.0 no boxed answer (`format_score=0.0` gives plain 0/1). A box that holds no answer (empty, `?`, "I do not
know", see `sfpo_rl.rewards.answer.is_no_answer`) counts as no boxed answer. A missing or empty ground truth
is an error (the sample scores 0 and is counted), never something an answer can match. math-verify's own
signal-based time limits are switched off here; the caller bounds each call (see `sfpo_rl.rewards.verifier_pool`),
and `sfpo_rl.rewards.math_answer` keeps answers that would need that bound away from the parser.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from sfpo_rl.rewards.answer import (
    as_fraction,
    drop_invisible,
    is_no_answer,
    last_boxed,
    last_number,
    leading_number,
)
from sfpo_rl.rewards.math_answer import (
    MAX_CHARS,
    MAX_DEPTH,
    MAX_DIGITS,
    binomial_arguments,
    binomial_digits,
    has_equation,
    hides_a_value,
    normalize,
    orient_equations,
    too_complex,
    too_large,
    unevaluated,
    unnamed_equation,
)
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
    """math-verify's reading of a box. `first_match`: a box it cannot read as a whole is left as text; by
    default it would go on to read the last piece it can (`7 \\to 5`, `5 \\vee 7`, `x^2 - 5x + 6 \\implies 0`
    would be 5, 7 and 0)."""
    from math_verify import parse

    return parse(
        "\\boxed{" + content + "}",
        extraction_config=_boxed_first_config(),
        extraction_mode="first_match",
        parsing_timeout=None,
    )


def _parse_within_limits(answer: str, max_chars: int, max_depth: int) -> list:
    """math-verify's reading of a normalized answer; [] (compare as text) when it is too long, nested too
    deep, would lose a value to the unit rule, holds a number too large to compare exactly or an unevaluated
    integral, sum, product or limit (see `sfpo_rl.rewards.math_answer`)."""
    if too_complex(answer, max_chars, max_depth) or hides_a_value(answer) or unevaluated(answer):
        return []
    if any(_binomial_too_large(n, k, max_chars, max_depth) for n, k in binomial_arguments(answer)):
        return []
    parsed = _parse_boxed(answer)
    if any(too_large(p) or unevaluated(p) for p in parsed):
        return []
    return [orient_equations(p) for p in parsed]


def _binomial_too_large(n: str, k: str, max_chars: int, max_depth: int) -> bool:
    """Whether C(n, k), written with these arguments, has more than MAX_DIGITS digits; False when n or k is
    not a known integer (sympy then keeps the binomial as it is written)."""
    values = []
    for argument in (n, k):
        parsed = _parse_within_limits(argument, max_chars, max_depth) if argument.strip() else []
        value = parsed[0] if parsed else None
        if not (getattr(value, "is_number", False) and value.is_integer):
            return False
        values.append(int(value))
    return binomial_digits(*values) > MAX_DIGITS


@lru_cache(maxsize=8192)
def _parse_gold(gold: str, max_chars: int, max_depth: int) -> tuple:
    """Parsed ground truth, cached: the n samples of one prompt share it (sympy objects are immutable)."""
    return tuple(_parse_within_limits(gold, max_chars, max_depth))


def reference_text(ground_truth: Any) -> str:
    """The ground truth as text; None or blank is an error: nothing must be able to match a missing answer."""
    text = "" if ground_truth is None else drop_invisible(str(ground_truth)).strip()
    if not text:
        raise ValueError(f"no ground truth to compare with (got {ground_truth!r})")
    return text


def _same_answer(gold: tuple, pred: list) -> bool:
    from math_verify import verify

    if any(unnamed_equation(p) for p in pred) and not any(has_equation(g) for g in gold):
        return False  # "5x + 4 = 0" is an equation, not the value 0 (math-verify would keep its right side)
    return verify(list(gold), pred, timeout_seconds=None)


def _gold_answer(reference: str) -> str:
    """A reference written as a solution ("... \\boxed{7}") stands for its boxed answer."""
    boxed = last_boxed(reference)
    return reference if boxed is None else boxed


def _math_gold_problem(ground_truth: str) -> str | None:
    return "holds no answer" if is_no_answer(_gold_answer(ground_truth)) else None


@register_verifier(
    "math",
    "lighteval/math",
    "digitallearninggmbh/math-lighteval",
    "huggingfaceh4/math-500",
    "math500",
    "math-500",
    "math_dapo",
    "dapo*",
    "*aime*",
    "*amc*",
    "*math*",
    "*minerva*",
    "*olympiad*",
    check_ground_truth=_math_gold_problem,
)
def math_score(
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    format_score: float = 0.1,
    correct_score: float = 1.0,
    max_answer_chars: int = MAX_CHARS,
    max_answer_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """Last \\boxed{} answer checked against the ground truth with math-verify (numbers, fractions, LaTeX
    expressions, sets, intervals are compared by value). Answers longer than `max_answer_chars`, nested deeper
    than `max_answer_depth` brackets or holding huge numbers are compared as text instead (fast; right only
    when written like the ground truth)."""
    reference = reference_text(ground_truth)
    answer = last_boxed(drop_invisible(solution_str))
    if answer is None or is_no_answer(answer):
        return _result(False, False, correct_score, format_score)
    answer = _normalize_short(answer, max_answer_chars)
    gold_text = _normalize_short(_gold_answer(reference), max_answer_chars)
    gold = _parse_gold(gold_text, max_answer_chars, max_answer_depth)
    pred = _parse_within_limits(answer, max_answer_chars, max_answer_depth)
    if gold and pred:
        correct = _same_answer(gold, pred)
    else:  # one side cannot be read (or is kept from the parser): compare the text
        correct = _squash(answer) == _squash(gold_text)
    return _result(correct, True, correct_score, format_score)


def _normalize_short(text: str, max_chars: int) -> str:
    """A text longer than `max_chars` is compared as written: it will not be parsed, and cleaning it up first
    would cost more than comparing it (some of the clean-up is quadratic in the length)."""
    return normalize(text) if len(text) <= max_chars else text


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# A second number joined to the first by an operator, a dash or "to" / "or": a range, a hedge or a sum.
_JOINED_NUMBER = re.compile(r"\s*(?:[-+*/×÷^\u2013\u2014]|\(?\s*(?:to|or)\b)\s*\$?\s*[-.\d]")


def final_number(text: str) -> str | None:
    """The number a final answer starts with: "18 (that is 3 per day)" is 18. When a second number is joined
    to it ("5-7", "18 or 19", "2 + 3") it is a range, a hedge or an expression: the result after its last "="
    when it has one ("2 + 3 = 5" is 5), else the text itself, which no number equals."""
    found = leading_number(text)
    if found is None:
        return None
    number, rest = found
    if not _JOINED_NUMBER.match(rest):
        return number
    return final_number(text.rsplit("=", 1)[1]) if "=" in text else text.strip()


def gsm8k_answer(solution_str: str) -> str | None:
    """The final number (`final_number`) of the line after the last "####", else of the last \\boxed{}, else
    the last number in the text."""
    solution_str = drop_invisible(solution_str)
    if "####" in solution_str:
        return final_number(solution_str.rsplit("####", 1)[1].split("\n", 1)[0])
    boxed = last_boxed(solution_str)
    if boxed is not None:
        return final_number(boxed)
    return last_number(solution_str)


def _gsm8k_gold_problem(ground_truth: str) -> str | None:
    if as_fraction(gsm8k_answer(ground_truth) or ground_truth) is None:
        return "is not a number (nor a solution ending in '#### <number>')"
    return None


@register_verifier("gsm8k", "openai/gsm8k", "*gsm8k*", check_ground_truth=_gsm8k_gold_problem)
def gsm8k_score(
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    format_score: float = 0.0,
    correct_score: float = 1.0,
) -> dict[str, Any]:
    """Exact numeric comparison of the final answer (commas, LaTeX thousands separators such as 70{,}000 and
    1\\,234, "$" and trailing zeros do not matter)."""
    reference = reference_text(ground_truth)
    answer = gsm8k_answer(solution_str)
    expected = as_fraction(gsm8k_answer(reference) or reference)
    value = as_fraction(answer) if answer is not None else None
    return _result(value is not None and value == expected, answer is not None, correct_score, format_score)


def _arith_gold_problem(ground_truth: str) -> str | None:
    return None if re.fullmatch(r"-?\d+", ground_truth.strip()) else "is not an integer"


@register_verifier("arith", check_ground_truth=_arith_gold_problem)
def arith_score(
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    format_score: float = 0.1,
    correct_score: float = 1.0,
) -> dict[str, Any]:
    """The built-in task: the last \\boxed{} must hold exactly the integer answer."""
    expected = int(reference_text(ground_truth))
    answer = last_boxed(drop_invisible(solution_str))
    answered = answer is not None and not is_no_answer(answer)
    correct = answered and re.fullmatch(r"-?\d+", answer) is not None and int(answer) == expected
    return _result(correct, answered, correct_score, format_score)
