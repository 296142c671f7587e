"""The built-in arithmetic task: deterministic per seed, train/val disjoint, reference solutions correct and
verified, random answers rejected."""

from __future__ import annotations

import random
import re

import pytest

from sfpo_rl.data import arith
from sfpo_rl.data.dataset import load_records
from sfpo_rl.rewards import arith_score, math_score

STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+)\.")


@pytest.fixture(scope="module")
def splits():
    # Level 1 has only 26 validation problems: 80 over four levels needs about 20 of them.
    return {split: arith.generate_split(split, n, seed=0) for split, n in (("train", 4000), ("val", 80))}


def test_generation_is_deterministic_per_seed():
    a = arith.generate_split("train", 300, seed=5)
    assert a == arith.generate_split("train", 300, seed=5)
    assert a != arith.generate_split("train", 300, seed=6)
    assert arith.generate_split("val", 50, seed=5) == arith.generate_split("val", 50, seed=5)


def test_train_and_val_never_share_a_problem(splits):
    train_keys = {p.key for p in splits["train"]}
    val_keys = [p.key for p in splits["val"]]
    assert not train_keys & set(val_keys)
    assert len(set(val_keys)) == len(val_keys)  # validation problems are distinct
    # The split follows the problem, not the seed: other seeds' validation problems are not in this training set.
    assert not train_keys & {p.key for p in arith.generate_split("val", 400, seed=1, levels=(2, 3))}
    # Every level is present in both splits.
    for split in splits.values():
        assert {p.level for p in split} == set(arith.LEVELS)


def test_reference_solutions_are_correct_and_verify(splits):
    for problem in splits["train"][:1000] + splits["val"]:
        steps = STEP.findall(problem.solution)
        assert len(steps) == problem.level
        start = int(re.search(r"has (\d+) ", problem.prompt).group(1))
        value = start
        for a, op, b, c in steps:
            assert int(a) == value
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert int(c) == value and 0 <= value <= 999
        assert value == problem.answer
        assert problem.key == str(start) + "".join(op + b for _, op, b, _ in steps)
        assert arith_score(problem.solution, str(problem.answer)) == {"score": 1.0, "acc": True}
    assert math_score(splits["val"][0].solution, str(splits["val"][0].answer))["acc"]


def test_random_answers_almost_never_verify(splits):
    rng = random.Random(0)
    problems = splits["val"]
    hits = sum(
        arith_score(f"\\boxed{{{rng.randint(0, 999)}}}", str(p.answer))["acc"]
        for p in problems
        for _ in range(5)
    )
    assert hits <= 0.01 * 5 * len(problems)
    # Someone else's answer (same distribution of values) rarely matches either.
    shuffled = [p.answer for p in problems]
    rng.shuffle(shuffled)
    assert sum(a == p.answer for a, p in zip(shuffled, problems)) <= 0.05 * len(problems)


def test_levels_can_be_weighted_and_are_checked():
    problems = arith.generate_split("train", 400, seed=0, levels=(1, 1, 1, 2))
    count1 = sum(p.level == 1 for p in problems)
    assert {p.level for p in problems} == {1, 2} and 250 < count1 < 350
    with pytest.raises(ValueError, match="arith level must be one of"):
        arith.generate_split("train", 5, levels=(7,))
    with pytest.raises(ValueError, match="arith split must be one of"):
        arith.generate_split("test", 5)
    with pytest.raises(ValueError, match="val_fraction"):
        arith.generate_split("val", 5, val_fraction=1.5)
    with pytest.raises(
        ValueError, match=r"cannot find 100 distinct val problems at levels \(1,\): level 1 ran out"
    ):
        arith.generate_split("val", 100, levels=(1,))


def test_validation_keeps_the_training_level_mix_when_a_level_runs_short():
    # The default levels' validation set: level 2 has about 940 validation problems, so distinctness bites.
    val = arith.generate_split("val", 1024, seed=0, levels=arith.DEFAULT_LEVELS)
    train = arith.generate_split("train", 4000, seed=0, levels=arith.DEFAULT_LEVELS)
    share = {
        name: sum(p.level == 2 for p in split) / len(split)
        for name, split in (("val", val), ("train", train))
    }
    assert abs(share["val"] - 0.5) < 0.04 and abs(share["train"] - 0.5) < 0.03, share
    assert len({p.key for p in val}) == 1024


def test_written_files_use_the_loader_format(tmp_path):
    train_file, val_file = arith.write_arith_dataset(tmp_path, 30, 10, seed=2)
    records = load_records(val_file)
    assert len(records) == 10 and len(load_records(train_file)) == 30
    first = records[0]
    problem = arith.generate_split("val", 10, seed=2)[0]
    assert (first.prompt, first.ground_truth, first.data_source) == (
        problem.prompt,
        str(problem.answer),
        "arith",
    )
    assert first.extra_info == {
        "split": "val",
        "index": 0,
        "level": problem.level,
        "solution": problem.solution,
    }
