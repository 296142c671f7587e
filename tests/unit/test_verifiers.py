"""Verifiers on hand-written cases, the paper's reward shaping, time limits in both modes, failure counting,
and custom verifier functions loaded from the config."""

from __future__ import annotations

import textwrap

import pytest

from sfpo_rl.rewards import (
    RewardConfig,
    RewardScorer,
    VerifierError,
    arith_score,
    get_verifier,
    ground_truth_problem,
    gsm8k_score,
    last_boxed,
    last_number,
    load_custom_verifier,
    math_score,
    score_responses,
    verifier_name,
)
from sfpo_rl.rewards.verifier_pool import ERROR, OK, TIMEOUT, score_with_timeout

# --- answer extraction -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{\\sqrt{2}}} done", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last one counts
        ("\\boxed{\\boxed{7}}", "7"),  # a box inside a box: the inner one is the last
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are literal
        ("$\\boxed 5$", "5"),
        ("\\fbox{x+1}", "x+1"),
        ("no answer here", None),
        ("\\boxed{12", None),  # truncated response: no answer
        ("\\boxedfoo{3}", None),
        ("\\framebox{5} is it", "5"),
        ("\\boxed{4} no: \\framebox[2cm][c]{6}", "6"),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He pays $1,200.", "1200"),
        ("-3 and 4.5", "4.5"),
        ("total: 12,345,678 units", "12345678"),
        ("\\boxed{70{,}000}", "70000"),  # LaTeX thousands separators
        ("so 1\\,234 in all", "1234"),
        ("it is 1,\\!234 or 2\u2009500", "2500"),
        ("none", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


# --- math (math-verify) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("1/2", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\frac12", "1/2"),
        ("\\dfrac{1}{2}", "0.5"),
        ("3\\sqrt{13}", "3\\sqrt{13}"),
        ("3\\sqrt{13}", "\\sqrt{117}"),
        ("(1, 3]", "(1,3]"),
        ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)"),
        ("\\{1,2,3\\}", "\\{3,2,1\\}"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
        ("x^2+1", "1+x^2"),
        ("\\boxed{7}", "7"),  # nested \boxed
        ("12", "\\boxed{12}"),  # a boxed ground truth is unwrapped
    ],
)
def test_math_accepts_equivalent_forms(answer, ground_truth):
    assert math_score(f"Working... so the answer is \\boxed{{{answer}}}.", ground_truth) == {
        "score": 1.0,
        "acc": True,
    }


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("2", "3"),
        ("[1, 3]", "(1,3]"),  # closed vs half-open interval
        ("\\{1,2\\}", "\\{1,2,3\\}"),
        ("\\sqrt{13}", "3\\sqrt{13}"),
        ("0.51", "1/2"),
        ("-\\frac{1}{2}", "\\frac{1}{2}"),
    ],
)
def test_math_rejects_wrong_answers(answer, ground_truth):
    assert math_score(f"\\boxed{{{answer}}}", ground_truth) == {"score": 0.1, "acc": False}


def test_math_shaping_options():
    right, wrong, unboxed = "\\boxed{4}", "\\boxed{5}", "the answer is 4"
    # The paper's default: 1.0 correct / 0.1 boxed but wrong / 0.0 no boxed answer.
    assert [math_score(r, "4")["score"] for r in (right, wrong, unboxed)] == [1.0, 0.1, 0.0]
    # Plain 0/1.
    assert [math_score(r, "4", format_score=0.0)["score"] for r in (right, wrong, unboxed)] == [1.0, 0.0, 0.0]
    # Truncated box: no answer.
    assert math_score("\\boxed{4", "4") == {"score": 0.0, "acc": False}


