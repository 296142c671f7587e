"""A study is data: a YAML file naming the arms, the learning rates, the seeds, the step budget, the comparisons
and the decision rules (`load_study` reads and checks it; `plan` lists its runs). Written before the runs, it is
the protocol in executable form; `sfpo-rl-study` runs, resumes and analyses it (sfpo_rl/experiments/runner.py).

    name: GRPO vs SFPO on my task           # the report's title
    steps: 40                               # trainer.total_steps of every run
    overrides: [model=hf, model.path=/models/qwen, data=files, ...]   # every run (optional)
    learning_rates: [1e-6, 3e-6]
    arms:                                   # each a set of Hydra overrides; the label is used in tables and plots
      grpo: {label: GRPO, overrides: [algorithm=grpo], seeds: 5}
      sfpo: {label: SFPO, overrides: [algorithm=sfpo], seeds: 5}
    comparisons:
      - {title: SFPO against GRPO, kind: same_lr, pairs: {sfpo: grpo},
         endpoints: [final, rollouts], decide: [final, rollouts]}
    step_metrics:                           # per-step metrics summarised per arm (descriptive, optional)
      zero_adv: {metric: sampling/zero_adv_group_frac, label: zero-advantage share, percent: true,
                 windows: [[1, 40], [31, 40]], plot: true}

A run is `sfpo-rl-train` with the study's overrides, the arm's, `actor.optimizer.lr=<lr>`, `trainer.seed=<s>`,
`data.seed=<s>` and `trainer.total_steps=<steps>`, in `<runs>/<arm>_lr<lr>_seed<s>` (the lr spelled as in the
YAML). Every field is described in `FIELDS` below; a wrong one stops `load_study` with the file and the field
named (exit 2 from the command line), before any run starts.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# What a comparison can report. Each has a decision rule (a claim only when the whole 95% interval says so), except
# `seconds` (wall-clock on a shared machine: reported, not decided on) and `best` / `gap` (descriptive).
ENDPOINTS = {
    "final": "final accuracy difference, Welch 95% interval",
    "best": "best (peak) accuracy difference, Welch 95% interval",
    "drop": "difference of the largest falls from the runs' running peaks, Welch 95% interval",
    "collapse": "collapsed runs (drop >= collapse_at) out of the cell's runs, two-sided Fisher exact test",
    "rollouts": "rollouts to first reach the baseline's best seed-mean accuracy, ratio, 95% bootstrap interval",
    "seconds": "training seconds to first reach it, ratio, 95% bootstrap interval",
    "gap": "the largest gap between the two seed-mean curves over the validation points",
}
DECIDABLE = ("final", "best", "drop", "collapse", "rollouts")
COMPARISON_KINDS = ("same_lr", "best_lr")
DECISION_RULES = {
    "smallest_collapse_lr": "the smallest lr at which any of `arms` collapses, and the next stage's lrs from it",
    "stabilises": "an arm collapses less often or loses less from its peak than its baseline, and ends no lower",
    "equivalence": "supported / contradicted / inconclusive: the final-accuracy interval against +-margin points",
    "improves": "the claim holds when the arm is better on a decided endpoint and worse on none; fails when it is "
    "worse on any; otherwise no difference shown",
}
# A step metric's optional count of steps: the condition a step's value meets.
COUNT_CONDITIONS = {
    "at_least": lambda value, bound: value >= bound,
    "at_most": lambda value, bound: value <= bound,
    "above": lambda value, bound: value > bound,
    "below": lambda value, bound: value < bound,
}
# The runner sets these for every run; an arm or the study may not.
RESERVED = ("actor.optimizer.lr", "trainer.seed", "data.seed", "trainer.total_steps", "trainer.run_dir")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class StudyError(ValueError):
    """The study file is wrong; the message names the file and the field."""


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    overrides: tuple[str, ...]
    seeds: int


@dataclass(frozen=True)
class LearningRate:
    value: float
    text: str  # as written in the YAML: run directory names, overrides, tables


@dataclass(frozen=True)
class Comparison:
    title: str
    kind: str  # same_lr: each pair at every lr; best_lr: each arm at its best lr against the baseline at its best
    pairs: tuple[tuple[str, str], ...]  # (arm, baseline)
    label: str  # how the table headers name the baseline ("vs <label>")
    endpoints: tuple[str, ...]
    decide: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    rule: str
    comparison: int  # index into Study.comparisons
    arms: tuple[str, ...] = ()  # smallest_collapse_lr
    divisors: tuple[float, ...] = ()  # smallest_collapse_lr: the next stage runs at L* / d for each d
    margin: float = 5.0  # equivalence, in points
    claim: str = ""  # improves: what holds when the arm is better (e.g. "SFPO helps on DAPO")
    counterclaim: str = ""  # improves: what is said when it is worse


@dataclass(frozen=True)
class StepCount:
    condition: str  # a key of COUNT_CONDITIONS
    bound: float
    label: str  # what a counted step is, in the report ("steps that used every generation round")

    def counts(self, value: float) -> bool:
        return COUNT_CONDITIONS[self.condition](value, self.bound)


@dataclass(frozen=True)
class StepMetric:
    """A metric every training step logs (a metrics.jsonl key), summarised per arm: over each window of steps
    the mean of each run's mean with a Student-t 95% interval over seeds, and the largest value of any run; a
    count of the steps that meet a condition; optionally a figure of its seed mean against step."""

    name: str  # names its figure: per_step_<name>.png
    metric: str
    label: str
    arms: tuple[str, ...]  # the arms it is summarised for (all when the file names none)
    windows: tuple[tuple[int, int], ...]  # (first, last) steps, inclusive
    percent: bool = False  # a fraction shown in percent
    plot: bool = False
    count: StepCount | None = None


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    steps: int
    learning_rates: tuple[LearningRate, ...]
    arms: tuple[Arm, ...]
    comparisons: tuple[Comparison, ...] = ()
    decisions: tuple[Decision, ...] = ()
    overrides: tuple[str, ...] = ()
    runs: Path = Path("outputs/study")
    out: Path = Path(".")
    report_name: str = "report"
    protocol: str | None = None
    collapse_at: float | None = None  # points; enables drop / collapsed per run
    shared_machine: bool = False
    notes: tuple[str, ...] = field(default=())
    step_metrics: tuple[StepMetric, ...] = ()

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    @property
    def shown_path(self) -> str:
        """The file as reports name it: relative to the working directory when it lies below it."""
        relative = os.path.relpath(self.path.resolve())
        return str(self.path.resolve()) if relative.startswith("..") else relative

    def lr(self, text: str) -> LearningRate:
        return next(lr for lr in self.learning_rates if lr.text == text)


@dataclass(frozen=True)
class Run:
    arm: Arm
    lr: LearningRate
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.arm.name, self.lr.text, self.seed)

    @property
    def cell(self) -> tuple[str, str]:
        return (self.arm.name, self.lr.text)

    def overrides(self, study: Study) -> list[str]:
        """The run's overrides after the study's: the arm's, then what the runner sets."""
        return [
            *study.overrides,
            *self.arm.overrides,
            f"actor.optimizer.lr={self.lr.text}",
            f"trainer.seed={self.seed}",
            f"data.seed={self.seed}",
            f"trainer.total_steps={study.steps}",
        ]


