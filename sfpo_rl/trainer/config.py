"""The run's configuration: one structured schema (registered with Hydra's ConfigStore, so a misspelt or
mistyped override is rejected by name) and cross-section checks that turn a composed config into typed parts.

Sections reuse the option classes of the parts they configure (`actor` -> ActorConfig, `rollout` ->
RolloutConfig, `reward` -> RewardConfig, `algorithm.sfpo` -> SFPOConfig), which validate their own values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from sfpo_rl.algorithms.advantages import advantage_estimators, needs_groups
from sfpo_rl.algorithms.kl import KL_ESTIMATORS
from sfpo_rl.algorithms.sfpo import SFPOConfig
from sfpo_rl.rewards.scoring import RewardConfig
from sfpo_rl.trainer.tracking import KNOWN_LOGGERS
from sfpo_rl.utils.options import ConfigError
from sfpo_rl.workers.actor_config import ActorConfig
from sfpo_rl.workers.rollout_config import RolloutConfig

WORKER_KILL = re.compile(r"(\d+):(actor|rollout|reward|ref):(\d+)")  # trainer.inject_worker_kill entries


@dataclass
class ModelConfig:
    # HF model dir (model=hf); null (model=tiny): the built-in tiny model, warm-started once and cached.
    path: str | None = MISSING
    cache_dir: str = "${oc.env:SFPO_RL_CACHE,${oc.env:HOME}/.cache/sfpo_rl}"
    warmstart: dict[str, Any] = field(
        default_factory=dict
    )  # built-in model and task: WarmStartConfig options


@dataclass
class DataConfig:
    # jsonl / parquet (data=files); null (data=arith): the built-in arithmetic task.
    train_files: list[str] | None = MISSING
    val_files: list[str] | None = MISSING
    train_batch_size: int = 16  # prompts per step (each sampled rollout.n times)
    val_max_samples: int | None = None  # cap on validation prompts (null: all)
    shuffle: bool = True
    seed: int = 0
    prompt_template: str | None = None  # "{prompt}" format string when the tokenizer has no chat template
    overlong_prompts: str = "filter"  # "filter" | "truncate" prompts longer than rollout.max_prompt_length


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    adv_options: dict[str, Any] = field(default_factory=dict)  # e.g. {epsilon: 1e-6} for grpo
    use_kl_in_reward: bool = False  # subtract kl_coef * KL(pi_old || pi_ref) from the token rewards
    kl_coef: float = 0.001
    kl_penalty: str = "low_var_kl"
    sfpo: SFPOConfig = field(default_factory=SFPOConfig)


@dataclass
class ResourcesConfig:
    """How many workers of each role; `trainer.nnodes` / `trainer.n_gpus_per_node` say where they go."""

    actor_ranks_per_node: int = 2  # FSDP ranks per node (one GPU each on a GPU run)
    rollout_workers_per_node: int = 1  # vLLM engines per node (rollout.tensor_parallel_size GPUs each)
    reward_workers: int = 1  # CPU-only verifier processes, anywhere in the cluster


@dataclass
class RayConfig:
    address: str | None = None  # null: start a local Ray; "auto" or "ray://host:port": join a cluster
    num_cpus: int | None = None  # local Ray only
    namespace: str | None = None
    # Added to every worker's environment. vLLM logs a harmless warning on each in-place weight reload.
    env_vars: dict[str, str] = field(default_factory=lambda: {"VLLM_LOGGING_LEVEL": "ERROR"})


@dataclass
class TrainerConfig:
    nnodes: int = 1  # the actor's FSDP ranks span this many nodes
    n_gpus_per_node: int = 0  # 0: a CPU run (gloo, float32)
    total_steps: int = 30
    val_every: int = 5  # 0: never (the last step is always validated when > 0)
    save_every: int = 10  # 0: never (the last step is always saved when > 0)
    val_before_train: bool = True
    project_name: str = "sfpo_rl"
    experiment_name: str = "tiny_arith_sfpo"
    run_dir: str = "outputs/${trainer.experiment_name}"
    resume: str = "auto"  # auto: from the newest valid checkpoint in run_dir; never; or a checkpoint path
    keep_last: int = 2
    verify_checksums: bool = True
    logger: list[str] = field(default_factory=lambda: ["console", "tensorboard"])  # JSONL is always written
    seed: int = 0
    export_hf: bool = True  # write the final policy as an HF model to run_dir/final_model
    # Stop the run after this many steps in a row whose update met a non-finite loss or gradient (each such
    # update is skipped: no NaN reaches the weights).
    max_consecutive_nonfinite: int = 5
    # A rollout, reward or reference worker whose process dies is rebuilt and the step's work redone, at most
    # this many times per launch (the actor is not: its state comes back from a checkpoint with resume=auto).
    max_worker_restarts: int = 2
    # A worker call (one generate, score, log-prob or update call...) running longer than this is taken as
    # hung: the group is restarted like a dead one, or the run stops (actor). 0: wait forever.
    worker_timeout_s: float = 7200.0
    # Testing only: SIGKILL one worker process at the start of a step, "<step>:<role>:<rank>" (role: actor,
    # rollout, reward or ref), e.g. ["4:reward:0"], to exercise the crash handling and resume end to end.
    inject_worker_kill: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_schema() -> None:
    ConfigStore.instance().store(name="sfpo_rl_schema", node=RunConfig)


@dataclass
class Validated:
    """The parts' own option objects, built from a composed config."""

    actor: ActorConfig
    rollout: RolloutConfig
    reward: RewardConfig
    sfpo: SFPOConfig
    uses_ref: bool  # a KL term needs a frozen reference policy, placed like the actor