def test_math_shaping_through_reward_config():
    outcomes = score_responses(
        ["\\boxed{4}", "\\boxed{5}", "4"],
        ["4"] * 3,
        ["math"] * 3,
        config={"verifier_kwargs": {"math": {"format_score": 0.0}}, "timeout_mode": "signal"},
    )
    assert [o.score for o in outcomes] == [1.0, 0.0, 0.0]
    assert [o.acc for o in outcomes] == [True, False, False]


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("5x - 7y + 11z + 4 = 0", "0"),  # any expression "= 0" matched 0 (math-verify keeps the right side)
        ("7 = 0", "0"),
        ("1 = 2", "2"),
        ("2x = 10", "10"),  # the left side is not a name: x is 5, not 10
        ("x = 7 = 0", "0"),  # a chain through a false equation
        ("5 = 5", "5"),
        ("\\{2x = 5, 3y = 7\\}", "\\{5, 7\\}"),  # inside a set as well
    ],
)
def test_math_equations_are_not_read_as_their_right_side(answer, ground_truth):
    assert math_score(f"\\boxed{{{answer}}}", ground_truth) == {"score": 0.1, "acc": False}


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("x = 5", "5"),
        ("x_1 = 3", "3"),
        ("\\theta = 30^\\circ", "30"),
        ("f(x) = 2x + 1", "2x+1"),
        ("AB = 5", "5"),  # a segment: letters side by side
        ("x = y = 5", "5"),
        ("a = 5, b = 3", "5, 3"),
        ("2x + 3 = y", "y = 2x + 3"),  # the ground truth is an equation: equations are compared
    ],
)
def test_math_accepts_an_equation_that_names_the_answer(answer, ground_truth):
    assert math_score(f"\\boxed{{{answer}}}", ground_truth) == {"score": 1.0, "acc": True}


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("x^2-5x+6 \\to 0", "0"),  # any relation math-verify cannot read used to leave only its right side
        ("x^2-5x+6 \\implies 0", "0"),
        ("x^2-5x+6 \\Rightarrow 0", "0"),
        ("x^2-5x+6 \\mapsto 0", "0"),
        ("x^2-5x+6 \\sim 0", "0"),
        ("x^2-5x+6 := 0", "0"),
        ("7 \\to 5", "5"),
    ],
)
def test_math_relations_are_not_read_as_their_right_side(answer, ground_truth):
    assert math_score(f"\\boxed{{{answer}}}", ground_truth) == {"score": 0.1, "acc": False}


@pytest.mark.parametrize(
    "answer",
    ["5 \\vee 7", "5 \\\\ 7", "5 \\text{ (or possibly } 7 \\text{)}"],
    ids=["vee", "newline", "text"],
)
@pytest.mark.parametrize("ground_truth", ["5", "7"])
def test_math_a_hedge_between_two_answers_is_wrong(answer, ground_truth):
    assert math_score(f"\\boxed{{{answer}}}", ground_truth) == {"score": 0.1, "acc": False}


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("50\\%", "50"),
        ("50", "50\\%"),
        ("50\\%", "50\\%"),
        ("5 = x", "5"),  # the name on the right, as in x = 5
        ("x := 5", "5"),
        ("5\u200b", "5"),  # a zero-width space
        ("\u200b5", "5"),
    ],
)
def test_math_accepts_percentages_reversed_equations_and_invisible_characters(answer, ground_truth):
    assert math_score(f"\\boxed{{{answer}}}", ground_truth) == {"score": 1.0, "acc": True}


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("70{,}000", "70000"),
        ("1\\,234", "1234"),
        ("104.", "104"),  # a sentence's full stop inside the box
        ("\\textbf{(073)}", "73"),  # AIME style
        ("\\text{ 12 }", "12"),
        ("90°", "90"),
        ("90^\\circ.", "90"),
        ("70 sqrt(2)", "70\\sqrt{2}"),
        ("70 \\sqrt(2)", "70\\sqrt{2}"),
        ("sqrt(x+1)/2", "\\frac{\\sqrt{x+1}}{2}"),
        ("70√2", "70\\sqrt{2}"),
        ("2 pi", "2\\pi"),
        ("−3", "-3"),
    ],
)
def test_math_reads_common_ways_of_writing_an_answer(answer, ground_truth):
    assert math_score(f"so \\boxed{{{answer}}}", ground_truth) == {"score": 1.0, "acc": True}
    assert math_score(f"\\framebox{{{answer}}}", ground_truth)["acc"]


