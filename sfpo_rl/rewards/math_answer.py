"""What the math verifier does to a boxed answer before and after math-verify reads it.

- `normalize`: writing variants that mean the same answer become one form (thousands separators, unicode
  symbols, plain-text `sqrt(2)` and `pi`, a number in \\text{} / \\textbf{} as AIME answers are written, a
  trailing period, `:=` for `=`, `\\left.` / `\\right.`). A relation with nothing on its left (`= 5`,
  `\\approx 5`, `\\implies x = 5`) is dropped: math-verify reads a box that it cannot parse whole as text
  (see `verifiers._parse_boxed`), and such a box loses nothing without it. Percent signs are dropped, as the
  MATH benchmark's own answer normalization does (`50\\%` is 50; math-verify's parser fails on a boxed `\\%`).
- `too_complex`: math-verify's LaTeX parser (ANTLR with full-context prediction) slows down about twofold
  with each level of nesting, so a short answer of nested braces can hold a verifier for its whole time
  limit; answers longer than `max_chars` or nested deeper than `max_depth` brackets are not parsed at all and
  are compared as text.
- `too_large`: numbers such as 9^{9^{9}} or 1000000! are short to write but slow and memory-hungry to
  compare exactly, inside C code that no alarm interrupts; answers holding one are compared as text.
- `unnamed_equation`: math-verify reads `\\boxed{<anything> = 0}` as the value 0 (it keeps the right side of
  an equation when the reference is not one), which lets `5x - 7y + 4 = 0`, `7 = 0` or `1 = 2` match 0 or 2.
  An equation is read as its right side only when its left side is a name (`x = 5`, `x_1 = 5`,
  `\\theta = 30^\\circ`, `f(x) = 2x`, `AB = 5`, and `5 = x` turned round by `orient_equations`); otherwise it
  is compared as a whole, and an equation is not a value.
- `hides_a_value`: math-verify drops everything from the first `\\text{` of an answer that ends in `}` as a
  unit (`5 \\text{ cm}`); when that tail holds a number outside the text (`5 \\text{ (or possibly } 7
  \\text{)}`, `5 \\text{ h } 30 \\text{ min}`) it is not a unit, and the answer is compared as text.
- `unevaluated`: an answer that still holds an integral, sum, product, limit or derivative restates what was
  to be computed; a careful grader wants its value, and sympy can take minutes to find it
  (`\\int_0^1 x^{1000}e^x dx`, `\\prod_{k=1}^{10^6} k`). Such answers are compared as text, so they are right
  only when the reference itself is written that way. `\\int`, `\\sum`, `\\prod` and `\\lim` are seen in the
  text, which also spares the parse (ANTLR takes about 0.2 s on an integral); a derivative (`\\frac{d}{dx}`)
  is seen in what the parser makes of it.
- `binomial_arguments` / `binomial_digits`: the parser evaluates `\\binom{n}{k}` exactly while it reads it
  (`\\binom{100000}{50000}`, 30,000 digits, takes seconds), so its size is estimated from n and k first.
"""

from __future__ import annotations

import math
import re
from typing import Any

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
_TRAILING_PUNCTUATION = re.compile(r"(?<![.\\])[.,;]\s*$")  # not "..." nor the spacing commands \, and \;
_DEFINITION = re.compile(r":=|\\coloneqq(?![A-Za-z])")  # x := 5 states x = 5
_PERCENT = re.compile(r"\s*(?:\\?%|\\text\s*\{\s*(?:\\?%|percent)\s*\}|\bpercent\b)")
_EMPTY_DELIMITER = re.compile(r"\\(?:left|right)\s*\.")
_LEADING_RELATION = re.compile(
    r"^(?:=|\\(?:approx|sim|simeq|therefore|implies|iff|Rightarrow|Longrightarrow|rightarrow|longrightarrow|to)"
    r"(?![A-Za-z]))\s*"
)
_TEXT_GROUP = re.compile(r"\\(?:text\w*|mbox|math(?:rm|it|bf))\s*\{([^{}]*)\}")
_AND_OR = re.compile(r"\s*(?:and|or)\s*")  # math-verify reads \text{ and } / \text{ or } as a comma
_UNIT_POWER = re.compile(r"\^(?:\d|\{-?\d+\})\s*$")  # cm^2, m^{-1}
_CALCULUS = re.compile(r"\\(?:i{1,3}nt|oint|sum|prod|lim)(?![A-Za-z])")
_BINOM = re.compile(r"\\[dt]?binom(?![A-Za-z])")
_CHOOSE = re.compile(r"\\choose(?![A-Za-z])")