def run_name(arm: str, lr_text: str, seed: int) -> str:
    return f"{arm}_lr{lr_text}_seed{seed}"


def plan(study: Study) -> list[Run]:
    """Every run, ordered so that an interrupted study is balanced: seed by seed (every arm and lr of seed 0,
    then of seed 1, ...), the largest lr first within a seed, arms in the file's order."""
    lrs = sorted(study.learning_rates, key=lambda lr: lr.value, reverse=True)
    return [
        Run(arm, lr, seed)
        for seed in range(max(arm.seeds for arm in study.arms))
        for lr in lrs
        for arm in study.arms
        if seed < arm.seeds
    ]


# ------------------------------------------------------------------------------------------------ loading
FIELDS = {
    "name": "the study's title",
    "steps": "trainer.total_steps of every run",
    "learning_rates": "actor.optimizer.lr values; each arm runs at every one",
    "arms": "name -> {label, overrides, seeds}",
    "seeds": "seeds per arm where an arm does not say (seeds 0..n-1)",
    "overrides": "Hydra overrides for every run, before the arm's",
    "comparisons": "list of {title, kind, pairs | baseline, label, endpoints, decide}",
    "decisions": "list of {rule, ...}: the study's decision rules",
    "runs": "where the runs train (relative to the working directory; --runs overrides it)",
    "out": "the report's directory, relative to this file (--out overrides it)",
    "report_name": "the report's file names: <report_name>.md / .json",
    "protocol": "the protocol this study implements (a path, quoted in the report)",
    "collapse_at": "points: a run whose drop from its running peak reaches this has collapsed",
    "shared_machine": "true when other work shared the machine (a warning on every wall-clock figure)",
    "notes": "lines quoted at the end of the report",
    "step_metrics": "name -> {metric, label, arms, windows, percent, plot, count}: per-step metrics summarised",
}
ARM_FIELDS = ("label", "overrides", "seeds")
COMPARISON_FIELDS = ("title", "kind", "pairs", "baseline", "label", "endpoints", "decide")
DECISION_FIELDS = ("rule", "comparison", "arms", "divisors", "margin", "claim", "counterclaim")
STEP_METRIC_FIELDS = ("metric", "label", "arms", "windows", "percent", "plot", "count")


