"""A study file is checked field by field before anything runs: every mistake names the file and the field
(exit 2 from the command line), an arm whose overrides Hydra or the config schema rejects is caught by composing
its config (no worker starts), and the committed study files load and plan as their protocols say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sfpo_rl.experiments import runner
from sfpo_rl.experiments.study import StudyError, check_arms_compose, load_study, plan

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "name": "two arms",
    "steps": 4,
    "learning_rates": ["3e-4", 1.0e-3],
    "arms": {
        "grpo": {"label": "GRPO", "overrides": ["algorithm=grpo"], "seeds": 2},
        "sfpo": {"label": "SFPO", "overrides": ["algorithm=sfpo"], "seeds": 3},
    },
    "comparisons": [
        {
            "title": "SFPO vs GRPO",
            "kind": "same_lr",
            "pairs": {"sfpo": "grpo"},
            "endpoints": ["final", "rollouts"],
            "decide": ["final"],
        },  # fmt: skip
    ],
}


def write(tmp_path: Path, **changes) -> Path:
    study = {**GOOD, **changes}
    study = {k: v for k, v in study.items() if v is not None}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_good_file_loads_with_its_lrs_spelled_as_written_and_plans_seed_by_seed(tmp_path):
    study = load_study(write(tmp_path))
    assert [lr.text for lr in study.learning_rates] == ["3e-4", "0.001"]
    assert [lr.value for lr in study.learning_rates] == [3e-4, 1e-3]
    assert study.comparisons[0].pairs == (("sfpo", "grpo"),) and study.comparisons[0].label == "GRPO"
    runs = plan(study)
    assert [r.name for r in runs] == [
        "grpo_lr0.001_seed0", "sfpo_lr0.001_seed0", "grpo_lr3e-4_seed0", "sfpo_lr3e-4_seed0",
        "grpo_lr0.001_seed1", "sfpo_lr0.001_seed1", "grpo_lr3e-4_seed1", "sfpo_lr3e-4_seed1",
        "sfpo_lr0.001_seed2", "sfpo_lr3e-4_seed2",
    ]  # fmt: skip
    assert runs[2].overrides(study) == [
        "algorithm=grpo", "actor.optimizer.lr=3e-4", "trainer.seed=0", "data.seed=0", "trainer.total_steps=4",
    ]  # fmt: skip
    assert study.runs == Path("outputs/study") and study.out == tmp_path and study.report_name == "report"


BAD = [
    (dict(colour="red"), "colour: unknown field"),
    (dict(steps=0), "steps: must be a positive integer, got 0"),
    (dict(steps=None), "steps: missing"),
    (dict(learning_rates=["L*/3", "L*"]), "learning_rates[0]: 'L*/3' is not a number (a placeholder"),
    (dict(learning_rates=[1e-3, "1e-3"]), "learning_rates: a learning rate is listed twice"),
    (dict(arms={"grpo": {"overrides": ["algorithm=grpo"], "seed": 2}}), "arms.grpo.seed: unknown field"),
    (dict(arms={"grpo": {"overrides": ["algorithm=grpo"]}}), "arms.grpo.seeds: missing"),
    (dict(arms={"a b": {"seeds": 1}}), "arms.a b: an arm's name must be"),
    (dict(arms={"grpo": {"overrides": ["actor.optimizer.lr=1"], "seeds": 1}}), "arms.grpo.overrides[0]: actor.optimizer.lr is set by"),
    (dict(overrides="algorithm=grpo"), "overrides: must be a list of strings"),
    (dict(comparisons=[{"title": "t", "kind": "same_lr", "pairs": {"sfpo": "dapo"}, "endpoints": ["final"]}]),
     "comparisons[0].pairs.sfpo: no arm named 'dapo'"),
    (dict(comparisons=[{"title": "t", "kind": "nearby", "baseline": "grpo", "endpoints": ["final"]}]),
     "comparisons[0].kind: must be one of same_lr, best_lr"),
    (dict(comparisons=[{"title": "t", "kind": "same_lr", "baseline": "grpo", "endpoints": ["final"],
                        "decide": ["seconds"]}]), "comparisons[0].decide: must be one of final"),
    (dict(comparisons=[{"title": "t", "kind": "same_lr", "baseline": "grpo", "endpoints": ["collapse"]}]),
     "comparisons[0].endpoints: `collapse` needs the study's `collapse_at`"),
    (dict(decisions=[{"rule": "equivalence", "comparison": 3}]), "decisions[0].comparison: must index"),
    (dict(decisions=[{"rule": "stabilises"}]), "decisions[0]: stabilises needs comparisons[0] to report drop, collapse"),
    (dict(decisions=[{"rule": "improves", "claim": ""}]), "decisions[0].claim: must be a non-empty string"),
    (dict(comparisons=[{"title": "t", "kind": "same_lr", "baseline": "grpo", "endpoints": ["final"]}],
          decisions=[{"rule": "improves"}]), "decisions[0]: improves needs comparisons[0] to decide"),
    (dict(step_metrics=["sampling/gen_rounds"]), "step_metrics: must be a mapping"),
    (dict(step_metrics={"r": {"label": "rounds"}}), "step_metrics.r.metric: missing"),
    (dict(step_metrics={"r": {"metric": "m", "every": 2}}), "step_metrics.r.every: unknown field"),
    (dict(step_metrics={"r": {"metric": "m", "arms": ["dapo"]}}), "step_metrics.r.arms: no arm named 'dapo'"),
    (dict(step_metrics={"r": {"metric": "m", "windows": [[0, 4]]}}),
     "step_metrics.r.windows[0]: must be [first, last] with 1 <= first <= last <= 4"),
    (dict(step_metrics={"r": {"metric": "m", "windows": [[3, 5]]}}), "step_metrics.r.windows[0]"),
    (dict(step_metrics={"r": {"metric": "m", "count": {"at_least": 10}}}), "step_metrics.r.count: needs one of"),
    (dict(step_metrics={"r": {"metric": "m", "count": {"at_least": 1, "below": 2, "label": "x"}}}),
     "step_metrics.r.count: needs one of at_least, at_most, above, below"),
    (dict(step_metrics={"r": {"metric": "m", "plot": "yes"}}), "step_metrics.r.plot: must be true or false"),
]  # fmt: skip


@pytest.mark.parametrize("changes, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_fields_are_refused_naming_the_file_and_the_field(tmp_path, changes, message):
    path = write(tmp_path, **changes)
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_the_command_line_exits_2_with_the_message_and_no_traceback(tmp_path, capsys):
    path = write(tmp_path, colour="red")
    assert runner.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sfpo-rl-study: {path}: colour: unknown field") and "Traceback" not in err
    assert runner.main([str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the study file" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("arms: [\n")
    assert runner.main([str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arms, shared, where, message",
    [
        ({"sfpo": {"overrides": ["actor.lrr=1"], "seeds": 1}}, [], "arms.sfpo.overrides", "Could not override 'actor.lrr'"),
        ({"sfpo": {"overrides": ["algorithm.sfpo.alpha=1.5"], "seeds": 1}}, [], "arms.sfpo.overrides",
         "algorithm.sfpo.alpha must be a number in [0, 1]"),
        ({"sfpo": {"overrides": ["algorithm=sfpo"], "seeds": 1}}, ["rollout.n=many"], "overrides", "rollout.n"),
        ({"sfpo": {"overrides": ["trainer.val_every=0"], "seeds": 1}}, [], "arms.sfpo.overrides",
         "trainer.val_every=0: a study needs validation"),
    ],
)  # fmt: skip
def test_an_override_hydra_or_the_schema_rejects_stops_the_study_before_any_run(
    tmp_path, arms, shared, where, message, capsys
):
    path = write(tmp_path, arms=arms, overrides=shared, comparisons=[], runs=str(tmp_path / "runs"))
    with pytest.raises(StudyError) as err:
        check_arms_compose(load_study(path), tmp_path / "runs")
    assert str(err.value).startswith(f"{path}: {where}: rejected: ") and message in str(err.value)
    assert runner.main([str(path)]) == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_the_first_study_file_is_the_protocols_design():
    study = load_study(ROOT / "results/compare/study.yaml")
    runs = plan(study)
    assert len(runs) == len({r.name for r in runs}) == 3 * (5 + 5 + 4 * 3)
    assert runs[0].name == "grpo_lr0.0001_seed0"  # the embedded default's lr first
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)
    assert {r.arm.name for r in runs if r.seed == 4} == {"grpo", "sfpo"}
    k7 = next(r for r in runs if r.arm.name == "sfpo_k7_a0.2" and r.lr.text == "3e-05" and r.seed == 2)
    assert k7.overrides(study) == [
        "algorithm=sfpo", "algorithm.sfpo.inner_steps=7", "algorithm.sfpo.alpha=0.2", "actor.optimizer.lr=3e-05",
        "trainer.seed=2", "data.seed=2", "trainer.total_steps=40",
    ]  # fmt: skip
    matched = study.comparisons[1]
    assert dict(matched.pairs) == {"sfpo": "grpo_x4", "sfpo_k7_a0.2": "grpo_x8", "sfpo_k7_a0.5": "grpo_x8"}


def test_the_stability_files_implement_the_protocol():
    pilot = load_study(ROOT / "results/stability/pilot.yaml")
    assert [a.name for a in pilot.arms] == ["grpo", "grpo_x4", "grpo_x8"] and pilot.steps == 80
    assert [lr.text for lr in pilot.learning_rates] == ["3e-4", "1e-3", "3e-3"] and pilot.collapse_at == 10
    assert {r.name for r in plan(pilot)} >= {"grpo_x8_lr3e-4_seed0", "grpo_lr3e-3_seed0"} and len(
        plan(pilot)
    ) == 9
    (rule,) = pilot.decisions
    assert (
        rule.rule == "smallest_collapse_lr"
        and rule.arms == ("grpo_x4", "grpo_x8")
        and rule.divisors == (3, 1)
    )

    stage1 = load_study(ROOT / "results/stability/study.yaml")  # at L*/3 and L*, L* = 3e-4 from the pilot
    assert [lr.text for lr in stage1.learning_rates] == ["1e-4", "3e-4"] and stage1.steps == 80
    assert all(a.seeds == 5 for a in stage1.arms) and len(plan(stage1)) == 50
    sfpo_arms = [a for a in stage1.arms if a.name.startswith("sfpo")]
    assert len(sfpo_arms) == 3 and all(
        "algorithm.sfpo.adaptive_switch=false" in a.overrides for a in sfpo_arms
    )

    confirm = load_study(ROOT / "results/stability/confirm.yaml")
    assert [lr.text for lr in confirm.learning_rates] == ["1e-5", "3e-5"] and confirm.steps == 40
    assert all(a.seeds == 3 for a in confirm.arms) and len(plan(confirm)) == 12
    assert "algorithm.sfpo.adaptive_switch=false" in confirm.arm("sfpo_k3_a0.33").overrides
    assert confirm.decisions[0].rule == "equivalence" and confirm.decisions[0].margin == 5


def test_the_follow_up_reuses_every_stage_1_run_and_adds_one_epoch_grpo():
    """Stage 1's runs count as finished for the follow-up only if its arms keep Stage 1's names and overrides."""
    stage1 = load_study(ROOT / "results/stability/study.yaml")
    followup = load_study(ROOT / "results/stability/followup.yaml")
    new = [r for r in plan(followup) if r.name not in {s.name for s in plan(stage1)}]
    assert {r.name for r in new} == {f"grpo_lr{lr}_seed{s}" for s in range(5) for lr in ("1e-4", "3e-4")}
    assert all(followup.arm(a.name).overrides == a.overrides for a in stage1.arms)
    assert followup.arm("grpo").overrides == ("algorithm=grpo",) and followup.runs == stage1.runs
    assert (followup.steps, followup.learning_rates, followup.collapse_at) == (
        stage1.steps, stage1.learning_rates, stage1.collapse_at,
    )  # fmt: skip
    assert dict(followup.comparisons[0].pairs) == {a.name: "grpo" for a in stage1.arms}
    assert followup.decisions[0].rule == "improves"


def test_the_stage_1_file_is_complete_but_for_its_learning_rates(tmp_path):
    """Filled in with any lrs, Stage 1 is the protocol's 5 arms x 2 lrs x 5 seeds, switch-off off in every SFPO arm."""
    text = (ROOT / "results/stability/study.yaml").read_text()
    raw = yaml.safe_load(text)
    raw["learning_rates"] = ["3.33e-4", "1e-3"]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    study = load_study(tmp_path / "study.yaml")
    assert len(plan(study)) == 50 and study.steps == 80 and all(a.seeds == 5 for a in study.arms)
    assert all("algorithm.sfpo.adaptive_switch=false" in a.overrides for a in study.arms if "sfpo" in a.name)
    assert dict(study.comparisons[0].pairs) == {
        "sfpo_k3_a0.8": "grpo_x4", "sfpo_k7_a0.5": "grpo_x8", "sfpo_k7_a0.2": "grpo_x8",
    }  # fmt: skip
    assert set(study.comparisons[0].decide) == {"final", "drop", "collapse", "rollouts"}