def normalize(answer: str) -> str:
    text = join_digit_groups(answer.strip())
    for symbol, latex in _UNICODE.items():
        text = text.replace(symbol, latex)
    text = _SQRT_SYMBOL.sub(r"\\sqrt{\1}", text)
    text = _plain_sqrt_to_latex(text)
    text = _PLAIN_PI.sub(r"\\pi ", text)
    text = _TEXT_NUMBER.sub(r"\1", text)
    text = _DEFINITION.sub("=", _PERCENT.sub("", _EMPTY_DELIMITER.sub("", text)))
    text = _LEADING_RELATION.sub("", text.strip())
    return _TRAILING_PUNCTUATION.sub("", text).strip()


def hides_a_value(answer: str) -> bool:
    """Whether math-verify would drop a number with what it takes for a trailing unit (module docstring)."""
    groups = [m for m in _TEXT_GROUP.finditer(answer) if not _AND_OR.fullmatch(m.group(1))]
    if not groups or not answer[: groups[0].start()].strip():
        return False  # math-verify keeps an answer that stripping would empty
    tail = answer[groups[0].start() :]
    if not tail.rstrip().endswith("}") and not _UNIT_POWER.search(tail):
        return False  # math-verify strips nothing
    outside = _UNIT_POWER.sub("", _TEXT_GROUP.sub(" ", tail))
    return re.search(r"\d", outside) is not None


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

    if expr.is_Integer or expr.is_Rational:  # from the bit length: str() refuses ints over 4300 digits
        return math.log10(2) * max(abs(expr.p).bit_length(), expr.q.bit_length()) + 1
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


def unevaluated(answer: Any) -> bool:
    """Whether an answer, as text or as parsed, still holds an integral, sum, product, limit or derivative
    (see the module docstring)."""
    from sympy import Basic, Derivative, Integral, Limit, Product, Sum

    if isinstance(answer, str):
        return _CALCULUS.search(answer) is not None
    return isinstance(answer, Basic) and answer.has(Integral, Sum, Product, Limit, Derivative)


def orient_equations(expr):
    """`5 = x` as `x = 5`: an equation with a name on the right only and not on the left is turned round."""
    from sympy import Basic, Eq

    if not isinstance(expr, Basic):
        return expr
    return expr.replace(
        lambda e: isinstance(e, Eq) and _is_name(e.rhs) and not _is_name(e.lhs),
        lambda e: Eq(e.rhs, e.lhs, evaluate=False),
    )


def binomial_arguments(text: str) -> list[tuple[str, str]]:
    """(n, k) as written in each `\\binom{n}{k}` (also \\dbinom, \\tbinom, `\\binom52`) and `{n \\choose k}`."""
    pairs = []
    for match in _BINOM.finditer(text):
        top, end = _macro_argument(text, match.end())
        pairs.append((top, _macro_argument(text, end)[0]))
    for match in _CHOOSE.finditer(text):
        start, end = _enclosing_group(text, match.start(), match.end())
        pairs.append((text[start : match.start()], text[match.end() : end]))
    return pairs


def binomial_digits(n: int, k: int) -> float:
    """About how many digits C(n, k) has (sympy's value for a negative n included), without computing it."""
    if n < 0:
        n = k - n - 1  # |C(-m, k)| = C(m + k - 1, k)
    if k < 0 or k > n:
        return 1.0
    k = min(k, n - k)
    if k == 0:
        return 1.0
    if n > 2**53:  # beyond float precision: C(n, k) < n^k
        return k * math.log10(n) + 1
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(10) + 1


def _macro_argument(text: str, i: int) -> tuple[str, int]:
    """The argument of a LaTeX macro that starts at `i` (a brace group's content or one character), and
    where it ends."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i == len(text) or text[i] != "{":
        return text[i : i + 1], i + 1
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j], j + 1
    return text[i + 1 :], len(text)


def _enclosing_group(text: str, start: int, end: int) -> tuple[int, int]:
    """Bounds of the content of the brace group around text[start:end] (the whole text when there is none)."""
    depth, left = 0, 0
    for i in range(start - 1, -1, -1):
        depth += {"}": 1, "{": -1}.get(text[i], 0)
        if depth < 0:
            left = i + 1
            break
    depth, right = 0, len(text)
    for i in range(end, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            right = i
            break
    return left, right
