"""What the math verifier does to a boxed answer before and after math-verify reads it.

- `normalize`: writing variants that mean the same answer become one form (thousands separators, unicode
  symbols, plain-text `sqrt(2)` and `pi`, a number in \\text{} / \\textbf{} as AIME answers are written, a
  trailing period).
- `too_complex`: math-verify's LaTeX parser (ANTLR with full-context prediction) slows down about twofold
  with each level of nesting, so a short answer of nested braces can hold a verifier for its whole time
  limit; answers longer than `max_chars` or nested deeper than `max_depth` brackets are not parsed at all and
  are compared as text.
- `too_large`: numbers such as 9^{9^{9}} or 1000000! are short to write but slow and memory-hungry to
  compare exactly, inside C code that no alarm interrupts; answers holding one are compared as text.
- `unnamed_equation`: math-verify reads `\\boxed{<anything> = 0}` as the value 0 (it keeps the right side of
  an equation when the reference is not one), which lets `5x - 7y + 4 = 0`, `7 = 0` or `1 = 2` match 0 or 2.
  An equation is read as its right side only when its left side is a name (`x = 5`, `x_1 = 5`,
  `\\theta = 30^\\circ`, `f(x) = 2x`, `AB = 5`); otherwise it is compared as a whole, and an equation is not
  a value.
"""

from __future__ import annotations

import math
import re

from sfpo_rl.rewards.answer import join_digit_groups

MAX_CHARS = 400
MAX_DEPTH = 6
MAX_DIGITS = 10_000  # exact numbers up to this many digits are compared in well under a second

_UNICODE = {"°": "^\\circ", "−": "-", "×": "\\times ", "÷": "\\div ", "π": "\\pi ", "∞": "\\infty "}
_SQRT_SYMBOL = re.compile(r"√\s*(\d+|[A-Za-z])")  # √2 -> \sqrt{2}; √(x+1) goes through the sqrt( rule
_PLAIN_SQRT = re.compile(r"(?<![A-Za-z])(?:\\sqrt|sqrt|√)\s*\(")
_PLAIN_PI = re.compile(r"(?<![A-Za-z\\])pi(?![A-Za-z])")
# A number written as text: \textbf{(073)}, \text{ 12 }, \mathbf{5}.
_TEXT_NUMBER = re.compile(
    r"\\(?:text|textbf|mathbf|mathrm|boldsymbol)\s*\{\s*(\(?\s*[-+]?[\d.,]+\s*\)?)\s*\}"
)
_TRAILING_PERIOD = re.compile(r"(?<!\.)\.\s*$")


def normalize(answer: str) -> str:
    text = join_digit_groups(answer.strip())
    for symbol, latex in _UNICODE.items():
        text = text.replace(symbol, latex)
    text = _SQRT_SYMBOL.sub(r"\\sqrt{\1}", text)
    text = _plain_sqrt_to_latex(text)
    text = _PLAIN_PI.sub(r"\\pi ", text)
    text = _TEXT_NUMBER.sub(r"\1", text)
    return _TRAILING_PERIOD.sub("", text).strip()


def _plain_sqrt_to_latex(text: str) -> str:
    """sqrt(2x+1) -> \\sqrt{2x+1} (math-verify mangles the parenthesised form); unbalanced text is kept."""
    while match := _PLAIN_SQRT.search(text):
        depth, end = 1, match.end()
        while end < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        if depth:
            return text
        text = f"{text[: match.start()]}\\sqrt{{{text[match.end() : end - 1]}}}{text[end:]}"
    return text


def nesting_depth(text: str) -> int:
    """Deepest nesting of brackets of any kind ({, (, [ and \\{ alike; mismatched pairs as in (1, 3] count)."""
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(0, depth - 1)
    return deepest


def too_complex(answer: str, max_chars: int = MAX_CHARS, max_depth: int = MAX_DEPTH) -> str | None:
    """Why `answer` is not given to the parser (None when it is)."""
    if len(answer) > max_chars:
        return f"{len(answer)} characters > {max_chars}"
    depth = nesting_depth(answer)
    if depth > max_depth:
        return f"brackets nested {depth} deep > {max_depth}"
    return None


def too_large(expr) -> bool:
    """Whether a parsed answer holds a number too large to compare exactly (its size estimated, not computed)."""
    from sympy import Basic

    return isinstance(expr, Basic) and _digits(expr) > MAX_DIGITS


def _digits(expr) -> float:
    """An upper estimate of the digits needed to write the numbers in `expr` exactly; inf past about 1e6."""
    from sympy import Pow, factorial

    if expr.is_Integer or expr.is_Rational:
        return float(max(len(str(abs(expr.p))), len(str(expr.q))))
    if isinstance(expr, factorial) and expr.is_number:
        if _digits(expr.args[0]) > 6:  # n! for n above a million
            return math.inf
        n = abs(complex(expr.args[0]))
        return n * math.log10(max(n, 2.0))
    if isinstance(expr, Pow) and expr.is_number:
        base_digits = _digits(expr.base)
        if _digits(expr.exp) > 6:  # an exponent above a million
            return math.inf
        exponent = abs(complex(expr.exp))
        if base_digits > 300:  # too long for a float: its digit count is the size
            return base_digits * max(1.0, exponent)
        base = abs(complex(expr.base))
        return max(base_digits, (abs(math.log10(base)) if base else 0.0) * max(1.0, exponent))
    return sum((_digits(arg) for arg in expr.args), 0.0)


def unnamed_equation(expr) -> bool:
    """Whether `expr` holds an equation whose left side is not a name (see the module docstring)."""
    from sympy import Basic, Eq, preorder_traversal

    if not isinstance(expr, Basic):
        return False
    return any(isinstance(node, Eq) and not _is_name(node.lhs) for node in preorder_traversal(expr))


def has_equation(expr) -> bool:
    from sympy import Basic, Eq, preorder_traversal

    return isinstance(expr, Basic) and any(isinstance(node, Eq) for node in preorder_traversal(expr))


def _is_name(expr) -> bool:
    """A symbol (x, x_1, theta), letters side by side (AB: a product of symbols to sympy), or f(x, y)."""
    from sympy import Mul, Symbol
    from sympy.core.function import AppliedUndef

    if isinstance(expr, Symbol):
        return True
    if isinstance(expr, Mul | AppliedUndef):
        return all(isinstance(arg, Symbol) for arg in expr.args)
    return False
