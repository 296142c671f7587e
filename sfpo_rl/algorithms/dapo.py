"""DAPO's dynamic sampling and overlong filtering (arXiv 2503.14476, Sec. 3.2 and 3.4), as pure functions.

Dynamic sampling: a group (one prompt's n samples) whose metric is the same for every sample carries zero
advantage under every group estimator, so it is dropped; rounds of the loader's next prompts are generated
until enough groups remain for the train batch, which is then trimmed to exactly that many groups. At most
`max_num_gen_batches` rounds are generated per step; what happens when they do not suffice is an option.

Overlong filtering: responses that fill the whole response budget (cut off, or ending exactly on its last
token) are masked out of the loss.

No Ray, no I/O: `sample_groups` takes the function that generates and scores one round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sfpo_rl.protocol import Batch
from sfpo_rl.utils.options import is_int, require

FILTER_METRICS = ("accuracy", "score")
AT_CAP = ("fail", "train")


@dataclass
class FilterGroupsConfig:
    """`algorithm.filter_groups.*`: DAPO's dynamic sampling."""

    enable: bool = False
    # accuracy: the verifier's right / wrong (DAPO's rule: drop groups solved by all or by none; all samples at
    # the 0.1 format score are all wrong). score: the shaped reward the advantages see (verifier score plus
    # the overlong penalty), so a group that differs only in format or length is kept.
    metric: str = "accuracy"
    # Generation rounds per step, the first included (verl's DAPO recipe: 10).
    max_num_gen_batches: int = 10
    # When the rounds run out before the batch is full: fail (stop the run, naming this option; verl's
    # behaviour) or train (on the groups kept, topped up with dropped ones only to complete the last
    # mini-batch).
    at_cap: str = "fail"

    def __post_init__(self) -> None:
        require(isinstance(self.enable, bool), "algorithm.filter_groups.enable", "true or false", self.enable)
        require(
            self.metric in FILTER_METRICS,
            "algorithm.filter_groups.metric",
            " or ".join(FILTER_METRICS),
            self.metric,
        )
        cap = self.max_num_gen_batches
        require(
            is_int(cap) and cap >= 1, "algorithm.filter_groups.max_num_gen_batches", "an integer >= 1", cap
        )
        require(self.at_cap in AT_CAP, "algorithm.filter_groups.at_cap", " or ".join(AT_CAP), self.at_cap)


@dataclass
class GroupVerdicts:
    """The groups of a scored batch (in order of first appearance) and the row indices of each."""

    rows: list[np.ndarray] = field(default_factory=list)
    varied: list[bool] = field(default_factory=list)  # the metric differs between the group's samples
    all_right: list[bool] = field(default_factory=list)  # every sample's accuracy is 1
    all_wrong: list[bool] = field(default_factory=list)  # every sample's accuracy is 0
    zero_advantage: list[bool] = field(default_factory=list)  # every sample got the same shaped reward


def group_rows(uids: Sequence) -> list[np.ndarray]:
    """Row indices of each group, groups in order of first appearance."""
    members: dict = {}
    for i, uid in enumerate(uids):
        members.setdefault(uid, []).append(i)
    return [np.asarray(rows) for rows in members.values()]


def _all_equal(values: torch.Tensor, rows: np.ndarray) -> bool:
    group = values[torch.as_tensor(rows)]
    return bool(group.max() == group.min())


def classify_groups(
    uids: Sequence, metric: torch.Tensor, acc: torch.Tensor, score: torch.Tensor
) -> GroupVerdicts:
    """Each group's verdict: kept when `metric` [B] differs between its samples (exact comparison, as the
    verifiers return exact values), with its accuracy [B] and shaped score [B] for the metrics."""
    verdicts = GroupVerdicts()
    for rows in group_rows(uids):
        group_acc = acc[torch.as_tensor(rows)]
        verdicts.rows.append(rows)
        verdicts.varied.append(not _all_equal(metric, rows))
        verdicts.all_right.append(bool((group_acc == 1).all()))
        verdicts.all_wrong.append(bool((group_acc == 0).all()))
        verdicts.zero_advantage.append(_all_equal(score, rows))
    return verdicts


def mini_batch_unit(ppo_mini_batch_size: int, n: int) -> int:
    """The fewest groups of n samples that make whole mini-batches of `ppo_mini_batch_size` rows."""
    return ppo_mini_batch_size // math.gcd(ppo_mini_batch_size, n)


