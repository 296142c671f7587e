"""Reward robustness: scoring throughput on MATH-style responses with and without 1% pathological answers,
what one pathological answer costs, and how long the verifier pool takes to recover from a SIGKILLed child.

The responses are generated here, never read from a benchmark file: ten kinds of competition-style problems
(fractions, radicals, roots, intervals, large counts, angles, polynomials, multiples of pi, AIME integers,
linear equations) with a worked solution of a few hundred to a few thousand characters ending in a boxed
answer that is right (in one of several equivalent ways of writing it), wrong, missing, or a refusal; each
prompt has n samples sharing its ground truth, as in training. The pathological answers are the short ones
that stalled math-verify (deep nesting, huge numbers, long expressions, integrals and products it evaluated
for seconds, binomials it computed exactly), long ones whose clean-up was quadratic, and equation hacks.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sfpo_rl.bench.common import bench_main, median, row
from sfpo_rl.rewards import RewardScorer, math_score
from sfpo_rl.rewards.verifier_pool import ERROR, TIMEOUT

NAME = "reward_robustness"


@dataclass(frozen=True)
class Problem:
    gold: str  # the ground truth, as a dataset would hold it
    right: list[str]  # equivalent ways a response may write it
    wrong: list[str]
    steps: list[str]  # lines of a worked solution


def _fraction_sum(rng: random.Random) -> Problem:
    a, b, c, d = rng.randint(1, 9), rng.randint(2, 12), rng.randint(1, 9), rng.randint(2, 12)
    total = Fraction(a, b) + Fraction(c, d)
    p, q = total.numerator, total.denominator
    right = [f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}", f"{p}/{q}"] if q > 1 else [str(p), f"{p}.0"]
    steps = [
        f"We add $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$ over the common denominator ${b * d}$.",
        f"This gives $\\frac{{{a * d} + {c * b}}}{{{b * d}}} = \\frac{{{a * d + c * b}}}{{{b * d}}}$.",
        f"Dividing numerator and denominator by their greatest common divisor leaves ${p}/{q}$.",
    ]
    return Problem(f"\\frac{{{p}}}{{{q}}}" if q > 1 else str(p), right, [f"\\frac{{{p + 1}}}{{{q}}}"], steps)


def _radical(rng: random.Random) -> Problem:
    k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11, 13])
    steps = [
        f"We factor ${k * k * m} = {k}^2 \\cdot {m}$.",
        f"Hence $\\sqrt{{{k * k * m}}} = \\sqrt{{{k}^2}} \\cdot \\sqrt{{{m}}} = {k}\\sqrt{{{m}}}$.",
    ]
    right = [
        f"{k}\\sqrt{{{m}}}",
        f"{k} \\sqrt{{{m}}}",
        f"\\sqrt{{{k * k * m}}}",
        f"{k} sqrt({m})",
        f"{k}√{m}",
    ]
    return Problem(f"{k}\\sqrt{{{m}}}", right, [f"{k + 1}\\sqrt{{{m}}}", f"{k}\\sqrt{{{m + 1}}}"], steps)


def _roots(rng: random.Random) -> Problem:
    r, s = rng.sample(range(-9, 10), 2)
    steps = [
        f"The quadratic is $x^2 {-(r + s):+d}x {r * s:+d} = 0$.",
        f"It factors as $(x {-r:+d})(x {-s:+d}) = 0$, so the roots are ${r}$ and ${s}$.",
    ]
    right = [f"{r}, {s}", f"{s}, {r}", f"x = {r}, x = {s}"]
    return Problem(f"{r}, {s}", right, [f"{r}, {s + 1}", f"{r - 1}, {s}"], steps)


def _interval(rng: random.Random) -> Problem:
    a, b = sorted(rng.sample(range(-10, 11), 2))
    steps = [
        f"The first inequality gives $x > {a}$ and the second gives $x \\le {b}$.",
        f"Together, $x$ lies in $({a}, {b}]$.",
    ]
    return Problem(f"({a}, {b}]", [f"({a},{b}]", f"({a}, {b}]"], [f"[{a}, {b}]", f"({a}, {b})"], steps)


def _large_count(rng: random.Random) -> Problem:
    n = rng.randint(11, 999) * 1000 + rng.choice([0, rng.randint(1, 999)])
    grouped = f"{n:,}"
    steps = [
        f"Each of the {n // 1000} crates holds 1,000 items, and {n % 1000} more are loose.",
        f"So there are ${grouped.replace(',', '{,}')}$ items in all.",
    ]
    right = [str(n), grouped.replace(",", "{,}"), grouped, grouped.replace(",", "\\,"), f"{n}."]
    return Problem(str(n), right, [str(n // 10), str(n + 1000)], steps)


def _angle(rng: random.Random) -> Problem:
    x = rng.choice([15, 20, 30, 36, 40, 45, 60, 72, 75, 80])
    steps = [
        f"The angles of the triangle sum to $180^\\circ$, and the other two are ${90}^\\circ$ and ${90 - x}^\\circ$.",
        f"So the remaining angle is ${x}^\\circ$.",
    ]
    right = [str(x), f"{x}^\\circ", f"{x}°", f"\\theta = {x}^\\circ"]
    return Problem(str(x), right, [f"{90 - x}^\\circ" if 90 - x != x else "1", f"{x + 5}"], steps)


def _polynomial(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    steps = [
        f"We expand $(x + {a})(x + {b}) = x^2 + {a}x + {b}x + {a * b}$.",
        f"Collecting terms gives $x^2 + {a + b}x + {a * b}$.",
    ]
    right = [f"x^2 + {a + b}x + {a * b}", f"x^{{2}}+{a + b}x+{a * b}", f"{a * b} + {a + b}x + x^2"]
    return Problem(f"x^2+{a + b}x+{a * b}", right, [f"x^2 + {a + b}x - {a * b}", f"x^2 + {a * b}"], steps)


def _circle(rng: random.Random) -> Problem:
    r = rng.randint(2, 12)
    steps = [f"The area of a circle of radius ${r}$ is $\\pi r^2 = \\pi \\cdot {r}^2$."]
    right = [f"{r * r}\\pi", f"{r * r} \\pi", f"\\pi \\cdot {r * r}", f"{r * r}π", f"{r * r} pi"]
    return Problem(f"{r * r}\\pi", right, [f"{r * r + 1}\\pi", f"{r * r}"], steps)


def _aime(rng: random.Random) -> Problem:
    n = rng.randint(1, 999)
    steps = [f"Reducing modulo 1000, the remainder is ${n}$."]
    right = [str(n), f"{n:03d}", f"\\textbf{{({n:03d})}}", f"{n}."]
    return Problem(str(n), right, [str((n * 7 + 3) % 1000), str(n + 1)], steps)


def _linear(rng: random.Random) -> Problem:
    x, a = rng.randint(-9, 9), rng.randint(2, 9)
    b = rng.randint(-20, 20)
    steps = [f"From ${a}x {b:+d} = {a * x + b}$ we get ${a}x = {a * x}$, so $x = {x}$."]
    wrong = [
        str(x + 1),
        f"{a}x = {a * x}" if a * x != x else str(-x - 1),
    ]  # an equation is not its right side
    return Problem(str(x), [str(x), f"x = {x}", f"x={x}"], wrong, steps)


KINDS: list[Callable[[random.Random], Problem]] = [
    _fraction_sum,
    _radical,
    _roots,
    _interval,
    _large_count,
    _angle,
    _polynomial,
    _circle,
    _aime,
    _linear,
]
FILLER = [
    "Let us first restate what is asked and name the unknown quantity.",
    "We check the conditions of the problem one at a time before computing anything.",
    "It helps to simplify the expression before substituting the given values.",
    "We double-check this step, since a sign error here would change the result.",
    "Now we combine the partial results obtained above.",
]
REFUSALS = ["\\boxed{}", "\\boxed{?}", "\\boxed{\\text{I do not know}}"]


def _nested(template: str, depth: int, inner: str = "1") -> str:
    for _ in range(depth):
        inner = template.format(inner)
    return inner


# Answers that stalled the verifier: short ones in math-verify (parse time about doubles per nesting level;
# huge numbers are computed exactly inside C code; integrals and products are evaluated for seconds to minutes;
# binomials are computed exactly while parsed), long ones in the clean-up before the length cap (quadratic in
# the length); and equations or relations that used to match their right side. The first of each family
# come first: a mixed batch takes them in this order.
NESTING = {
    "braces nested 14": _nested("{{{}}}", 14),
    "frac nested 20": _nested("\\frac{{{}}}{{2}}", 20),
    "parentheses nested 12": _nested("({})", 12),
}
PATHOLOGICAL = {
    "braces nested 14": NESTING["braces nested 14"],
    "9^{9^{9}}": "9^{9^{9}}",
    "\\text{ nested over 140 KB": "\\text{" * 12000 + "5" + "}" * 12000,
    "\\int_0^1 x^{1000}e^x dx": "\\int_0^1 x^{1000}e^x dx",
    "\\binom{100000}{50000}": "\\binom{100000}{50000}",
    "x^2-5x+6 \\implies 0": "x^2-5x+6 \\implies 0",
    "frac nested 20": NESTING["frac nested 20"],
    "parentheses nested 12": NESTING["parentheses nested 12"],
    "10^{10^{10}}": "10^{10^{10}}",
    "(10^{10})!": "(10^{10})!",
    "sqrt( repeated over 64 KB": "sqrt(x)" * 9400,
    "\\int x^{50}\\sin x\\,dx": "\\int x^{50}\\sin x\\,dx",
    "\\prod_{k=1}^{10^6} k": "\\prod_{k=1}^{10^6} k",
    "600-character sum": "+".join(["x"] * 300),
    "5x - 7y + 11z + 4 = 0": "5x - 7y + 11z + 4 = 0",
    "7 \\to 5": "7 \\to 5",
}


def make_batch(
    prompts: int, n: int, seed: int, pathological_fraction: float
) -> tuple[list[str], list[str], list[str]]:
    """(responses, ground truths, kind of each sample) for `prompts` x `n` samples; a share of them (at least
    one when the fraction is positive) get a pathological final answer."""
    rng = random.Random(seed)
    responses, golds, kinds = [], [], []
    for p in range(prompts):
        problem = KINDS[p % len(KINDS)](rng)
        for _ in range(n):
            lines = [rng.choice(FILLER) for _ in range(rng.randint(2, 12))] + problem.steps
            draw = rng.random()
            if draw < 0.5:
                kind, ending = "right", f"The final answer is $\\boxed{{{rng.choice(problem.right)}}}$."
            elif draw < 0.85:
                kind, ending = "wrong", f"The final answer is $\\boxed{{{rng.choice(problem.wrong)}}}$."
            elif draw < 0.95:
                kind, ending = "no box", "I ran out of room before finishing the"  # a truncated response
            else:
                kind, ending = "refusal", f"I am not certain. {rng.choice(REFUSALS)}"
            responses.append("\n".join([*lines, ending]))
            golds.append(problem.gold)
            kinds.append(kind)
    count = math.ceil(len(responses) * pathological_fraction) if pathological_fraction > 0 else 0
    answers = list(PATHOLOGICAL.values())
    for j, i in enumerate(rng.sample(range(len(responses)), count)):
        responses[i] = (
            responses[i].rsplit("\n", 1)[0] + f"\nSo the answer is $\\boxed{{{answers[j % len(answers)]}}}$."
        )
        kinds[i] = "pathological"
    return responses, golds, kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompts", type=int, default=None, help="prompts (x --n samples); 64 quick, 256 full"
    )
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats; 3 quick, 5 full")
    parser.add_argument("--seed", type=int, default=0)


def _timed_score(scorer: RewardScorer, batch: tuple[list[str], list[str], list[str]]) -> tuple[float, list]:
    responses, golds, _ = batch
    start = time.perf_counter()
    outcomes = scorer.score(responses, golds, ["math"] * len(responses))
    return time.perf_counter() - start, outcomes


def _throughput(clean, mixed, processes: int, repeats: int) -> dict[str, Any]:
    """Responses/s on the clean and the mixed batch, interleaved repeats on one warm pool."""
    scorer = RewardScorer({"num_processes": processes})
    try:
        _timed_score(scorer, (clean[0][:64], clean[1][:64], None))  # start the children, import math-verify
        times: dict[str, list[float]] = {"clean": [], "mixed": []}
        outcomes: dict[str, list] = {}
        for _ in range(repeats):
            for name, batch in (("clean", clean), ("mixed", mixed)):
                seconds, outcomes[name] = _timed_score(scorer, batch)
                times[name].append(seconds)
        restarts = scorer._pool.restarts
    finally:
        scorer.close()
    rates = {name: len(clean[0]) / median(t) for name, t in times.items()}
    return {"seconds": times, "responses_per_s": rates, "outcomes": outcomes, "restarts": restarts}


def _pathological_costs() -> dict[str, tuple[float, float, float]]:
    """(wall seconds, CPU seconds, score) of math_score on each pathological answer against the ground truth 5,
    in this process: no pool and no time limit, so a stall or an error would show here. The CPU time tells
    what a loaded machine adds to the wall time."""
    math_score("\\boxed{1}", "1")  # imports and parser set-up are not part of any answer's cost
    costs = {}
    for name, answer in PATHOLOGICAL.items():
        start, cpu = time.perf_counter(), time.process_time()
        score = math_score(f"so \\boxed{{{answer}}}", "5")["score"]
        costs[name] = (time.perf_counter() - start, time.process_time() - cpu, score)
    return costs


def _uncapped_costs(timeout_s: float) -> dict[str, float]:
    """What the nesting cases cost through the pool with the length / nesting caps lifted (the old behaviour)."""
    lifted = {"math": {"max_answer_chars": 10**9, "max_answer_depth": 10**9}}
    scorer = RewardScorer({"timeout_s": timeout_s, "verifier_kwargs": lifted})
    costs = {}
    try:
        scorer.score(["\\boxed{1}"], ["1"], ["math"])
        for name, answer in NESTING.items():
            start = time.perf_counter()
            (outcome,) = scorer.score([f"\\boxed{{{answer}}}"], ["5"], ["math"])
            costs[name] = (time.perf_counter() - start, outcome.status)
    finally:
        scorer.close()
    return costs


def _kill_recovery(batch, repeats: int) -> dict[str, Any]:
    """Seconds a SIGKILLed child costs: killed while idle (before a batch) and in the middle of a batch,
    against the same batch scored with no kill; and the samples each kill cost."""
    scorer = RewardScorer({"num_processes": 1})
    idle, mid, lost_idle, lost_mid, base = [], [], [], [], []
    missed = 0
    try:
        _timed_score(scorer, batch)  # warm
        for _ in range(repeats):
            seconds, _ = _timed_score(scorer, batch)
            base.append(seconds)

            os.kill(scorer._pool._children[0].proc.pid, signal.SIGKILL)
            scorer._pool._children[0].proc.wait()
            seconds, outcomes = _timed_score(scorer, batch)
            idle.append(seconds)
            lost_idle.append(sum(o.status in (ERROR, TIMEOUT) for o in outcomes))

            pid = scorer._pool._children[0].proc.pid
            killer = threading.Timer(median(base) / 4, os.kill, (pid, signal.SIGKILL))
            killer.start()
            seconds, outcomes = _timed_score(scorer, batch)
            killer.join()
            lost = sum(o.status in (ERROR, TIMEOUT) for o in outcomes)
            if lost:
                mid.append(seconds)
                lost_mid.append(lost)
            else:  # the batch ended before the kill landed: let the next call replace the child, untimed
                missed += 1
                _timed_score(scorer, batch)
        restarts = scorer._pool.restarts
    finally:
        scorer.close()
    return {
        "batch_s": base,
        "idle_kill_batch_s": idle,
        "mid_batch_kill_batch_s": mid,
        "idle_kill_lost": lost_idle,
        "mid_batch_kill_lost": lost_mid,
        "mid_batch_kills_that_landed_after_the_batch": missed,
        "restarts": restarts,
    }


def measure(clean, mixed, repeats: int) -> dict[str, Any]:
    """Each pathological answer's cost (caps on, then the nesting cases with them lifted), throughput on one
    and on two verifier processes, and recovery from killed children."""
    costs = _pathological_costs()
    seconds = {name: s for name, (s, _, _) in costs.items()}
    slowest = max(seconds, key=seconds.get)
    print(f"[bench] {NAME}: pathological answers scored, slowest {seconds[slowest]:.3f} s", flush=True)
    uncapped = _uncapped_costs(timeout_s=2.0)
    runs = {p: _throughput(clean, mixed, p, repeats) for p in (1, 2)}
    print(f"[bench] {NAME}: throughput measured", flush=True)
    recovery = _kill_recovery((clean[0][:128], clean[1][:128], None), repeats)
    return {"costs": costs, "uncapped": uncapped, "runs": runs, "recovery": recovery}


def summary_rows(m: dict[str, Any], by_kind: dict[str, list[bool]], repeats: int) -> list[dict[str, Any]]:
    costs, uncapped, recovery = m["costs"], m["uncapped"], m["recovery"]
    one, two = m["runs"][1], m["runs"][2]
    mixed_outcomes = one["outcomes"]["mixed"]
    idle_extra = median(recovery["idle_kill_batch_s"]) - median(recovery["batch_s"])
    mid = recovery["mid_batch_kill_batch_s"]
    mid_extra = median(mid) - median(recovery["batch_s"]) if mid else None
    limit = 10.0  # reward.timeout_s default
    seconds = {name: s for name, (s, _, _) in costs.items()}
    slowest = max(seconds, key=seconds.get)
    return [
        row("responses/s, clean batch (1 verifier process)", one["responses_per_s"]["clean"], "resp/s"),
        row(
            "responses/s, 1% pathological mixed in (1 process)",
            one["responses_per_s"]["mixed"],
            "resp/s",
            f"{one['responses_per_s']['mixed'] / one['responses_per_s']['clean']:.2f}x the clean rate; "
            f"{sum(o.status == TIMEOUT for o in mixed_outcomes)} timeouts, {one['restarts']} restarts",
        ),
        row("responses/s, clean batch (2 processes)", two["responses_per_s"]["clean"], "resp/s"),
        row(
            "responses/s, 1% pathological mixed in (2 processes)",
            two["responses_per_s"]["mixed"],
            "resp/s",
            f"{two['responses_per_s']['mixed'] / two['responses_per_s']['clean']:.2f}x the clean rate",
        ),
        row(
            "slowest pathological answer",
            seconds[slowest],
            "s",
            f"{slowest}; math_score in this process, without the pool's time limit (reward.timeout_s "
            f"{limit:g} s); {costs[slowest][1]:.3f} s of CPU; "
            f"{sum(score >= 1.0 for _, _, score in costs.values())} of {len(costs)} accepted "
            "as right against 5 (must be 0)",
        ),
        row(
            "nesting cases with the caps lifted (timeout_s=2)",
            sum(status == TIMEOUT for _, status in uncapped.values()),
            f"of {len(uncapped)} timed out",
            f"{sum(s for s, _ in uncapped.values()):.1f} s for the {len(uncapped)}: without the caps a stalled "
            "answer holds a verifier for the whole limit, then its child is restarted",
        ),
        row(
            "right answers accepted (generated equivalent forms)",
            sum(by_kind["right"]) / len(by_kind["right"]),
            "fraction",
        ),
        row("wrong answers accepted", sum(by_kind["wrong"]) / len(by_kind["wrong"]), "fraction", "must be 0"),
        row(
            "recovery from a child killed while idle",
            idle_extra,
            "s",
            f"extra time of the next 128-response batch; samples lost: {max(recovery['idle_kill_lost'])}",
        ),
        row(
            "recovery from a child killed mid-batch",
            mid_extra,
            "s",
            f"extra time of that 128-response batch; samples lost: {max(recovery['mid_batch_kill_lost'], default=0)} "
            f"(the one being scored); {len(mid)} of {repeats} kills landed mid-batch",
        ),
    ]


def report(args: argparse.Namespace, prompts: int, repeats: int, clean, m: dict[str, Any]) -> dict[str, Any]:
    costs, uncapped, runs = m["costs"], m["uncapped"], m["runs"]
    by_kind: dict[str, list[bool]] = {}
    for kind, outcome in zip(clean[2], runs[1]["outcomes"]["clean"]):
        by_kind.setdefault(kind, []).append(outcome.acc)
    return {
        "rows": summary_rows(m, by_kind, repeats),
        "tables": {
            "seconds and score per pathological answer (math_score against 5, no time limit)": (
                ["answer", "seconds", "CPU seconds", "score"],
                [[name, *cost] for name, cost in costs.items()],
            ),
            "accepted as right, by kind of generated response (clean batch)": (
                ["kind", "samples", "accepted"],
                [[kind, len(accs), sum(accs) / len(accs)] for kind, accs in sorted(by_kind.items())],
            ),
        },
        "notes": [
            "Throughput runs score the clean and the mixed batch alternately on one warm pool; the ratio is the "
            "figure to read.",
            "Recovery: the batch's wall time after the kill minus its median wall time without one (a fresh child "
            "imports the verifiers before it scores).",
        ],
        "config": {"prompts": prompts, "n": args.n, "repeats": repeats, "seed": args.seed},
        "throughput": {p: {k: v for k, v in r.items() if k != "outcomes"} for p, r in runs.items()},
        "pathological": {
            name: {"seconds": s, "cpu_s": cpu, "score": score} for name, (s, cpu, score) in costs.items()
        },
        "uncapped_nesting": {name: {"seconds": s, "status": st} for name, (s, st) in uncapped.items()},
        "recovery": m["recovery"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    prompts = args.prompts or (64 if args.quick else 256)
    repeats = args.repeats or (3 if args.quick else 5)
    clean = make_batch(prompts, args.n, args.seed, 0.0)
    mixed = make_batch(prompts, args.n, args.seed, 0.01)
    size = len(clean[0])
    n_bad = mixed[2].count("pathological")
    print(f"[bench] {NAME}: {size} responses per batch, {n_bad} pathological in the mixed one", flush=True)
    return report(args, prompts, repeats, clean, measure(clean, mixed, repeats))


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