@pytest.mark.parametrize(
    "box",
    [
        "",
        "  ",
        "?",
        "??",
        "...",
        "\\ldots",
        "\\text{I do not know}",
        "I don't know.",
        "\\text{Unknown}",
        "N/A",
    ],
)
@pytest.mark.parametrize("verifier", [math_score, arith_score])
def test_a_box_without_an_answer_earns_nothing(box, verifier):
    assert verifier(f"I tried. \\boxed{{{box}}}", "3") == {"score": 0.0, "acc": False}


def test_a_wrong_word_answer_still_earns_the_format_score():
    assert math_score("\\boxed{\\text{none}}", "3") == {"score": 0.1, "acc": False}
    assert math_score("\\boxed{\\text{none}}", "\\text{none}") == {"score": 1.0, "acc": True}


NESTED_FRAC = "1"
for _ in range(20):
    NESTED_FRAC = f"\\frac{{{NESTED_FRAC}}}{{2}}"
PATHOLOGICAL = {
    "14 nested braces": "{" * 14 + "1" + "}" * 14,  # 8 s in math-verify's parser
    "frac 20 deep": NESTED_FRAC,
    "parentheses 12 deep": "(" * 12 + "1" + ")" * 12,
    "600 characters": "+".join(["x"] * 300),
}
HUGE = ["10^{10^{10}}", "9^{9^{9}}", "2^{2^{30}}", "1000000!", "(10^{10})!", "10^{100000}"]


@pytest.mark.parametrize("answer", list(PATHOLOGICAL.values()), ids=list(PATHOLOGICAL))
def test_answers_too_long_or_deep_for_the_parser_are_compared_as_text(monkeypatch, answer):
    from sfpo_rl.rewards import verifiers

    def parse_refused(content):
        raise AssertionError(f"the parser was given {content[:40]!r}")

    assert math_score("\\boxed{1}", "\\frac12") == {"score": 0.1, "acc": False}  # the gold is parsed first
    monkeypatch.setattr(verifiers, "_parse_boxed", parse_refused)
    assert math_score(f"\\boxed{{{answer}}}", "\\frac12") == {"score": 0.1, "acc": False}
    # Written exactly like the ground truth, it is still right.
    assert math_score(f"\\boxed{{{answer}}}", answer)["acc"]


@pytest.mark.parametrize("answer", HUGE)
def test_numbers_too_large_to_compare_are_never_computed(monkeypatch, answer):
    import math_verify

    def verify_refused(gold, pred, **kwargs):
        raise AssertionError(f"verify was given {pred}")

    monkeypatch.setattr(math_verify, "verify", verify_refused)
    assert math_score(f"\\boxed{{{answer}}}", "5") == {"score": 0.1, "acc": False}
    assert math_score(f"\\boxed{{{answer}}}", answer)["acc"]


def test_ordinary_powers_and_factorials_are_still_compared_by_value():
    assert math_score("\\boxed{2^{10}}", "1024")["acc"]
    assert math_score("\\boxed{1234567^{2}}", "1524155677489")["acc"]
    assert math_score("\\boxed{10!}", "3628800")["acc"]
    assert math_score("\\boxed{\\sqrt{2}^{2}}", "2")["acc"]


def test_a_pathological_sample_does_not_hold_a_verifier_for_the_whole_limit():
    answers = [PATHOLOGICAL["14 nested braces"], "4", HUGE[1], "1/2"]
    outcomes = score_responses(
        [f"\\boxed{{{a}}}" for a in answers],
        ["4", "4", "4", "0.5"],
        ["math"] * 4,
        config={"timeout_s": 5.0, "num_processes": 1},
    )
    assert [o.status for o in outcomes] == [OK] * 4  # before the caps: a timeout, then a killed child
    assert [o.score for o in outcomes] == [0.1, 1.0, 0.1, 1.0]


