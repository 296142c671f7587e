"""DAPO's parts as pure functions, against hand-worked values: the overlong penalty, group filtering (all
wrong, all right, all at the 0.1 format score), refill and trimming, the cap (fail or train), overlong
filtering, the seeds of extra generation rounds and the loader's position across a resume; and the
`algorithm=dapo` preset with its option checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from sfpo_rl.algorithms.dapo import (
    FilterGroupsConfig,
    SamplingCapReached,
    choose_groups,
    classify_groups,
    mini_batch_unit,
    overlong_filtered_mask,
    sample_groups,
)
from sfpo_rl.controller import WorkerError
from sfpo_rl.data.dataset import PromptDataset
from sfpo_rl.data.io import write_records
from sfpo_rl.data.loader import PromptLoader
from sfpo_rl.protocol import Batch
from sfpo_rl.rewards.shaping import OverlongBufferConfig, add_at_last_token, overlong_penalty
from sfpo_rl.tiny.model import build_tokenizer
from sfpo_rl.trainer.config import ConfigError, register_schema, to_run_config
from sfpo_rl.trainer.ray_trainer import RLTrainer, TrainerState, next_prompts
from sfpo_rl.trainer.setup import CONFIG_DIR

register_schema()


# ------------------------------------------------------------------ overlong reward shaping
def test_overlong_penalty_matches_hand_computed_values():
    # Limit 10 tokens, buffer 4: no penalty up to 6 tokens, then -1/4 per token down to -factor at 10.
    lengths = torch.tensor([0, 5, 6, 7, 8, 9, 10])
    assert overlong_penalty(lengths, 10, 4, 1.0).tolist() == [0, 0, 0, -0.25, -0.5, -0.75, -1.0]
    assert overlong_penalty(lengths, 10, 4, 0.5).tolist() == [0, 0, 0, -0.125, -0.25, -0.375, -0.5]
    # DAPO's own setting: 4,096 tokens before 20,480; a response of 18,432 tokens is halfway in: -0.5.
    assert overlong_penalty(torch.tensor([16384, 18432, 20480]), 20480, 4096, 1.0).tolist() == [0, -0.5, -1]


def test_penalty_lands_on_the_last_response_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    scores = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 0.5], [0, 0, 0, 0]])
    shaped = add_at_last_token(scores, mask, torch.tensor([-0.25, -1.0, -0.5]))
    assert shaped.tolist() == [[0, 0, 0.75, 0], [0, 0, 0, -0.5], [0, 0, 0, 0]]  # no tokens: unchanged


def test_buffer_length_defaults_to_daposhare_of_the_limit():
    assert OverlongBufferConfig().buffer_len(20480) == 4096  # DAPO: 4k of 20k
    assert OverlongBufferConfig().buffer_len(96) == 19
    assert OverlongBufferConfig(len=512).buffer_len(96) == 512  # checked against the limit by RunConfig


# ------------------------------------------------------------------ group filtering
def scored(
    groups: list[list[tuple[float, float]]], prefix: str = "g", lengths: list[int] | None = None
) -> Batch:
    """A scored batch: one group per entry, each sample (score, acc); the score on its last of 3 tokens."""
    rows = [(f"{prefix}{g}", s, a) for g, samples in enumerate(groups) for s, a in samples]
    mask = torch.ones(len(rows), 3, dtype=torch.long)
    rewards = torch.zeros(len(rows), 3)
    rewards[:, -1] = torch.tensor([s for _, s, _ in rows])
    return Batch.from_dict(
        {
            "uid": [u for u, _, _ in rows],
            "acc": torch.tensor([a for _, _, a in rows]),
            "token_level_scores": rewards,
            "token_level_rewards": rewards.clone(),
            "response_mask": mask,
        }
    )


RIGHT, WRONG, BOXED, NONE = (1.0, 1.0), (0.1, 0.0), (0.1, 0.0), (0.0, 0.0)
ALL_WRONG, ALL_RIGHT, ALL_FORMAT = [NONE] * 4, [RIGHT] * 4, [BOXED] * 4
MIXED, FORMAT_ONLY = [RIGHT, BOXED, NONE, RIGHT], [BOXED, NONE, NONE, BOXED]


@pytest.mark.parametrize(
    "metric, kept",
    [("accuracy", [False, False, False, True, False]), ("score", [False, False, False, True, True])],
)
def test_groups_whose_metric_is_equal_are_dropped(metric, kept):
    batch = scored([ALL_WRONG, ALL_RIGHT, ALL_FORMAT, MIXED, FORMAT_ONLY])
    score = batch["token_level_rewards"].sum(-1)
    verdicts = classify_groups(
        batch["uid"], batch["acc"] if metric == "accuracy" else score, batch["acc"], score
    )
    assert verdicts.varied == kept
    assert verdicts.all_right == [False, True, False, False, False]
    assert verdicts.all_wrong == [True, False, True, False, True]  # the 0.1 format score is still wrong
    assert verdicts.zero_advantage == [True, True, True, False, False]  # equal rewards: zero advantage
    assert [r.tolist() for r in verdicts.rows[:2]] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def rounds_of(*rounds: list[list[tuple[float, float]]]):
    """generate_round for sample_groups: round r is the r-th list of groups; records the calls."""
    calls: list[int] = []

    def generate_round(r: int) -> Batch:
        calls.append(r)
        return scored(rounds[r], prefix=f"r{r}-g")

    return generate_round, calls


def test_refill_until_the_batch_is_full_then_trim_to_exactly_the_batch():
    generate, calls = rounds_of(
        [ALL_WRONG, MIXED, ALL_RIGHT, ALL_FORMAT],  # one group kept
        [MIXED, ALL_RIGHT, ALL_WRONG, ALL_WRONG],  # one more
        [MIXED, FORMAT_ONLY, MIXED, ALL_RIGHT],  # three more (by score the format counts): one too many
        [MIXED, MIXED, MIXED, MIXED],  # never generated
    )
    config = FilterGroupsConfig(enable=True, metric="score", max_num_gen_batches=10)
    generated, batch, metrics = sample_groups(generate, needed=4, config=config, unit=2)
    assert calls == [0, 1, 2] and len(generated) == 48
    assert list(dict.fromkeys(batch["uid"])) == ["r0-g1", "r1-g0", "r2-g0", "r2-g1"]  # generation order
    assert len(batch) == 16 and batch["acc"].tolist() == [1, 0, 0, 1] * 3 + [0, 0, 0, 0]
    assert metrics == {
        "sampling/samples_generated": 48.0,
        "sampling/zero_adv_group_frac": 7 / 12,
        "sampling/gen_rounds": 3.0,
        "sampling/groups_kept": 4.0,
        "sampling/groups_dropped": 7.0,
        "sampling/groups_dropped_all_right": 3.0,
        "sampling/groups_dropped_all_wrong": 4.0,  # all at 0, or all at the 0.1 format score
        "sampling/groups_surplus": 1.0,
        "sampling/groups_padding": 0.0,
    }


def test_without_filtering_one_round_is_the_batch():
    generate, calls = rounds_of([ALL_WRONG, MIXED], [MIXED, MIXED])
    generated, batch, metrics = sample_groups(generate, needed=2, config=FilterGroupsConfig(), unit=1)
    assert calls == [0] and batch is generated and len(batch) == 8
    assert metrics == {"sampling/samples_generated": 8.0, "sampling/zero_adv_group_frac": 0.5}


def test_at_the_cap_fail_names_the_option():
    generate, calls = rounds_of([ALL_WRONG, MIXED], [ALL_RIGHT, ALL_RIGHT], [MIXED, MIXED])
    config = FilterGroupsConfig(enable=True, max_num_gen_batches=2)
    with pytest.raises(SamplingCapReached) as err:
        sample_groups(generate, needed=2, config=config, unit=1)
    assert calls == [0, 1]
    message = str(err.value)
    assert "algorithm.filter_groups.max_num_gen_batches=2 generation rounds (16 rollouts)" in message
    assert "only 1 of the 2 groups needed" in message and "algorithm.filter_groups.at_cap=train" in message


def test_at_the_cap_train_takes_the_kept_groups_and_completes_the_last_mini_batch():
    generate, _ = rounds_of([ALL_WRONG, MIXED, ALL_RIGHT], [MIXED, ALL_FORMAT, MIXED])
    config = FilterGroupsConfig(enable=True, max_num_gen_batches=2, at_cap="train")
    # 3 groups kept of 6 needed; whole mini-batches are 2 groups: one dropped group (the earliest) completes it.
    _, batch, metrics = sample_groups(generate, needed=6, config=config, unit=2)
    assert list(dict.fromkeys(batch["uid"])) == ["r0-g0", "r0-g1", "r1-g0", "r1-g2"]
    assert metrics["sampling/groups_kept"] == 3 and metrics["sampling/groups_padding"] == 1


@pytest.mark.parametrize(
    "varied, needed, unit, chosen, padding",
    [
        ([True, False, True, True], 2, 2, [0, 2], 0),  # enough: the first `needed` kept groups
        ([False, True, False, False], 4, 2, [0, 1], 1),  # one kept, completed to one mini-batch
        ([False, False, False, False], 4, 2, [0, 1], 2),  # none kept: one mini-batch of dropped groups
        ([True, True, True, False, False, False], 4, 4, [0, 1, 2, 3], 1),
    ],
)
def test_choose_groups_at_the_cap(varied, needed, unit, chosen, padding):
    assert choose_groups(varied, needed, unit, "train") == (chosen, padding)


@pytest.mark.parametrize("mini, n, unit", [(64, 8, 8), (16, 4, 4), (12, 8, 3), (8, 16, 1), (32, 6, 16)])
def test_mini_batch_unit_is_the_fewest_groups_filling_whole_mini_batches(mini, n, unit):
    assert mini_batch_unit(mini, n) == unit and (unit * n) % mini == 0


def test_overlong_filter_masks_responses_that_fill_the_budget():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert overlong_filtered_mask(mask, 4).tolist() == [[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]


# ------------------------------------------------------------------ extra rounds: seeds, uids, loader position
@pytest.fixture(scope="module")
def loader_factory(tmp_path_factory):
    rows = [
        {"prompt": f"Q{i}: {i} + {i}?", "ground_truth": str(2 * i), "data_source": "arith"} for i in range(30)
    ]
    path = write_records(rows, tmp_path_factory.mktemp("dapo_loader") / "d.jsonl")
    dataset = PromptDataset(path, build_tokenizer([r["prompt"] for r in rows], vocab_size=300))
    return lambda: PromptLoader(dataset, 4, seed=5)


def test_extra_rounds_get_their_own_uids_and_seeds_and_round_zero_is_unchanged(loader_factory):
    loader = loader_factory()
    step, seed, n = 7, 3, 2
    rounds = [next_prompts(loader, step, seed, n, first_row=r * 4) for r in range(3)]
    uids = [u for b in rounds for u in b["uid"]]
    assert uids == [f"s7-{i}" for i in range(12)]
    seeds = [s + k for b in rounds for s in b["sampling_seed"] for k in range(n)]  # each sample's seed
    base = (seed * 1_000_003 + step) * 1_000_000
    assert seeds == list(range(base, base + 24))  # distinct, and round 0 keeps the single-round seeds
    assert next_prompts(loader_factory(), step, seed, n)["sampling_seed"].tolist() == seeds[:8:2]


def run_step(loader: PromptLoader, step: int) -> tuple[list[str], list[str]]:
    """One dynamically sampled step on `loader`: a prompt's group is kept when its index is odd (so rounds
    keep about half). Returns the step's uids and the prompts trained on."""

    def generate_round(r: int) -> Batch:
        prompts = next_prompts(loader, step, 0, 2, first_row=r * 4)
        keep = [int(t) % 4 == 2 for t in prompts["ground_truth"]]  # prompt i odd: ground truth 2i = 2 mod 4
        groups = [MIXED[:2] if k else ALL_WRONG[:2] for k in keep]
        batch = scored(groups).repeat_interleave(1)
        batch["uid"] = prompts.repeat_interleave(2)["uid"]
        batch["ground_truth"] = prompts.repeat_interleave(2)["ground_truth"]
        return batch

    config = FilterGroupsConfig(enable=True, max_num_gen_batches=10)
    generated, batch, _ = sample_groups(generate_round, needed=4, config=config, unit=1)
    return list(generated["uid"]), list(batch["ground_truth"])


