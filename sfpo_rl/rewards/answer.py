"""Final-answer extraction shared by the verifiers: the last \\boxed{...} and plain numbers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# An integer or decimal, optionally with thousands separators ("1,234.5"); a "$" before it is not part of it.
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested and escaped braces allowed) or `\\boxed x`.

    None when there is no such command or the last one is unclosed (a truncated response has no answer).
    """
    start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + len(command)
    j = i
    while j < len(text) and text[j] == " ":
        j += 1
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


def last_number(text: str) -> str | None:
    """The last number in `text`, thousands separators removed ("$1,200." -> "1200")."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def as_fraction(text: str) -> Fraction | None:
    """Exact value of a plain number ("-12", "3.50", "1,000", "$7"), None for anything else."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(Decimal(cleaned))
    except (InvalidOperation, ValueError, OverflowError):  # also NaN and infinities
        return None
