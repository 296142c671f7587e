"""Final-answer extraction shared by the verifiers: the last \\boxed{...}, plain numbers, "no answer" boxes."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_BOX_COMMANDS = ("\\boxed", "\\fbox", "\\framebox")
# An integer or decimal, optionally with thousands separators ("1,234.5") and an exponent ("5e3"); a "$" before
# it is not part of it, nor is a "-" after a digit, letter or bracket ("5-7" is a range or a difference, not -7).
# Digits in a name or an exponent (x_1, H2, x^2) are not a number.
_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?(?<![A-Za-z_^])(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_MAX_EXPONENT = 1000  # "1e999999999" is not computed: no plain answer is that large
# Characters that show nothing: zero-width space / non-joiner / joiner, word joiner, byte-order mark, soft hyphen.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
# LaTeX / typographic thousands separators between a digit and a group of exactly three digits:
# 70{,}000, 1,\!234, 1\,234, 1\ 234, 1~234 and thin / no-break spaces.
_DIGIT_GROUP_SEPARATOR = re.compile(
    r"(?<=\d)(?:\{,\}|,\\!|\\,|\\!|\\ |~|[\u2009\u202f\u00a0])(?=\d{3}(?!\d))"
)
# What a box holds when the response gives no answer: nothing, only placeholders (?, ..., \ldots, _), or a
# refusal ("I do not know", "I don't know", "not sure", "unknown", "no answer", "N/A", "idk"), possibly in
# \text{} / \textbf{} / \mathrm{} and with trailing punctuation. Such a box earns 0, not the format score.
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_MAX_WRAPPERS = 4
_PLACEHOLDER = re.compile(r"(?:[?.\-_*…\s]|\\(?:l|c)?dots)*")
_REFUSAL = re.compile(
    r"(?:i\s*)?(?:do\s*not|don'?t|dont)\s*know|(?:i'?m\s*|i\s*am\s*)?(?:not\s*sure|unsure)|unknown|"
    r"no\s*answer|n/a|idk"
)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` / `\\framebox{...}` (nested and escaped braces allowed)
    or `\\boxed x`.

    None when there is no such command or the last one is unclosed (a truncated response has no answer).
    """
    start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + len(command)
    j = i
    while j < len(text) and text[j] == " ":
        j += 1
    while command == "\\framebox" and text.startswith("[", j) and "]" in text[j:]:  # [width][position]
        j = text.index("]", j) + 1
    if j < len(text) and text[j] == "{":
        depth = 0
        k = j
        while k < len(text):
            ch = text[k]
            if ch == "\\":  # \{ and \} are literal braces (sets), not grouping
                k += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1 : k].strip()
            k += 1
        return None
    if j == i:  # "\boxedfoo" is some other command, not an answer
        return None
    match = re.match(r"[^\s$]+", text[j:])  # "\boxed 5$": the token up to whitespace or "$"
    return match.group(0) if match else None


def join_digit_groups(text: str) -> str:
    """LaTeX and typographic thousands separators removed: "70{,}000" and "1\\,234" -> "70000", "1234"."""
    return _DIGIT_GROUP_SEPARATOR.sub("", text)


def drop_invisible(text: str) -> str:
    return text.translate(_INVISIBLE)


def is_no_answer(content: str) -> bool:
    """Whether a box's content says nothing: empty, a placeholder or an "I do not know"-style refusal.

    Wrappers are removed a few levels deep, not to the bottom: each level is a pass over the text, and a
    refusal nested deeper than that is not one a model means."""
    text = content.replace("$", "")
    for _ in range(_MAX_WRAPPERS):
        text = _TEXT_WRAPPER.sub(r"\1", text)
    text = text.strip().rstrip(".!").strip().lower()
    return _PLACEHOLDER.fullmatch(text) is not None or _REFUSAL.fullmatch(text) is not None


def _number_text(text: str) -> str:
    """Thousands separators joined, the typographic minus sign (U+2212) read as "-"."""
    return join_digit_groups(text.replace("\u2212", "-"))


def last_number(text: str) -> str | None:
    """The last number in `text`, thousands separators removed ("$1,200." -> "1200", "70{,}000" -> "70000")."""
    numbers = _NUMBER.findall(_number_text(text))
    return numbers[-1].replace(",", "") if numbers else None


def leading_number(text: str) -> tuple[str, str] | None:
    """The first number in `text` (thousands separators removed) and the text after it; None without one."""
    text = _number_text(text)
    match = _NUMBER.search(text)
    return (match.group(0).replace(",", ""), text[match.end() :]) if match else None


def as_fraction(text: str) -> Fraction | None:
    """Exact value of a plain number ("-12", "3.50", "1,000", "$7"), None for anything else."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
        if value.is_finite() and abs(value.adjusted()) > _MAX_EXPONENT:
            return None
        return Fraction(value)
    except (InvalidOperation, ValueError, OverflowError):  # also NaN and infinities
        return None