# Long answers whose clean-up was quadratic (seconds to minutes) and short ones that math-verify evaluated for
# seconds or that overflowed Python's 4300-digit int-to-text limit: each must score well inside a time limit.
SLOW_TO_CLEAN = {
    "sqrt( over 64 KB": "sqrt(x)" * 9400,
    "nested sqrt( over 64 KB": "sqrt(" * 6600 + "1" + ")" * 6600,
    "nested \\text{ over 140 KB": "\\text{" * 12000 + "5" + "}" * 12000,
}
SLOW_TO_EVALUATE = {
    "definite integral": "\\int_0^1 x^{1000}e^x dx",
    "indefinite integral": "\\int x^{50}\\sin x\\,dx",
    "product to a million": "\\prod_{k=1}^{10^6} k",
    "binomial of 30,000 digits": "\\binom{100000}{50000}",
    "binomial as \\choose": "{100000 \\choose 50000}",
    "binomial of a power": "\\binom{2^{17}}{2^{16}}",
}


@pytest.mark.parametrize(
    "answer", [*SLOW_TO_CLEAN.values(), *SLOW_TO_EVALUATE.values()], ids=[*SLOW_TO_CLEAN, *SLOW_TO_EVALUATE]
)
def test_slow_answers_are_scored_well_inside_the_time_limit(answer):
    outcome = score_with_timeout(math_score, f"so \\boxed{{{answer}}}", "5", timeout_s=2.0)
    assert (outcome.status, outcome.score, outcome.acc) == (OK, 0.1, False), outcome.detail
    # Written exactly as the ground truth, it is right.
    assert score_with_timeout(math_score, f"\\boxed{{{answer}}}", answer, timeout_s=2.0).acc


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("\\int_0^1 x^2 dx", "\\frac13"),  # restating what was to be computed is not computing it
        ("\\sum_{k=1}^{10} k", "55"),
        ("\\prod_{k=1}^{5} k", "120"),
        ("\\lim_{x \\to 0} \\frac{\\sin x}{x}", "1"),
        ("\\frac{d}{dx} x^2", "2x"),
    ],
)
def test_an_unevaluated_integral_sum_product_or_limit_is_not_its_value(answer, ground_truth):
    assert math_score(f"\\boxed{{{answer}}}", ground_truth) == {"score": 0.1, "acc": False}


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [("\\binom{10}{5}", "252"), ("\\binom{1000000}{2}", "499999500000"), ("{6 \\choose 3}", "20")],
)
def test_ordinary_binomials_are_still_compared_by_value(answer, ground_truth):
    assert math_score(f"\\boxed{{{answer}}}", ground_truth)["acc"]


@pytest.mark.parametrize("verifier", [math_score, gsm8k_score, arith_score])
@pytest.mark.parametrize("ground_truth", [None, "", "  "])
def test_a_missing_ground_truth_is_an_error_not_a_match(verifier, ground_truth):
    with pytest.raises(ValueError, match="no ground truth"):
        verifier("\\boxed{None}", ground_truth)
    outcomes = score_responses(
        ["\\boxed{None}", "\\boxed{}"], [ground_truth] * 2, ["math"] * 2, config={"timeout_mode": "signal"}
    )
    assert [(o.score, o.acc, o.status) for o in outcomes] == [(0.0, False, ERROR)] * 2
    assert "no ground truth" in outcomes[0].detail


