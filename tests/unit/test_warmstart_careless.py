"""The warm-start's careless demonstrations (the reference solution minus its last step) and its cache key."""

import random

import pytest

from sfpo_rl.data.arith import generate_problem
from sfpo_rl.tiny.warmstart import careless_solution, code_fingerprint, finishing


@pytest.mark.parametrize(
    "solution, careless",
    [
        ("12+5=17. 17-7=10. \\boxed{10}", "12+5=17. \\boxed{17}"),
        ("12+5=17. \\boxed{17}", "\\boxed{12}"),
        ("40*2=80. 80-9=71. 71+3=74. \\boxed{74}", "40*2=80. 80-9=71. \\boxed{71}"),
    ],
)
def test_careless_solution_drops_the_last_step(solution, careless):
    assert careless_solution(solution) == careless


def test_careless_answers_are_always_wrong_on_generated_problems():
    rng = random.Random(0)
    for _ in range(500):
        problem = generate_problem(rng, rng.choice((1, 2, 3, 4)))
        careless = careless_solution(problem.solution)
        boxed = int(careless.rsplit("{", 1)[1].rstrip("}"))
        assert boxed != problem.answer  # every step changes the value (amounts >= 1, factors 2 or 3)


def test_code_fingerprint_ignores_comments_and_docstrings_only():
    base = 'def f(x):\n    """Doc."""\n    return x + 1  # add one\n'
    assert code_fingerprint(base) == code_fingerprint('def f(x):\n    """Other doc."""\n    return x + 1\n')
    assert code_fingerprint(base) != code_fingerprint('def f(x):\n    """Doc."""\n    return x + 2\n')


def test_finishing_counts_responses_that_work_every_step_and_their_accuracy():
    responses = [
        "12+5=17. 17-7=10. \\boxed{10}",
        "12+5=17. \\boxed{17}",
        "3+4=8. 8-1=7. \\boxed{7}",
        "\\boxed{9}",
    ]
    stats = finishing(responses, levels=[2, 2, 2, 1], accs=[1.0, 0.0, 0.0, 1.0])
    assert stats == {"finished": 0.5, "acc_if_finished": 0.5}  # the 1st and 3rd finish; only the 1st is right