def test_loader_position_with_extra_rounds_survives_a_resume(loader_factory):
    loader = loader_factory()
    first = run_step(loader, 1)
    assert len(first[0]) > 8  # extra rounds consumed extra prompts
    state = json.loads(json.dumps(loader.state_dict()))  # as the checkpoint stores it
    uninterrupted = [run_step(loader, step) for step in (2, 3, 4)]

    resumed = loader_factory()
    resumed.load_state_dict(state)
    assert [run_step(resumed, step) for step in (2, 3, 4)] == uninterrupted
    assert resumed.state_dict() == loader.state_dict()


# ------------------------------------------------------------------ the preset and its checks
def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg


def test_the_dapo_preset_and_sfpo_on_it_in_one_override():
    dapo = to_run_config(composed("algorithm=dapo"))
    actor, algo = dapo.actor, dapo.algorithm
    assert (actor.loss.clip_ratio_low, actor.loss.clip_ratio_high, actor.loss.loss_agg_mode) == (
        0.2,
        0.28,
        "token-mean",
    )
    assert not (actor.loss.use_kl_loss or algo.use_kl_in_reward or algo.sfpo.enable)
    assert algo.filter_groups.enable and dapo.reward.overlong_buffer.enable and not algo.overlong_filter
    assert dapo.trainer.run_dir == "outputs/tiny_arith_dapo"
    on_dapo = to_run_config(composed("algorithm=dapo", "algorithm.sfpo.enable=true"))
    assert on_dapo.algorithm.sfpo.enable and on_dapo.algorithm.filter_groups.enable
    assert on_dapo.trainer.run_dir == "outputs/tiny_arith_sfpo_dapo"  # not DAPO's run directory
    assert to_run_config(composed("algorithm=sfpo")).trainer.experiment_name == "tiny_arith_sfpo"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            [
                "algorithm=dapo",
                "algorithm.adv_estimator=reinforce_plus_plus",
                "rollout.n=1",
                "actor.batching.ppo_mini_batch_size=16",
            ],
            "rollout.n must be >= 2 with algorithm.filter_groups.enable=true",
        ),
        (
            ["algorithm=dapo", "reward.overlong_buffer.len=96"],
            "reward.overlong_buffer.len must be less than rollout.max_response_length=96",
        ),
        (
            ["reward.overlong_buffer.len=0"],
            "reward.overlong_buffer.len must be null or an integer >= 1, got 0",
        ),
        (
            ["reward.overlong_buffer.penalty_factor=-1"],
            "reward.overlong_buffer.penalty_factor must be a number >= 0",
        ),
        (
            ["algorithm.filter_groups.metric=acc"],
            "algorithm.filter_groups.metric must be accuracy or score, got 'acc'",
        ),
        (
            ["algorithm.filter_groups.max_num_gen_batches=0"],
            "algorithm.filter_groups.max_num_gen_batches must be an integer >= 1",
        ),
        (
            ["algorithm.filter_groups.at_cap=skip"],
            "algorithm.filter_groups.at_cap must be fail or train, got 'skip'",
        ),
        (
            ["algorithm=dapo", "algorithm.filter_groups.max_num_gen_batches=10000"],
            "algorithm.filter_groups.max_num_gen_batches must be such that a step generates at most 1000000",
        ),
    ],
)
def test_bad_dapo_options_name_the_option(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        to_run_config(composed(*overrides))


def cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sfpo_rl.trainer.main", f"model.cache_dir={tmp_path / 'cache'}", *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_cfg_job_shows_the_preset(tmp_path):
    proc = cli(tmp_path, "algorithm=dapo", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "filter_groups:\n    enable: true" in proc.stdout and "clip_ratio_high: 0.28" in proc.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("algorithm.filter_groups.enabled=true", "Could not override 'algorithm.filter_groups.enabled'"),
        ("reward.overlong_buffer.len=200", "reward.overlong_buffer.len must be less than"),
    ],
)
def test_the_command_exits_2_before_any_worker_starts(tmp_path, override, message):
    proc = cli(tmp_path, "algorithm=dapo", override, f"trainer.run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # failed before any expensive work


# ------------------------------------------------------------------ the driver's rounds (stand-in workers)
class StandInGroups:
    """Worker groups that answer from the prompts alone: each prompt's 2 samples have 8 response tokens, and
    both are right when its index is odd (a varied group otherwise: one right, one wrong). The first generate
    call fails as a dead rollout worker does."""

    restartable_roles = ("rollout", "reward", "ref")

    def __init__(self):
        self.generated: list[list[str]] = []
        self.restarted: list[str] = []
        self.reward = self

    def generate(self, prompts: Batch) -> Batch:
        self.generated.append(list(prompts["uid"]))
        if len(self.generated) == 1:
            raise WorkerError("rollout worker rank 0 died", role="rollout", rank=0, died=True)
        out = prompts.repeat_interleave(2)
        out["response_mask"] = torch.tensor([[1] * 8 + [0] * 2] * len(out))
        return out

    def compute_score(self, batch: Batch) -> Batch:
        index = torch.tensor([int(t) // 2 for t in batch["ground_truth"]])
        acc = ((index % 2 == 1) | (torch.arange(len(batch)) % 2 == 0)).float()
        scores = torch.zeros(len(batch), 10)
        scores[:, 7] = acc
        return Batch.from_dict({"token_level_scores": scores, "acc": acc})

    def restart(self, role: str) -> None:
        self.restarted.append(role)

    def write_pids(self, run_dir) -> None:
        pass


def test_driver_rounds_refill_shape_rewards_and_redo_a_round_with_the_same_prompts(loader_factory):
    trainer = RLTrainer.__new__(RLTrainer)  # only what collect_rollouts reads
    trainer.config = to_run_config(
        composed(
            "algorithm=dapo",
            "data.train_batch_size=4",
            "rollout.n=2",
            "actor.batching.ppo_mini_batch_size=8",
            "rollout.max_response_length=10",
            "reward.overlong_buffer.len=4",
        )
    )
    trainer.groups, trainer.train_loader = StandInGroups(), loader_factory()
    trainer.run_dir, trainer.progress, trainer.worker_restarts = None, TrainerState(step=3), 0
    generated, batch, metrics = trainer.collect_rollouts(3, {})

    groups = trainer.groups
    rounds = len(groups.generated) - 1
    assert groups.restarted == ["rollout"] and groups.generated[0] == groups.generated[1]  # the same prompts
    assert groups.generated[1:] == [[f"s3-{r * 4 + i}" for i in range(4)] for r in range(rounds)]
    reference = loader_factory()
    drawn = [t for _ in range(rounds) for t in reference.next_batch()["ground_truth"]]
    assert rounds >= 2 and list(generated["ground_truth"][::2]) == drawn  # consecutive batches, none skipped
    assert metrics["sampling/gen_rounds"] == rounds and len(batch) == 8 and len(generated) == 8 * rounds
    assert batch["acc"].tolist() == [1, 0] * 4  # only varied groups
    # 8 of 10 tokens with a buffer of 4: halfway into it, -0.5 on the last response token.
    assert (generated["token_level_rewards"].sum(-1) - generated["acc"]).tolist() == [-0.5] * len(generated)
    assert generated["token_level_rewards"][:, 7].tolist() == (generated["acc"] - 0.5).tolist()