# --- gsm8k and arith ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "ground_truth", "correct"),
    [
        ("48/2 = 24 clips in May.\n#### 1,234", "1234", True),
        ("He pays $1,200.", "1200", True),
        ("#### $18.00", "18", True),
        ("#### 18.5", "18", False),
        ("The answer is 7 apples, not 8.", "8", True),  # the last number counts
        ("The answer is 8 apples, not 7.", "8", False),
        ("#### 72\nthen 5 more words 9", "72", True),  # the number after '####', not the last one
        ("so \\boxed{-3}", "-3", True),
        ("no number at all", "3", False),
        # A GSM8K ground truth with its worked solution: its '####' answer is what counts.
        ("#### 72", "48/2 = <<48/2=24>>24 clips.\n#### 72", True),
        ("So she earns \\boxed{70{,}000} dollars.", "70000", True),  # read as 000 before
        ("In all 1\\,234 apples.", "1234", True),
        ("#### 1,\\!234", "1234", True),
        ("#### 18 (that is 3 per day)", "18", True),  # the number the line starts with
        ("#### \u22125", "5", False),  # a typographic minus sign: -5
        ("#### \u22125", "-5", True),
        ("#### 5e3", "3", False),  # 5000
        ("#### 5e3", "5000", True),
        ("#### 5-7", "-7", False),  # a range (or 5 - 7): not the number -7
        ("#### 5-7", "5", False),
        ("#### 18 or 19", "18", False),
        ("#### 18\u200b", "18", True),
        ("#### 2 + 3 = 5", "5", True),  # an expression: its result
        ("so \\boxed{5-7}", "7", False),  # a box is read like the "####" line
        ("so \\boxed{x_1 = 18}", "18", True),
    ],
)
def test_gsm8k(response, ground_truth, correct):
    result = gsm8k_score(response, ground_truth)
    assert result == {"score": float(correct), "acc": correct}


@pytest.mark.parametrize(
    ("response", "score"),
    [
        ("12+5=17. 17-7=10. \\boxed{10}", 1.0),
        ("\\boxed{ 10 }", 1.0),
        ("\\boxed{11}", 0.1),
        ("\\boxed{10.0}", 0.1),  # the task's answers are integers, written as such
        ("\\boxed{ten}", 0.1),
        ("\\boxed{10} \\boxed{9}", 0.1),  # the last box counts
        ("17-7=10.", 0.0),
        ("\\boxed{10", 0.0),
    ],
)
def test_arith_exact_answer(response, score):
    assert arith_score(response, "10")["score"] == score
    assert arith_score(response, "10")["acc"] == (score == 1.0)


def test_registry_by_data_source():
    assert verifier_name("arith") == "arith"
    assert verifier_name("openai/gsm8k") == "gsm8k"
    assert verifier_name("HuggingFaceH4/MATH-500") == "math"
    assert verifier_name("aime_2024") == "math"
    assert verifier_name("math_dapo") == "math"
    assert get_verifier("gsm8k") is gsm8k_score
    with pytest.raises(VerifierError, match="no verifier for data_source 'poetry'.*custom_function"):
        verifier_name("poetry")


@pytest.mark.parametrize(
    "source",
    [
        "HuggingFaceH4/MATH-500",
        "math500",
        "aime24",
        "AI-MO/aimo-validation-aime",
        "amc23",
        "AI-MO/aimo-validation-amc",
        "minerva",
        "minerva_math",
        "math-ai/minervamath",
        "olympiadbench",
        "OlympiadBench",
        "olympiad_bench",
        "Hothan/OlympiadBench",
    ],
)
def test_the_papers_validation_sets_go_to_the_math_verifier(source):
    assert verifier_name(source) == "math"


@pytest.mark.parametrize(
    ("source", "ground_truth", "problem"),
    [
        ("math", "\\frac{1}{2}", None),
        ("math", "  ", "is empty"),
        ("math", "?", "holds no answer"),
        ("math", "\\boxed{}", "holds no answer"),
        ("gsm8k", "1,234", None),
        ("gsm8k", "It is 5.\n#### 5", None),
        ("gsm8k", "five", "is not a number"),
        ("arith", "-12", None),
        ("arith", "12.5", "is not an integer"),
    ],
)
def test_ground_truths_are_checked_by_the_verifier_that_will_read_them(source, ground_truth, problem):
    found = ground_truth_problem(source, ground_truth)
    assert found == problem if problem is None else found.startswith(problem)


# --- time limits and failures ------------------------------------------------------------------------------

