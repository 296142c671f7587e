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
    gsm8k_score,
    last_boxed,
    last_number,
    load_custom_verifier,
    math_score,
    score_responses,
    verifier_name,
)
from sfpo_rl.rewards.timeout import ERROR, OK, TIMEOUT, score_with_timeout

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