def validate(cfg: DictConfig) -> Validated:
    """Check every section and the constraints between them; raises ConfigError naming the option."""
    for section, key, hint in (
        ("model", "path", "model=hf needs model.path=/path/to/hf_model_dir"),
        ("data", "train_files", "data=files needs data.train_files=[...] and data.val_files=[...]"),
        ("data", "val_files", "data=files needs data.train_files=[...] and data.val_files=[...]"),
    ):
        if OmegaConf.is_missing(cfg[section], key):
            raise ConfigError(f"{section}.{key} must be set ({hint})")
    try:
        actor = ActorConfig.from_any(_section(cfg, "actor"))
        parts = Validated(
            actor=actor,
            rollout=RolloutConfig.from_any(_section(cfg, "rollout")),
            reward=RewardConfig.from_any(_section(cfg, "reward")),
            sfpo=SFPOConfig.from_any(_section(cfg, "algorithm.sfpo")),
            uses_ref=actor.use_kl_loss or bool(cfg.algorithm.use_kl_in_reward),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc
    data, algo, res, trainer = cfg.data, cfg.algorithm, cfg.resources, cfg.trainer

    _need(data.train_batch_size >= 1, "data.train_batch_size", "an integer >= 1")
    _need(data.overlong_prompts in ("filter", "truncate"), "data.overlong_prompts", "filter or truncate")
    _need(
        (data.train_files is None) == (data.val_files is None),
        "data.val_files",
        "set together with data.train_files (or both null for the built-in task)",
    )
    _need(
        algo.adv_estimator in advantage_estimators(),
        "algorithm.adv_estimator",
        f"one of {', '.join(advantage_estimators())}",
    )
    _need(
        parts.rollout.n >= 2 or not needs_groups(algo.adv_estimator),
        "rollout.n",
        f">= 2 with algorithm.adv_estimator={algo.adv_estimator} (it compares the samples of each prompt); "
        "use more samples or reinforce_plus_plus",
    )
    _need(algo.kl_penalty in KL_ESTIMATORS, "algorithm.kl_penalty", f"one of {', '.join(KL_ESTIMATORS)}")
    for name in ("actor_ranks_per_node", "rollout_workers_per_node", "reward_workers"):
        _need(getattr(res, name) >= 1, f"resources.{name}", "an integer >= 1")
    _need(trainer.n_gpus_per_node >= 0, "trainer.n_gpus_per_node", "an integer >= 0")
    gpus = res.actor_ranks_per_node * (2 if parts.uses_ref else 1)
    gpus += res.rollout_workers_per_node * parts.rollout.tensor_parallel_size
    _need(
        trainer.n_gpus_per_node == 0 or gpus <= trainer.n_gpus_per_node,
        "resources.actor_ranks_per_node",
        f"such that actor (+ reference) ranks + rollout GPUs per node ({gpus}) fit in trainer.n_gpus_per_node="
        f"{trainer.n_gpus_per_node} (actor and rollout use separate GPUs)",
    )
    for name in ("nnodes", "total_steps", "keep_last", "max_consecutive_nonfinite"):
        _need(getattr(trainer, name) >= 1, f"trainer.{name}", "an integer >= 1")
    for name in ("val_every", "save_every", "max_worker_restarts"):
        _need(getattr(trainer, name) >= 0, f"trainer.{name}", "an integer >= 0")
    _need(trainer.worker_timeout_s >= 0, "trainer.worker_timeout_s", "a number of seconds >= 0 (0: no limit)")
    ranks = {
        "actor": trainer.nnodes * res.actor_ranks_per_node,
        "rollout": trainer.nnodes * res.rollout_workers_per_node,
        "reward": res.reward_workers,
        "ref": trainer.nnodes * res.actor_ranks_per_node if parts.uses_ref else 0,
    }
    kills = {str(k): WORKER_KILL.fullmatch(str(k)) for k in trainer.inject_worker_kill}
    bad_kills = [k for k, m in kills.items() if not (m and int(m[3]) < ranks[m[2]])]
    _need(
        not bad_kills,
        "trainer.inject_worker_kill",
        f'a list of "<step>:<role>:<rank>" naming a worker this run has (ranks: {ranks}), e.g. ["4:reward:0"]; '
        f"got {bad_kills}",
    )
    unknown = sorted(set(trainer.logger) - set(KNOWN_LOGGERS))
    _need(not unknown, "trainer.logger", f"a list drawn from {', '.join(KNOWN_LOGGERS)} (got {unknown})")

    # One update must split into whole, equal mini-batches on every FSDP rank.
    world = trainer.nnodes * res.actor_ranks_per_node
    rows = data.train_batch_size * parts.rollout.n
    mini = parts.actor.ppo_mini_batch_size
    _need(
        mini % world == 0,
        "actor.ppo_mini_batch_size",
        f"a multiple of the {world} actor ranks (trainer.nnodes x resources.actor_ranks_per_node), got {mini}",
    )
    _need(
        rows % mini == 0,
        "actor.ppo_mini_batch_size",
        f"a divisor of the {rows} rollouts per step (data.train_batch_size={data.train_batch_size} x "
        f"rollout.n={parts.rollout.n}), got {mini}",
    )
    _need(
        not (algo.use_kl_in_reward and parts.actor.use_kl_loss),
        "algorithm.use_kl_in_reward",
        "false when actor.use_kl_loss is true (choose one place for the KL term)",
    )
    return parts


def _section(cfg: DictConfig, key: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)


def _need(ok: bool, option: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{option} must be {expected}")