CUSTOM = textwrap.dedent(
    """
    import signal
    import time

    def spin(solution_str, ground_truth, extra_info=None):
        if solution_str == "hang":
            while True:  # pure Python: SIGALRM interrupts it
                pass
        return float(solution_str == ground_truth)

    def stubborn(solution_str, ground_truth, extra_info=None):
        if solution_str == "hang":  # ignores the alarm: only killing the process stops it
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            time.sleep(60)
        return float(solution_str == ground_truth)

    def raises(solution_str, ground_truth, extra_info=None):
        if solution_str == "boom":
            raise RuntimeError("verifier bug")
        return 1.0

    def not_a_number(solution_str, ground_truth, extra_info=None):
        return {"text": "yes", "missing": 1.0} if solution_str == "dict" else "correct"

    def verl_style(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
        return {"score": (solution_str == ground_truth) + bonus, "acc": data_source == "mine"}

    value = 3
    """
)


@pytest.fixture()
def custom_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(CUSTOM)
    return path


def custom_config(custom_file, name, **kwargs):
    return RewardConfig(custom_function=f"{custom_file}:{name}", **kwargs)


def test_signal_mode_cuts_a_hang_and_continues(custom_file):
    scorer = RewardScorer(custom_config(custom_file, "spin", timeout_s=0.3, timeout_mode="signal"))
    outcomes = scorer.score(["a", "hang", "b"], ["a", "x", "b"], ["any"] * 3)
    assert [o.status for o in outcomes] == [OK, TIMEOUT, OK]
    assert [o.score for o in outcomes] == [1.0, 0.0, 1.0]


def test_score_with_timeout_counts_the_limit():
    def slow(**_):
        while True:
            pass

    outcome = score_with_timeout(slow, "x", "y", timeout_s=0.2)
    assert (outcome.score, outcome.acc, outcome.status) == (0.0, False, TIMEOUT)


@pytest.mark.parametrize("name", ["spin", "stubborn"])
def test_process_mode_cuts_a_hang_and_restarts_the_child(custom_file, name):
    """spin: the child's own alarm stops it; stubborn: ignores the alarm, the pool kills and replaces the child."""
    scorer = RewardScorer(custom_config(custom_file, name, timeout_s=0.5, num_processes=1))
    try:
        outcomes = scorer.score(["a", "hang", "b", "c"], ["a", "x", "b", "z"], ["any"] * 4)
        assert [o.status for o in outcomes] == [OK, TIMEOUT, OK, OK]
        assert [o.score for o in outcomes] == [1.0, 0.0, 1.0, 0.0]
        assert scorer._pool.restarts == (1 if name == "stubborn" else 0)
        # The pool keeps working after the restart.
        assert [o.score for o in scorer.score(["q"], ["q"], ["any"])] == [1.0]
    finally:
        scorer.close()


@pytest.mark.parametrize("mode", ["signal", "process"])
@pytest.mark.parametrize(
    ("name", "responses", "statuses", "details"),
    [
        ("raises", ["ok", "boom"], [OK, ERROR], ["", "RuntimeError: verifier bug"]),
        ("not_a_number", ["dict", "str"], [ERROR, ERROR], ["without 'score'", "finite number"]),
    ],
)
def test_raising_or_non_numeric_verifiers_score_zero_and_are_counted(
    custom_file, mode, name, responses, statuses, details
):
    scorer = RewardScorer(custom_config(custom_file, name, timeout_mode=mode))
    try:
        outcomes = scorer.score(responses, ["g", "g"], ["any", "any"])
    finally:
        scorer.close()
    assert [o.status for o in outcomes] == statuses
    for outcome, detail in zip(outcomes, details):
        assert detail in outcome.detail
        if outcome.status == ERROR:
            assert (outcome.score, outcome.acc) == (0.0, False)


