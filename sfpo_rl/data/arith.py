"""The built-in task: short multi-step integer arithmetic word problems with worked solutions.

    prompt:   "Ann has 12 apples. Ann gets 5 more. Ann gives away 7. How many apples now?\\n"
    solution: "12+5=17. 17-7=10. \\boxed{10}"

Level L has L operations (level 1: one add/subtract of 1-9 on a start of at most 20; levels 2 and 3: two and
three such steps from at most 30 and 50; level 4: four steps of up to 19 from at most 99, some doublings and
triplings, values up to 999). The embedded default uses levels 2 and 3 (`DEFAULT_LEVELS`): arithmetic the tiny
model learns to do reliably, and enough distinct problems for a large validation set (level 1 has only a few
hundred). Train and validation never share a problem: a problem's split is fixed by a hash of its canonical
form ("12+5-7"), whatever its wording. Records use the loader's format with
data_source "arith"; `extra_info["solution"]` is the reference solution (the SFT target).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfpo_rl.data.io import write_records

DATA_SOURCE = "arith"
SPLITS = ("train", "val")
LEVELS = (1, 2, 3, 4)
DEFAULT_LEVELS = (2, 3)
NAMES = ("Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Ivy", "Kim", "Max", "Ned", "Sam")
ITEMS = ("apples", "books", "cards", "coins", "eggs", "pens", "shells", "stamps")
ADD_PHRASES = ("gets {} more", "finds {} more", "buys {} more")
SUB_PHRASES = ("gives away {}", "loses {}", "sells {}")
MUL_PHRASES = {2: "doubles them", 3: "triples them"}
# Per level: largest start value, largest added / subtracted amount, may multiply.
_LEVEL_LIMITS = {1: (20, 9, False), 2: (30, 9, False), 3: (50, 9, False), 4: (99, 19, True)}
_MAX_VALUE = 999
# Draws of one level without a usable problem before it counts as exhausted: even the rarest level-1 problem
# (about 1 in 500 draws) turns up well within this many.
_MAX_MISSES = 20_000


@dataclass(frozen=True)
class ArithProblem:
    prompt: str
    solution: str
    answer: int
    level: int
    key: str  # canonical form, e.g. "12+5-7": what decides the split and identifies duplicates


def generate_problem(rng: random.Random, level: int) -> ArithProblem:
    if level not in _LEVEL_LIMITS:
        raise ValueError(f"arith level must be one of {LEVELS}, got {level!r}")
    max_start, max_step, may_multiply = _LEVEL_LIMITS[level]
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, max_start)
    sentences = [f"{name} has {value} {items}."]
    steps, key = [], str(value)
    for _ in range(level):
        if may_multiply and value * 2 <= _MAX_VALUE and rng.random() < 0.25:
            factor = 2 if value * 3 > _MAX_VALUE else rng.choice((2, 3))
            new_value, phrase, op, amount = value * factor, MUL_PHRASES[factor], "*", factor
        elif value > 1 and (rng.random() < 0.5 or value == _MAX_VALUE):
            amount = rng.randint(1, min(max_step, value - 1))
            new_value, phrase, op = value - amount, rng.choice(SUB_PHRASES).format(amount), "-"
        else:
            amount = rng.randint(1, min(max_step, _MAX_VALUE - value))
            new_value, phrase, op = value + amount, rng.choice(ADD_PHRASES).format(amount), "+"
        sentences.append(f"{name} {phrase}.")
        steps.append(f"{value}{op}{amount}={new_value}.")
        key += f"{op}{amount}"
        value = new_value
    prompt = " ".join([*sentences, f"How many {items} now?"]) + "\n"
    solution = " ".join([*steps, f"\\boxed{{{value}}}"])
    return ArithProblem(prompt, solution, value, level, key)


def split_of(key: str, val_fraction: float) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"


def generate_split(
    split: str,
    num_problems: int,
    seed: int = 0,
    levels: Sequence[int] = LEVELS,
    val_fraction: float = 0.1,
) -> list[ArithProblem]:
    """`num_problems` problems of `split`, each level drawn uniformly from `levels` (repeat a level to weight
    it), then a problem of that level. Validation problems are distinct; training problems may repeat (level 1
    has only a few hundred). Drawing the level first keeps the level mix of both splits the same even when a
    level's validation problems start to run out."""
    if split not in SPLITS:
        raise ValueError(f"arith split must be one of {SPLITS}, got {split!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"arith val_fraction must be in (0, 1), got {val_fraction!r}")
    rng = random.Random(f"arith-{split}-{seed}")
    problems: list[ArithProblem] = []
    seen: set[str] = set()
    while len(problems) < num_problems:
        level = rng.choice(levels)
        for _ in range(_MAX_MISSES):  # many misses in a row: this level has run out of problems
            problem = generate_problem(rng, level)
            if split_of(problem.key, val_fraction) == split and not (split == "val" and problem.key in seen):
                break
        else:
            raise ValueError(
                f"cannot find {num_problems} distinct {split} problems at levels {tuple(levels)}: level {level} "
                f"ran out after {len(problems)} problems"
            )
        seen.add(problem.key)
        problems.append(problem)
    return problems


def to_record(problem: ArithProblem, split: str, index: int) -> dict[str, Any]:
    return {
        "prompt": problem.prompt,
        "ground_truth": str(problem.answer),
        "data_source": DATA_SOURCE,
        "extra_info": {"split": split, "index": index, "level": problem.level, "solution": problem.solution},
    }


def write_arith_dataset(
    out_dir: str | Path,
    num_train: int,
    num_val: int,
    seed: int = 0,
    levels: Sequence[int] = LEVELS,
    val_fraction: float = 0.1,
) -> tuple[Path, Path]:
    """Write train.jsonl and val.jsonl under `out_dir`; returns their paths."""
    paths = []
    for split, n in (("train", num_train), ("val", num_val)):
        problems = generate_split(split, n, seed, levels, val_fraction)
        paths.append(
            write_records(
                (to_record(p, split, i) for i, p in enumerate(problems)), Path(out_dir) / f"{split}.jsonl"
            )
        )
    return paths[0], paths[1]