def test_the_dapo_study_file_is_the_protocols_design():
    study = load_study(ROOT / "results/dapo/study.yaml")
    assert study.steps == 40 and [lr.text for lr in study.learning_rates] == ["1e-4"] and study.shared_machine
    assert {a.name: a.overrides for a in study.arms} == {
        "grpo": ("algorithm=grpo",),
        "dapo": ("algorithm=dapo", "algorithm.filter_groups.at_cap=train"),
        "sfpo": ("algorithm=sfpo",),
        "sfpo_dapo": ("algorithm=dapo", "algorithm.sfpo.enable=true", "algorithm.filter_groups.at_cap=train"),
    }  # fmt: skip
    assert all(a.seeds == 5 for a in study.arms) and study.out == ROOT / "results/dapo"
    runs = plan(study)  # seed by seed: every arm of seed 0, then of seed 1, ...
    assert [r.name for r in runs[:5]] == [
        "grpo_lr1e-4_seed0", "dapo_lr1e-4_seed0", "sfpo_lr1e-4_seed0", "sfpo_dapo_lr1e-4_seed0", "grpo_lr1e-4_seed1",
    ]  # fmt: skip
    assert [r.seed for r in runs] == [s for s in range(5) for _ in range(4)]
    assert runs[1].overrides(study)[-4:] == [
        "actor.optimizer.lr=1e-4",
        "trainer.seed=0",
        "data.seed=0",
        "trainer.total_steps=40",
    ]
    assert [dict(c.pairs) for c in study.comparisons] == [
        {"dapo": "grpo", "sfpo": "grpo"}, {"sfpo_dapo": "dapo"}, {"sfpo_dapo": "sfpo"},
    ]  # fmt: skip
    for comparison in study.comparisons:
        assert comparison.endpoints == ("final", "rollouts", "seconds") and set(comparison.decide) == {
            "rollouts",
            "final",
        }
    assert [(d.rule, d.comparison) for d in study.decisions] == [("improves", 1), ("improves", 2)]
    zero_adv, rounds, generated, kept = study.step_metrics
    assert zero_adv.metric == "sampling/zero_adv_group_frac" and zero_adv.windows == ((1, 40), (31, 40))
    assert zero_adv.plot and zero_adv.arms == ("grpo", "dapo", "sfpo", "sfpo_dapo")
    assert (rounds.metric, rounds.count.condition, rounds.count.bound) == (
        "sampling/gen_rounds",
        "at_least",
        10,
    )
    assert generated.metric == "sampling/samples_generated" and generated.arms == ("dapo", "sfpo_dapo")
    assert (kept.metric, kept.count.condition, kept.count.bound) == ("sampling/groups_kept", "below", 16)


@pytest.mark.timeout(600)  # composes 19 configs with Hydra
def test_every_committed_study_composes():
    for name in (
        "results/compare/study.yaml",
        "results/stability/pilot.yaml",
        "results/stability/confirm.yaml",
        "results/dapo/study.yaml",
    ):
        study = load_study(ROOT / name)
        check_arms_compose(study, Path("/tmp/unused"))


def test_the_readmes_example_study_is_valid(tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = readme.split("### Studies")[1].split("```yaml\n")[1].split("```")[0]
    (tmp_path / "my_study.yaml").write_text(example)
    study = load_study(tmp_path / "my_study.yaml")
    assert [a.name for a in study.arms] == ["grpo_x4", "sfpo"] and len(plan(study)) == 12
    check_arms_compose(study, tmp_path / "runs")