def test_process_mode_scores_in_parallel_children_like_signal_mode():
    responses = [f"\\boxed{{{i % 7}}}" for i in range(40)] + ["no box"]
    truths = [str(i % 5) for i in range(41)]
    sources = ["arith", "math", "gsm8k", "arith"] * 10 + ["math"]
    here = score_responses(responses, truths, sources, config={"timeout_mode": "signal"})
    pooled = score_responses(responses, truths, sources, config={"num_processes": 2})
    assert pooled == here
    assert sum(o.acc for o in here) == sum(i % 7 == i % 5 for i in range(40))


# --- custom verifier functions -----------------------------------------------------------------------------


def test_custom_function_from_a_file_and_a_module(custom_file):
    fn = load_custom_verifier(f"{custom_file}:verl_style")
    assert fn(data_source="mine", solution_str="a", ground_truth="a") == {"score": 1, "acc": True}
    assert load_custom_verifier("sfpo_rl.rewards.verifiers:arith_score") is arith_score
    # verl-style functions get data_source by keyword; custom_kwargs are passed through.
    outcomes = score_responses(
        ["a", "b"],
        ["a", "a"],
        ["mine", "other"],
        config={
            "custom_function": f"{custom_file}:verl_style",
            "custom_kwargs": {"bonus": 0.5},
            "timeout_mode": "signal",
        },
    )
    assert [(o.score, o.acc) for o in outcomes] == [(1.5, True), (0.5, False)]


def test_custom_function_from_a_module_in_process_mode():
    outcomes = score_responses(
        ["\\boxed{3}", "\\boxed{4}"],
        ["3", "3"],
        ["anything", "anything"],
        config={"custom_function": "sfpo_rl.rewards.verifiers:arith_score"},
    )
    assert [o.score for o in outcomes] == [1.0, 0.1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must look like 'package.module:function'"),
        ("module:", "must look like"),
        (":fn", "must look like"),
        ("does/not/exist.py:fn", "does not exist"),
        ("sfpo_rl_no_such_module:fn", "cannot import module 'sfpo_rl_no_such_module'"),
        ("sfpo_rl.rewards.verifiers:no_such_fn", "has no attribute 'no_such_fn'"),
        ("{file}:value", "'value' is a int, not a function"),
        ("{broken}:fn", "importing .*broken.py failed: ZeroDivisionError"),
    ],
)
def test_bad_custom_specs_fail_clearly(custom_file, spec, message):
    broken = custom_file.with_name("broken.py")
    broken.write_text("x = 1 / 0\n")
    spec = spec.format(file=custom_file, broken=broken)
    with pytest.raises(VerifierError, match=f"reward.custom_function='.*': .*{message}|{message}"):
        load_custom_verifier(spec)


def test_custom_function_signature_and_options_checked_up_front(custom_file):
    bad = custom_file.with_name("bad_sig.py")
    bad.write_text("def score(text):\n    return 1.0\n")
    with pytest.raises(VerifierError, match="cannot be called as fn\\(solution_str=..."):
        RewardScorer({"custom_function": f"{bad}:score"})
    with pytest.raises(VerifierError, match="unexpected keyword argument 'weight'"):
        RewardScorer({"custom_function": f"{custom_file}:spin", "custom_kwargs": {"weight": 2}})
    with pytest.raises(VerifierError, match="reward.verifier_kwargs.poetry: no verifier named 'poetry'"):
        RewardScorer({"verifier_kwargs": {"poetry": {}}})
    with pytest.raises(VerifierError, match="reward.verifier_kwargs.math.*format"):
        RewardScorer({"verifier_kwargs": {"math": {"formatscore": 0.0}}})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout_s": 0}, "reward.timeout_s must be a number > 0"),
        ({"timeout_mode": "thread"}, "reward.timeout_mode must be one of process, signal"),
        ({"num_processes": 0}, "reward.num_processes must be an integer >= 1"),
        ({"timeout": 3}, "reward.timeout: unknown option"),
    ],
)
def test_bad_reward_options(options, message):
    with pytest.raises(VerifierError, match=message):
        RewardConfig.from_any(options)