class _Checker:
    """Reads one study file's fields, raising StudyError("<file>: <field>: <problem>")."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str) -> None:
        raise StudyError(f"{self.path}: {where}: {problem}")

    def mapping(self, value: Any, where: str, known: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(where, f"must be a mapping, got {_show(value)}")
        for key in value:
            if key not in known:
                self.fail(
                    f"{where}.{key}" if where else str(key), f"unknown field; valid: {', '.join(known)}"
                )
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty string, got {_show(value)}")
        return value

    def positive_int(self, value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail(where, f"must be a positive integer, got {_show(value)}")
        return value

    def number(self, value: Any, where: str, positive: bool = True) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(where, f"must be a number, got {_show(value)}")
        if positive and value <= 0:
            self.fail(where, f"must be positive, got {value!r}")
        return float(value)

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(where, f"must be a list of strings, got {_show(value)}")
        return tuple(value)

    def overrides(self, value: Any, where: str) -> tuple[str, ...]:
        found = self.strings(value, where)
        for i, override in enumerate(found):
            key = override.split("=", 1)[0].lstrip("+~")
            if key in RESERVED:
                self.fail(f"{where}[{i}]", f"{key} is set by the study runner (learning_rates, seeds, steps)")
        return found

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"must be true or false, got {_show(value)}")
        return value

    def choice(self, value: Any, where: str, allowed: Sequence[str]) -> str:
        if value not in allowed:
            self.fail(where, f"must be one of {', '.join(allowed)}, got {_show(value)}")
        return value

    def arm_name(self, value: Any, where: str, arms: Mapping[str, Arm]) -> str:
        if value not in arms:
            self.fail(where, f"no arm named {_show(value)}; arms: {', '.join(arms)}")
        return value


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, Mapping | list) else type(value).__name__


def load_study(path: str | Path) -> Study:
    """The study in `path`, checked field by field (StudyError naming the file and the field otherwise)."""
    path = Path(path)
    check = _Checker(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StudyError(f"{path}: cannot read the study file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    raw = check.mapping(raw, "", list(FIELDS))
    for required in ("name", "steps", "learning_rates", "arms"):
        if required not in raw:
            check.fail(required, f"missing ({FIELDS[required]})")

    default_seeds = check.positive_int(raw["seeds"], "seeds") if "seeds" in raw else None
    if not isinstance(raw["arms"], Mapping) or not raw["arms"]:
        check.fail(
            "arms",
            f"must be a mapping of at least one arm (name: {{label, overrides, seeds}}), got {_show(raw['arms'])}",
        )
    arms: dict[str, Arm] = {}
    for name, spec in raw["arms"].items():
        where = f"arms.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            check.fail(
                where, "an arm's name must be letters, digits, '_', '.' or '-' (it names run directories)"
            )
        spec = check.mapping(spec, where, ARM_FIELDS)
        if "seeds" not in spec and default_seeds is None:
            check.fail(f"{where}.seeds", "missing (or give the study a default `seeds`)")
        arms[name] = Arm(
            name=name,
            label=check.text(spec.get("label", name), f"{where}.label"),
            overrides=check.overrides(spec.get("overrides", []), f"{where}.overrides"),
            seeds=check.positive_int(spec.get("seeds", default_seeds), f"{where}.seeds"),
        )

    comparisons = tuple(
        _comparison(check, spec, f"comparisons[{i}]", arms)
        for i, spec in enumerate(_list(check, raw, "comparisons"))
    )
    collapse_at = check.number(raw["collapse_at"], "collapse_at") if "collapse_at" in raw else None
    for i, comparison in enumerate(comparisons):
        if "collapse" in comparison.endpoints and collapse_at is None:
            check.fail(f"comparisons[{i}].endpoints", "`collapse` needs the study's `collapse_at` (points)")
    decisions = tuple(
        _decision(check, spec, f"decisions[{i}]", arms, comparisons, collapse_at)
        for i, spec in enumerate(_list(check, raw, "decisions"))
    )
    notes = check.strings(raw["notes"], "notes") if "notes" in raw else ()
    shared = check.flag(raw.get("shared_machine", False), "shared_machine")
    steps = check.positive_int(raw["steps"], "steps")
    step_metrics = raw.get("step_metrics", {})
    if not isinstance(step_metrics, Mapping):
        check.fail(
            "step_metrics", f"must be a mapping (name: {{metric, label, ...}}), got {_show(step_metrics)}"
        )
    return Study(
        path=path,
        name=check.text(raw["name"], "name"),
        steps=steps,
        learning_rates=_learning_rates(check, raw["learning_rates"]),
        arms=tuple(arms.values()),
        comparisons=comparisons,
        decisions=decisions,
        overrides=check.overrides(raw.get("overrides", []), "overrides"),
        runs=Path(check.text(raw.get("runs", f"outputs/{path.stem}"), "runs")),
        out=path.parent / check.text(raw.get("out", "."), "out"),
        report_name=check.text(raw.get("report_name", "report"), "report_name"),
        protocol=check.text(raw["protocol"], "protocol") if "protocol" in raw else None,
        collapse_at=collapse_at,
        shared_machine=shared,
        notes=notes,
        step_metrics=tuple(
            _step_metric(check, name, spec, f"step_metrics.{name}", arms, steps)
            for name, spec in step_metrics.items()
        ),
    )


def _list(check: _Checker, raw: Mapping[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        check.fail(key, f"must be a list, got {_show(value)}")
    return value


def _learning_rates(check: _Checker, value: Any) -> tuple[LearningRate, ...]:
    """Numbers, or numbers written as text (YAML reads `3e-4` as a string); anything else is refused, so a
    placeholder such as `L*/3` keeps a study from running until it is filled in."""
    if not isinstance(value, list) or not value:
        check.fail("learning_rates", f"must be a non-empty list, got {_show(value)}")
    lrs = []
    for i, item in enumerate(value):
        where = f"learning_rates[{i}]"
        if isinstance(item, str):
            try:
                number = float(item)
            except ValueError:
                check.fail(
                    where, f"{item!r} is not a number (a placeholder to fill in before the study can run?)"
                )
            text = item.strip()
        else:
            number = check.number(item, where)
            text = f"{number:g}"
        if not (math.isfinite(number) and number > 0):
            check.fail(where, f"must be a positive number, got {item!r}")
        lrs.append(LearningRate(number, text))
    if len({lr.value for lr in lrs}) < len(lrs):
        check.fail("learning_rates", "a learning rate is listed twice")
    return tuple(lrs)


def _comparison(check: _Checker, spec: Any, where: str, arms: Mapping[str, Arm]) -> Comparison:
    spec = check.mapping(spec, where, COMPARISON_FIELDS)
    for required in ("title", "kind", "endpoints"):
        if required not in spec:
            check.fail(f"{where}.{required}", "missing")
    kind = check.choice(spec["kind"], f"{where}.kind", COMPARISON_KINDS)
    if ("pairs" in spec) == ("baseline" in spec):
        check.fail(
            where, "give either `pairs` (arm: baseline, ...) or `baseline` (every other arm against it)"
        )
    if "baseline" in spec:
        baseline = check.arm_name(spec["baseline"], f"{where}.baseline", arms)
        pairs = tuple((arm, baseline) for arm in arms if arm != baseline)
    else:
        raw_pairs = check.mapping(spec["pairs"], f"{where}.pairs", list(arms))
        pairs = tuple(
            (arm, check.arm_name(base, f"{where}.pairs.{arm}", arms)) for arm, base in raw_pairs.items()
        )
        if not pairs or any(arm == base for arm, base in pairs):
            check.fail(f"{where}.pairs", "needs at least one pair of two different arms")
    baselines = {base for _, base in pairs}
    default_label = arms[next(iter(baselines))].label if len(baselines) == 1 else "baseline"
    endpoints = check.strings(spec["endpoints"], f"{where}.endpoints")
    for name in endpoints:
        check.choice(name, f"{where}.endpoints", list(ENDPOINTS))
    decide = check.strings(spec.get("decide", []), f"{where}.decide")
    for name in decide:
        check.choice(name, f"{where}.decide", [e for e in endpoints if e in DECIDABLE])
    return Comparison(
        title=check.text(spec["title"], f"{where}.title"),
        kind=kind,
        pairs=pairs,
        label=check.text(spec.get("label", default_label), f"{where}.label"),
        endpoints=endpoints,
        decide=decide,
    )


def _decision(
    check: _Checker,
    spec: Any,
    where: str,
    arms: Mapping[str, Arm],
    comparisons: Sequence[Comparison],
    collapse_at: float | None,
) -> Decision:
    spec = check.mapping(spec, where, DECISION_FIELDS)
    rule = check.choice(spec.get("rule"), f"{where}.rule", list(DECISION_RULES))
    if rule == "smallest_collapse_lr":
        if collapse_at is None:
            check.fail(where, "smallest_collapse_lr needs the study's `collapse_at` (points)")
        names = check.strings(spec.get("arms", []), f"{where}.arms")
        if not names:
            check.fail(f"{where}.arms", "name the arms whose collapse sets L*")
        divisors = spec.get("divisors", [1])
        if not isinstance(divisors, list) or not divisors:
            check.fail(f"{where}.divisors", f"must be a non-empty list of numbers, got {_show(divisors)}")
        return Decision(
            rule,
            comparison=-1,
            arms=tuple(check.arm_name(a, f"{where}.arms", arms) for a in names),
            divisors=tuple(check.number(d, f"{where}.divisors") for d in divisors),
        )
    index = spec.get("comparison", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(comparisons):
        check.fail(
            f"{where}.comparison", f"must index `comparisons` (0..{len(comparisons) - 1}), got {_show(index)}"
        )
    if rule == "improves":
        if not comparisons[index].decide:
            check.fail(where, f"improves needs comparisons[{index}] to decide at least one endpoint")
        return Decision(
            rule,
            comparison=index,
            claim=check.text(spec.get("claim", "better"), f"{where}.claim"),
            counterclaim=check.text(spec.get("counterclaim", "worse"), f"{where}.counterclaim"),
        )
    needed = {"stabilises": ("final", "drop", "collapse"), "equivalence": ("final",)}[rule]
    missing = [e for e in needed if e not in comparisons[index].endpoints]
    if missing:
        check.fail(where, f"{rule} needs comparisons[{index}] to report {', '.join(missing)}")
    if comparisons[index].kind != "same_lr":
        check.fail(where, f"{rule} applies to a same_lr comparison")
    margin = check.number(spec.get("margin", 5.0), f"{where}.margin")
    return Decision(rule, comparison=index, margin=margin)


def _step_metric(
    check: _Checker, name: Any, spec: Any, where: str, arms: Mapping[str, Arm], steps: int
) -> StepMetric:
    if not isinstance(name, str) or not NAME.match(name):
        check.fail(where, "a step metric's name must be letters, digits, '_', '.' or '-' (it names a figure)")
    spec = check.mapping(spec, where, STEP_METRIC_FIELDS)
    if "metric" not in spec:
        check.fail(f"{where}.metric", "missing (a key every training step writes to metrics.jsonl)")
    metric = check.text(spec["metric"], f"{where}.metric")
    names = check.strings(spec.get("arms", list(arms)), f"{where}.arms")
    windows = spec.get("windows", [[1, steps]])
    if not isinstance(windows, list) or not windows:
        check.fail(
            f"{where}.windows", f"must be a non-empty list of [first, last] steps, got {_show(windows)}"
        )
    for i, window in enumerate(windows):
        if (
            not isinstance(window, list)
            or len(window) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) for w in window)
            or not 1 <= window[0] <= window[1] <= steps
        ):
            check.fail(f"{where}.windows[{i}]", f"must be [first, last] with 1 <= first <= last <= {steps}")
    count = None
    if "count" in spec:
        raw = check.mapping(spec["count"], f"{where}.count", [*COUNT_CONDITIONS, "label"])
        conditions = [c for c in COUNT_CONDITIONS if c in raw]
        if len(conditions) != 1 or "label" not in raw:
            check.fail(f"{where}.count", f"needs one of {', '.join(COUNT_CONDITIONS)} (a number) and a label")
        bound = check.number(raw[conditions[0]], f"{where}.count.{conditions[0]}", positive=False)
        count = StepCount(conditions[0], bound, check.text(raw["label"], f"{where}.count.label"))
    return StepMetric(
        name=name,
        metric=metric,
        label=check.text(spec.get("label", metric), f"{where}.label"),
        arms=tuple(check.arm_name(a, f"{where}.arms", arms) for a in names),
        windows=tuple((first, last) for first, last in windows),
        percent=check.flag(spec.get("percent", False), f"{where}.percent"),
        plot=check.flag(spec.get("plot", False), f"{where}.plot"),
        count=count,
    )


# ------------------------------------------------------------------------------------------------ checking
def check_arms_compose(study: Study, runs_dir: Path) -> None:
    """Compose every arm's config at the first learning rate and seed 0 as `sfpo-rl-train` would, without
    starting anything: an override Hydra or the config schema rejects stops the study before its first run."""
    from sfpo_rl.experiments.compose import ComposeError, resolved_config

    lr = study.learning_rates[0]
    shared_only = Arm("shared", "", (), 1)
    for arm, where in [(shared_only, "overrides"), *((a, f"arms.{a.name}.overrides") for a in study.arms)]:
        run = Run(arm, lr, 0)
        try:
            resolved = yaml.safe_load(
                resolved_config([f"trainer.run_dir={runs_dir / run.name}", *run.overrides(study)])
            )
        except ComposeError as exc:
            raise StudyError(f"{study.path}: {where}: rejected: {exc}") from None
        if resolved["trainer"]["val_every"] <= 0:
            raise StudyError(
                f"{study.path}: {where}: rejected: trainer.val_every={resolved['trainer']['val_every']}: a study needs validation "
                "(every endpoint is validation accuracy)"
            )