class SamplingCapReached(RuntimeError):
    """The generation rounds ran out before the train batch was full (`at_cap=fail`); the message says what to
    change."""


def choose_groups(varied: Sequence[bool], needed: int, unit: int, at_cap: str) -> tuple[list[int], int]:
    """Indices of the groups to train on, and how many of them are padding (dropped groups).

    The first `needed` varied groups, in generation order. With fewer: `at_cap=train` takes every varied group
    and completes the last whole mini-batch (`unit` groups, at least one) with the earliest dropped groups;
    `at_cap=fail` raises SamplingCapReached."""
    kept = [i for i, v in enumerate(varied) if v]
    if len(kept) >= needed:
        return kept[:needed], 0
    if at_cap == "fail":
        raise SamplingCapReached(f"{len(kept)} of the {needed} groups needed")
    want = max(unit, math.ceil(len(kept) / unit) * unit)
    padding = [i for i, v in enumerate(varied) if not v][: want - len(kept)]
    return sorted(kept + padding), len(padding)


def sample_groups(
    generate_round: Callable[[int], Batch],
    needed: int,
    config: FilterGroupsConfig,
    unit: int,
) -> tuple[Batch, Batch, dict[str, float]]:
    """Generate and score rounds until `needed` groups remain (one round when filtering is off).

    `generate_round(r)` returns round r's scored rollouts (columns uid, acc and token_level_rewards: the
    shaped reward, before any KL term). Returns (every rollout generated, the batch to train on, metrics)."""
    rounds: list[Batch] = []
    verdicts = GroupVerdicts()
    offset = 0
    while True:
        fresh = generate_round(len(rounds))
        score = fresh["token_level_rewards"].sum(-1)
        metric = fresh["acc"] if config.metric == "accuracy" else score
        found = classify_groups(fresh["uid"], metric, fresh["acc"], score)
        for name in ("varied", "all_right", "all_wrong", "zero_advantage"):
            getattr(verdicts, name).extend(getattr(found, name))
        verdicts.rows.extend(rows + offset for rows in found.rows)
        rounds.append(fresh)
        offset += len(fresh)
        if not config.enable or sum(verdicts.varied) >= needed or len(rounds) >= config.max_num_gen_batches:
            break
    generated = rounds[0] if len(rounds) == 1 else Batch.concat(rounds)
    metrics = {
        "sampling/samples_generated": float(len(generated)),
        "sampling/zero_adv_group_frac": float(np.mean(verdicts.zero_advantage)),
    }
    if not config.enable:
        return generated, generated, metrics
    try:
        chosen, padding = choose_groups(verdicts.varied, needed, unit, config.at_cap)
    except SamplingCapReached as exc:
        raise SamplingCapReached(
            f"after algorithm.filter_groups.max_num_gen_batches={config.max_num_gen_batches} generation rounds "
            f"({len(generated)} rollouts) only {exc} had samples that differ in their "
            f"{config.metric}: the prompts are too easy or too hard for the policy. Raise max_num_gen_batches, "
            "or set algorithm.filter_groups.at_cap=train to train on the groups there are"
        ) from None
    dropped = [i for i, v in enumerate(verdicts.varied) if not v]
    rows = np.concatenate([verdicts.rows[i] for i in chosen])
    metrics.update(
        {
            "sampling/gen_rounds": float(len(rounds)),
            "sampling/groups_kept": float(len(chosen) - padding),
            "sampling/groups_dropped": float(len(dropped)),
            "sampling/groups_dropped_all_right": float(sum(verdicts.all_right[i] for i in dropped)),
            "sampling/groups_dropped_all_wrong": float(sum(verdicts.all_wrong[i] for i in dropped)),
            "sampling/groups_surplus": float(sum(verdicts.varied) - (len(chosen) - padding)),
            "sampling/groups_padding": float(padding),
        }
    )
    return generated, generated[rows], metrics


def overlong_filtered_mask(response_mask: torch.Tensor, max_response_length: int) -> torch.Tensor:
    """`response_mask` [B, R] with the rows whose response fills all `max_response_length` tokens zeroed: they
    are left out of the loss (and of its token count)."""
    truncated = response_mask.sum(-1) >= max_response_length
    return response_mask * (~truncated).unsqueeze(-1).to(response_mask.dtype)
