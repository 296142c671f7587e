"""The single-controller driver: the paper's training loop over Ray worker groups.

The driver holds no model. Each step it moves one batch through the worker groups:
rollout -> reward -> old log-probs (-> reference log-probs) -> advantages -> SFPO or plain update -> weight
sync, with validation and atomic checkpoints every N steps. With DAPO's dynamic sampling
(`algorithm.filter_groups`), rollout -> reward runs for rounds of the loader's next prompts until enough groups
carry signal; every rollout generated counts in `perf/rollouts`. A run resumes from its newest valid checkpoint.
Both placements run this same loop; with `resources.placement=colocated` generating wakes the engines and
actor work puts them to sleep first (GPU memory goes to whichever works).

A rollout, reward or reference worker that dies (or hangs past `trainer.worker_timeout_s`) is replaced and
the step's work before the update is redone (rollouts are seeded per prompt, so the result is the same), up
to `trainer.max_worker_restarts` times per launch; a dead or hung actor rank stops the run, to be resumed
from the last checkpoint.

An update that meets a non-finite loss or gradient is skipped by the actor (no NaN reaches the weights); the
trainer logs and counts such steps (`train/nonfinite_*`) and stops the run with `TrainingHalted` after
`trainer.max_consecutive_nonfinite` of them in a row.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from sfpo_rl.algorithms.advantages import compute_advantage
from sfpo_rl.algorithms.dapo import SamplingCapReached, mini_batch_unit, overlong_filtered_mask, sample_groups
from sfpo_rl.algorithms.kl import kl_penalty
from sfpo_rl.algorithms.sfpo import SFPOController
from sfpo_rl.controller import WorkerError
from sfpo_rl.data.loader import PromptLoader
from sfpo_rl.protocol import Batch
from sfpo_rl.rewards.shaping import add_at_last_token, overlong_penalty
from sfpo_rl.trainer.checkpoint import CheckpointManager
from sfpo_rl.trainer.config import SEEDS_PER_STEP, RunConfig
from sfpo_rl.trainer.metrics import rollout_metrics, timed, validation_metrics
from sfpo_rl.trainer.tracking import Tracker, due
from sfpo_rl.trainer.worker_groups import WorkerGroups
from sfpo_rl.utils.console import say
from sfpo_rl.workers.reward import reward_metrics
from sfpo_rl.workers.update_result import UpdateResult

logger = logging.getLogger(__name__)


class TrainingHalted(RuntimeError):
    """The run cannot usefully go on (e.g. too many non-finite updates in a row); the message says why."""


@dataclass
class TrainerState:
    """The driver's own progress: the one description of what every checkpoint saves (in trainer_state.json,
    beside the SFPO controller's and the data loader's states) and a resumed run restores."""

    step: int = 0
    rollouts_done: int = 0
    train_seconds: float = 0.0
    val_history: list[tuple[int, float]] = field(default_factory=list)  # (step, val/acc)
    nonfinite_total: int = 0  # steps whose update met a non-finite loss or gradient
    nonfinite_in_a_row: int = 0

    def __post_init__(self) -> None:
        self.val_history = [(int(step), float(acc)) for step, acc in self.val_history]  # JSON gives lists

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> TrainerState:
        return cls(**{f.name: state[f.name] for f in fields(cls)})


class RLTrainer:
    def __init__(
        self,
        config: RunConfig,
        groups: WorkerGroups,
        train_loader: PromptLoader,
        val_batch: Batch,
        resume_from: tuple[Path, dict[str, Any]] | None = None,
    ):
        """`resume_from`: a verified checkpoint and its trainer state (see `start_point`) to continue from."""
        self.config = config
        self.resume_from = resume_from
        self.groups = groups
        self.train_loader = train_loader
        self.val_batch = val_batch
        self.run_dir = Path(config.trainer.run_dir)
        self.sfpo = SFPOController(config.algorithm.sfpo)
        self.checkpoints = CheckpointManager(
            self.run_dir, config.trainer.keep_last, config.trainer.verify_checksums
        )
        self.progress = TrainerState()
        self.worker_restarts = 0  # this launch's, against trainer.max_worker_restarts

    @property
    def step(self) -> int:
        return self.progress.step

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        trainer = self.config.trainer
        resumed_from = self._resume()
        tracker = Tracker(
            self.run_dir,
            trainer.logger,
            project=trainer.project_name,
            experiment=trainer.experiment_name,
            config=asdict(self.config),
            resume_from_step=resumed_from,
            total_steps=trainer.total_steps,
            val_every=trainer.val_every,
        )
        try:
            if self.step == 0 and trainer.val_before_train:
                tracker.log(self.validate(), step=0)
            while self.step < trainer.total_steps:
                self.progress.step += 1
                metrics = self.train_step(self.step)
                if self._due(trainer.val_every):
                    metrics.update(self.validate())
                # Log first: a checkpoint never runs ahead of the log, and resume drops rows past it.
                tracker.log(metrics, step=self.step)
                self._stop_if_diverged()
                if self._due(trainer.save_every):
                    self.save_checkpoint()
        finally:
            tracker.close()
        return self.summary()

    def train_step(self, step: int) -> dict[str, Any]:
        self._inject_worker_kills(step)
        t: dict[str, float] = {}
        start = time.perf_counter()
        generated, batch, sampling = self.collect_rollouts(step, t)
        batch = self._restarting_dead_workers(lambda: self.prepare_update(batch, t))

        plan = self.sfpo.plan(step)
        with timed(t, "update"):
            update = self.groups.update_actor(self.loss_batch(batch), plan)
        self._count_nonfinite(step, update)
        # The entropy of this step's (slow) training pass; a non-finite one must not poison the switch-off.
        if math.isfinite(update.entropy):
            self.sfpo.observe(step, update.entropy)
        with timed(t, "sync"):
            sync = self._restarting_dead_workers(self.groups.sync_weights)

        t["timing/step"] = time.perf_counter() - start
        progress = self.progress
        progress.rollouts_done += len(generated)  # every rollout generated, the ones filtered out included
        progress.train_seconds += t["timing/step"]
        return {
            **rollout_metrics(batch, self.config.rollout.max_response_length),
            **reward_metrics(generated),  # the policy's rewards, before any filtering
            **self._shaping_metrics(generated),
            **sampling,
            **update.metrics,
            **self.sfpo.metrics(plan),
            **sync,
            **t,
            "perf/tokens_per_s": float(batch["attention_mask"].sum()) / t["timing/step"],
            "perf/rollouts": progress.rollouts_done,
            "perf/train_seconds": progress.train_seconds,
            "perf/load_avg_1m": os.getloadavg()[0],  # provenance: how shared the machine was
            "train/nonfinite_total": progress.nonfinite_total,
            "train/nonfinite_in_a_row": progress.nonfinite_in_a_row,
            "train/worker_restarts": self.worker_restarts,
        }

    def collect_rollouts(self, step: int, t: dict[str, float]) -> tuple[Batch, Batch, dict[str, float]]:
        """(every rollout generated, the batch to train on, sampling metrics). One round of the loader's next
        prompts; with `algorithm.filter_groups.enable`, rounds until enough groups whose samples differ
        (DAPO's dynamic sampling). Each round's prompts are drawn once, so a round redone after a worker died
        generates the same rollouts."""
        config = self.config
        filter_groups = config.algorithm.filter_groups
        batch_size, n = config.data.train_batch_size, config.rollout.n
        stats: list[dict[str, float]] = []

        def generate_round(index: int) -> Batch:
            prompts = next_prompts(
                self.train_loader, step, config.trainer.seed, n, first_row=index * batch_size
            )
            scored = self._restarting_dead_workers(lambda: self.generate_and_score(prompts, t))
            stats.append(scored.meta.get("generation_stats", {}))
            return scored

        unit = mini_batch_unit(config.actor.batching.ppo_mini_batch_size, n)
        try:
            generated, batch, metrics = sample_groups(generate_round, batch_size, filter_groups, unit)
        except SamplingCapReached as exc:
            raise TrainingHalted(f"step {step}: {exc}") from None
        gen_s = sum(s.get("gen_s", 0.0) for s in stats)
        tokens = sum(s.get("response_tokens", 0) for s in stats)
        metrics["perf/gen_tokens_per_s"] = tokens / gen_s if gen_s > 0 else 0.0
        return generated, batch, metrics

    def generate_and_score(self, prompts: Batch, t: dict[str, float]) -> Batch:
        """Rollouts of the current policy with their scores and shaped token-level rewards."""
        with timed(t, "generate"):
            batch = self.groups.generate(prompts)  # colocated engines wake first
        with timed(t, "reward"):
            batch = batch.union(self.groups.reward.compute_score(batch))
        batch["token_level_rewards"] = self.shaped_rewards(batch)
        return batch

    def prepare_update(self, batch: Batch, t: dict[str, float]) -> Batch:
        """The batch to train on with old (and reference) log-probs and advantages."""
        with timed(t, "old_log_prob"):
            self.groups.to_training()  # colocated engines sleep: their memory goes to the actor
            batch = batch.union(self.groups.actor.compute_log_prob(batch).select(keys=["old_log_probs"]))
        if self.groups.ref is not None:
            with timed(t, "ref_log_prob"):
                batch = batch.union(self.groups.ref.compute_ref_log_prob(batch))
        with timed(t, "advantage"):
            return self.compute_advantage(batch)

    def shaped_rewards(self, batch: Batch) -> torch.Tensor:
        """Where scores become token-level rewards: the verifier's score on the last response token, plus
        DAPO's overlong penalty when `reward.overlong_buffer.enable`."""
        mask = batch["response_mask"]
        rewards = batch["token_level_scores"] * mask
        buffer = self.config.reward.overlong_buffer
        if buffer.enable:
            limit = self.config.rollout.max_response_length
            penalty = overlong_penalty(mask.sum(-1), limit, buffer.buffer_len(limit), buffer.penalty_factor)
            rewards = add_at_last_token(rewards, mask, penalty)
        return rewards

    def _shaping_metrics(self, generated: Batch) -> dict[str, float]:
        if not self.config.reward.overlong_buffer.enable:
            return {}
        penalty = generated["token_level_rewards"].sum(-1) - generated["token_level_scores"].sum(-1)
        return {
            "reward/overlong_penalty": float(penalty.mean()),
            "reward/overlong_frac": float((penalty < 0).float().mean()),
        }

    def loss_batch(self, batch: Batch) -> Batch:
        """What the actor trains on: with `algorithm.overlong_filter`, responses that fill the whole response
        budget are masked out of the loss (DAPO's overlong filtering)."""
        if not self.config.algorithm.overlong_filter:
            return batch
        out = batch.select()
        out["response_mask"] = overlong_filtered_mask(
            batch["response_mask"], self.config.rollout.max_response_length
        )
        return out

    def _restarting_dead_workers(self, work: Callable[[], Any]) -> Any:
        """`work()`, redone after replacing a rollout, reward or reference group whose worker died or hung
        (the work must not change the actor; colocated workers are the actor's processes and are not
        replaced), while `trainer.max_worker_restarts` allows."""
        limit = self.config.trainer.max_worker_restarts
        while True:
            try:
                return work()
            except WorkerError as err:
                if not ((err.died or err.timed_out) and err.role in self.groups.restartable_roles):
                    raise
                if self.worker_restarts >= limit:
                    err.add_note(f"no worker restarts left (trainer.max_worker_restarts={limit})")
                    raise
                self.worker_restarts += 1
                what = "died" if err.died else "hung"
                say(
                    f"step {self.step}: {err.role} worker rank {err.rank} {what}; restarting the "
                    f"{err.role} workers and redoing the step's work (restart {self.worker_restarts} of {limit})",
                )
                self.groups.restart(err.role)
                self.groups.write_pids(self.run_dir)

    def _inject_worker_kills(self, step: int) -> None:
        for entry in self.config.faults.worker_kill:
            at, role, rank = entry.split(":")
            if int(at) == step:
                say(f"step {step}: fault injection: SIGKILL {role} worker rank {rank}")
                getattr(self.groups, role).kill_worker(int(rank))

    def _count_nonfinite(self, step: int, update: UpdateResult) -> None:
        progress = self.progress
        if not update.nonfinite:
            progress.nonfinite_in_a_row = 0
            return
        progress.nonfinite_total += 1
        progress.nonfinite_in_a_row += 1
        restored = update.sfpo is not None and update.sfpo.restored  # also when the fast weights went NaN
        where = "the SFPO fast trajectory was discarded (slow weights restored); " if restored else ""
        say(
            f"step {step}: non-finite loss or gradient: {where}{update.all_skipped_steps} optimizer step(s) "
            f"skipped ({progress.nonfinite_in_a_row} step(s) in a row, the run stops at "
            f"trainer.max_consecutive_nonfinite={self.config.trainer.max_consecutive_nonfinite})",
        )

    def _stop_if_diverged(self) -> None:
        limit = self.config.trainer.max_consecutive_nonfinite
        if self.progress.nonfinite_in_a_row < limit:
            return
        first = self.step - self.progress.nonfinite_in_a_row + 1
        raise TrainingHalted(
            f"training stopped at step {self.step}: steps {first}-{self.step} all met a non-finite loss or gradient "
            f"(trainer.max_consecutive_nonfinite={limit}). Their updates were skipped, so the weights hold no "
            "NaN; look at the learning rate and at these steps' rewards and losses in metrics.jsonl"
        )

    def compute_advantage(self, batch: Batch) -> Batch:
        algo = self.config.algorithm
        if algo.use_kl_in_reward:
            kl = kl_penalty(batch["old_log_probs"], batch["ref_log_probs"], algo.kl_penalty)
            batch["token_level_rewards"] = (batch["token_level_rewards"] - algo.kl_coef * kl) * batch[
                "response_mask"
            ]
        batch["advantages"], batch["returns"] = compute_advantage(
            algo.adv_estimator,
            batch["token_level_rewards"],
            batch["response_mask"],
            batch["uid"],
            **algo.adv_options,
        )
        return batch

    def validate(self) -> dict[str, float]:
        timings: dict[str, float] = {}
        with timed(timings, "validate"):
            batch = self._restarting_dead_workers(self._score_validation)
        metrics = validation_metrics(batch["data_source"], batch["uid"], batch["acc"].tolist())
        history = self.progress.val_history
        history.append((self.step, metrics["val/acc"]))
        metrics["val/best_acc"] = max(acc for _, acc in history)
        metrics["val/response_length"] = float(batch["response_mask"].sum(-1).float().mean())
        return {**metrics, **timings}

    def _score_validation(self) -> Batch:
        batch = self.groups.generate(self.val_batch, validate=True)
        return batch.union(self.groups.reward.compute_score(batch))

    def _due(self, every: int) -> bool:
        return due(self.step, every, self.config.trainer.total_steps)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Actor shards (DCP) + driver state, committed atomically as run_dir/checkpoints/step_N."""
        staging = self.checkpoints.staging_dir(self.step)
        self.groups.to_training()  # an offloaded optimizer state comes back before it is saved
        self.groups.actor.save_checkpoint(str(staging / "actor"))
        state = {
            **asdict(self.progress),
            "sfpo": self.sfpo.state_dict(),
            "train_loader": self.train_loader.state_dict(),
        }
        path = self.checkpoints.commit(staging, self.step, state)
        logger.info("saved checkpoint %s", path)
        return path

    def _resume(self) -> int | None:
        if self.resume_from is None:
            return None
        path, state = self.resume_from
        self.groups.actor.load_checkpoint(str(path / "actor"))
        self.progress = TrainerState.from_checkpoint(state)
        self.sfpo.load_state_dict(state["sfpo"])
        self.train_loader.load_state_dict(state["train_loader"])
        self.groups.sync_weights()  # the engines start from the base model; give them the resumed policy
        say(f"resumed from {path} at step {self.step}")
        return self.step

    def summary(self) -> dict[str, Any]:
        vals = self.progress.val_history
        return {
            "steps": self.step,
            "val_acc_first": vals[0][1] if vals else None,
            "val_acc_last": vals[-1][1] if vals else None,
            "val_acc_best": max(acc for _, acc in vals) if vals else None,
            "val_history": vals,
            "sfpo_switched_off_after": self.sfpo.switched_off_after,
            "rollouts": self.progress.rollouts_done,
            "train_seconds": self.progress.train_seconds,
            "run_dir": str(self.run_dir),
        }


def next_prompts(loader: PromptLoader, step: int, seed: int, n: int, first_row: int = 0) -> Batch:
    """The loader's next prompts with a uid per prompt (its n samples share it: the GRPO group) and a sampling
    seed per prompt that depends only on (seed, step, row), so a resumed run draws exactly the same rollouts.
    A step's rows count on across its generation rounds (`first_row`: the round's first), so every prompt of
    a step gets its own uid and seeds."""
    batch = loader.next_batch()
    batch["uid"] = [f"s{step}-{first_row + i}" for i in range(len(batch))]
    base = (seed * 1_000_003 + step) * SEEDS_PER_STEP + first_row * n
    batch["sampling_seed"] = sampling_seeds(len(batch), n, base=base)
    return batch


def sampling_seeds(rows: int, n: int, base: int = 0) -> list[int]:
    """Prompt i's n samples get seeds base + i * n ... base + i * n + n - 1: all distinct."""
    return [base + i * n for i in range(rows)]
