"""The run's configuration: one tree of dataclasses, `RunConfig`.

It is both Hydra's schema (registered with the ConfigStore, so a misspelt or mistyped override is rejected by
name) and the typed object the trainer and the worker groups receive: `to_run_config(cfg)` turns a composed
config into it with `OmegaConf.to_object`. Every section checks its own values in `__post_init__`; the rules
that tie sections together live in `RunConfig.__post_init__`. Errors are ConfigError naming the option.

The defaults live here, in the dataclasses; the YAML files under configs/ hold only what a config group or an
experiment changes. Nothing here imports Ray or vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from sfpo_rl.algorithms.advantages import advantage_estimators, needs_groups
from sfpo_rl.algorithms.dapo import FilterGroupsConfig
from sfpo_rl.algorithms.kl import KL_ESTIMATORS
from sfpo_rl.algorithms.sfpo import SFPOConfig
from sfpo_rl.data.dataset import check_prompt_options
from sfpo_rl.rewards.scoring import RewardConfig
from sfpo_rl.trainer.tracking import KNOWN_LOGGERS
from sfpo_rl.utils.options import ConfigError, is_int, is_number, require
from sfpo_rl.workers.actor_config import MOVED as ACTOR_MOVED
from sfpo_rl.workers.actor_config import ActorConfig, moved_option
from sfpo_rl.workers.faults import NONFINITE_LOSS_POINT, WORKER_KILL
from sfpo_rl.workers.rollout_config import RolloutConfig

__all__ = ["ConfigError", "RunConfig", "register_schema", "to_run_config"]

PLACEMENTS = ("colocated", "split")
# Rollout sampling seeds a training step may use (its prompts' rows x rollout.n, over all generation rounds):
# step s draws from [s * SEEDS_PER_STEP, (s + 1) * SEEDS_PER_STEP), so no two steps share a seed.
SEEDS_PER_STEP = 1_000_000
# Options that left their place: old path -> new path.
MOVED = {**ACTOR_MOVED, "trainer.inject_worker_kill": "faults.worker_kill"}
# Options a config group leaves for the user to fill in (`???` in its YAML), with how to give them.
REQUIRED = {
    "model.path": "model=hf needs model.path=/path/to/hf_model_dir",
    "data.train_files": "data=files needs data.train_files=[...] and data.val_files=[...]",
    "data.val_files": "data=files needs data.train_files=[...] and data.val_files=[...]",
}


@dataclass
class ModelConfig:
    # A Hugging Face causal LM directory (model=hf); null (model=tiny): the built-in tiny model, warm-started
    # once and cached. Required: the model group chooses.
    path: str | None = MISSING
    cache_dir: str = "${oc.env:SFPO_RL_CACHE,${oc.env:HOME}/.cache/sfpo_rl}"
    warmstart: dict[str, Any] = field(default_factory=dict)  # the built-in model's WarmStartConfig options

    def __post_init__(self) -> None:
        require(
            self.path is None or isinstance(self.path, str), "model.path", "a directory or null", self.path
        )


@dataclass
class DataConfig:
    # jsonl / parquet files (data=files); both null (data=arith): the built-in arithmetic task. Required: the data
    # group chooses.
    train_files: list[str] | None = MISSING
    val_files: list[str] | None = MISSING
    train_batch_size: int = 16  # prompts per step (each sampled rollout.n times)
    val_max_samples: int | None = None  # cap on validation prompts (null: all)
    shuffle: bool = True
    seed: int = 0
    prompt_template: str | None = None  # "{prompt}" format string when the tokenizer has no chat template
    # "filter" | "truncate" | "error": what becomes of prompts longer than rollout.max_prompt_length
    overlong_prompts: str = "filter"

    def __post_init__(self) -> None:
        b = self.train_batch_size
        require(is_int(b) and b >= 1, "data.train_batch_size", "an integer >= 1", b)
        cap = self.val_max_samples
        require(
            cap is None or (is_int(cap) and cap >= 1), "data.val_max_samples", "null or an integer >= 1", cap
        )
        check_prompt_options(self.overlong_prompts, self.prompt_template)
        require(
            (self.train_files is None) == (self.val_files is None),
            "data.val_files",
            "set together with data.train_files (or both null for the built-in task)",
        )


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    adv_options: dict[str, Any] = field(default_factory=dict)  # e.g. {epsilon: 1e-6} for grpo
    use_kl_in_reward: bool = False  # subtract kl_coef * KL(pi_old || pi_ref) from the token rewards
    kl_coef: float = 0.001
    kl_penalty: str = "low_var_kl"
    sfpo: SFPOConfig = field(default_factory=SFPOConfig)
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)  # DAPO's dynamic sampling
    # DAPO's overlong filtering: responses that fill all rollout.max_response_length tokens are masked out of
    # the loss (with a seq-mean loss_agg_mode they still count in its sequence denominator).
    overlong_filter: bool = False

    def __post_init__(self) -> None:
        estimators = advantage_estimators()
        require(
            self.adv_estimator in estimators,
            "algorithm.adv_estimator",
            f"one of {', '.join(estimators)}",
            self.adv_estimator,
        )
        require(
            self.kl_penalty in KL_ESTIMATORS,
            "algorithm.kl_penalty",
            f"one of {', '.join(KL_ESTIMATORS)}",
            self.kl_penalty,
        )
        require(
            is_number(self.kl_coef) and self.kl_coef >= 0, "algorithm.kl_coef", "a number >= 0", self.kl_coef
        )
        require(
            isinstance(self.overlong_filter, bool),
            "algorithm.overlong_filter",
            "true or false",
            self.overlong_filter,
        )


@dataclass
class ResourcesConfig:
    """How many workers of each role and whether actor and rollout share processes; `trainer.nnodes` /
    `trainer.n_gpus_per_node` say where they go."""

    # colocated: every actor rank's process also hosts a vLLM engine (and the reference policy), on the same
    # GPU; the engine sleeps while the actor trains. split: engines on their own processes and GPUs.
    placement: str = "split"
    actor_ranks_per_node: int = 2  # FSDP ranks per node (one GPU each on a GPU run)
    # split: vLLM engines per node (rollout.tensor_parallel_size GPUs each); colocated: one per actor rank.
    rollout_workers_per_node: int = 1
    reward_workers: int = 1  # CPU-only verifier processes, anywhere in the cluster
    # colocated, GPU: the actor's optimizer state waits in host memory while the engine generates.
    offload_optimizer: bool = False

    def __post_init__(self) -> None:
        require(self.placement in PLACEMENTS, "resources.placement", " or ".join(PLACEMENTS), self.placement)
        for name in ("actor_ranks_per_node", "rollout_workers_per_node", "reward_workers"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"resources.{name}", "an integer >= 1", value)
        require(isinstance(self.offload_optimizer, bool), "resources.offload_optimizer", "true or false")
        require(
            not self.offload_optimizer or self.placement == "colocated",
            "resources.offload_optimizer",
            "false with resources.placement=split (the optimizer state only makes room for a colocated engine)",
        )

    @property
    def colocated(self) -> bool:
        return self.placement == "colocated"


@dataclass
class RayConfig:
    address: str | None = None  # null: start a local Ray; "auto" or "ray://host:port": join a cluster
    num_cpus: int | None = None  # local Ray only
    namespace: str | None = None
    # Added to every worker's environment. vLLM logs a harmless warning on each in-place weight reload.
    env_vars: dict[str, str] = field(default_factory=lambda: {"VLLM_LOGGING_LEVEL": "ERROR"})

    def __post_init__(self) -> None:
        n = self.num_cpus
        require(n is None or (is_int(n) and n >= 1), "ray.num_cpus", "null or an integer >= 1", n)
        require(
            n is None or self.address is None, "ray.num_cpus", "null when joining a cluster (ray.address)", n
        )


@dataclass
class TrainerConfig:
    nnodes: int = 1  # the actor's FSDP ranks span this many nodes
    n_gpus_per_node: int = 0  # 0: a CPU run (gloo, float32)
    total_steps: int = 30
    val_every: int = 5  # 0: never (the last step is always validated when > 0)
    save_every: int = 10  # 0: never (the last step is always saved when > 0)
    val_before_train: bool = True
    project_name: str = "sfpo_rl"
    experiment_name: str = "run"  # configs/config.yaml names it after the chosen experiment and algorithm
    run_dir: str = "outputs/${trainer.experiment_name}"
    # auto: continue the run in run_dir from its newest valid checkpoint (a finished run is reported and left
    # alone); never: start over in run_dir, replacing its metrics and checkpoints; or a checkpoint path.
    resume: str = "auto"
    keep_last: int = 2
    verify_checksums: bool = True
    logger: list[str] = field(default_factory=lambda: ["console", "tensorboard"])  # JSONL is always written
    seed: int = 0
    # Write the final policy as an HF model to run_dir/final_model (LoRA: also the adapter to final_adapter).
    export_hf: bool = True
    # Show third-party output (Ray, vLLM, model-loading progress, the workers' own logs) on the console;
    # otherwise it goes only to run_dir/logs/.
    verbose: bool = False
    # Stop the run after this many steps in a row whose update met a non-finite loss or gradient (each such
    # update is skipped: no NaN reaches the weights).
    max_consecutive_nonfinite: int = 5
    # A rollout, reward or reference worker whose process dies is rebuilt and the step's work redone, at most
    # this many times per launch (the actor is not: its state comes back from a checkpoint with resume=auto).
    max_worker_restarts: int = 2
    # A worker call (one generate, score, log-prob or update call...) running longer than this is taken as
    # hung: the group is restarted like a dead one, or the run stops (actor). 0: wait forever.
    worker_timeout_s: float = 7200.0

    def __post_init__(self) -> None:
        for name in ("nnodes", "total_steps", "keep_last", "max_consecutive_nonfinite"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"trainer.{name}", "an integer >= 1", value)
        for name in ("n_gpus_per_node", "val_every", "save_every", "max_worker_restarts"):
            value = getattr(self, name)
            require(is_int(value) and value >= 0, f"trainer.{name}", "an integer >= 0", value)
        timeout = self.worker_timeout_s
        require(
            is_number(timeout) and timeout >= 0,
            "trainer.worker_timeout_s",
            "a number of seconds >= 0 (0: no limit)",
        )
        unknown = sorted(set(self.logger) - set(KNOWN_LOGGERS))
        require(
            not unknown, "trainer.logger", f"a list drawn from {', '.join(KNOWN_LOGGERS)} (got {unknown})"
        )
        require(bool(self.resume), "trainer.resume", "auto, never or a checkpoint directory", self.resume)


@dataclass
class FaultsConfig:
    """Testing only: faults injected on purpose to exercise the crash and non-finite handling end to end. A
    non-finite loss is a hook installed on the actor only when one is configured (sfpo_rl/workers/faults.py);
    worker kills are sent by the driver at the start of their step."""

    # Make the actor's loss NaN at these points. An entry is a training step (1-based), "3", or a step and one
    # pass of it: "3:update", "3:fast0", "3:slow".
    nonfinite_loss: list[str] = field(default_factory=list)
    # SIGKILL one worker process at the start of a step, "<step>:<role>:<rank>" (role: actor, rollout, reward or
    # ref), e.g. ["4:reward:0"], to exercise the crash handling and resume (the ranks are checked by RunConfig).
    worker_kill: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        points = self.nonfinite_loss
        bad = (
            [points]
            if isinstance(points, str)
            else [p for p in points if not NONFINITE_LOSS_POINT.match(str(p))]
        )
        require(
            not bad,
            "faults.nonfinite_loss",
            f'a list of "<step>" or "<step>:<pass>" (pass: update, slow, fast<k>), e.g. ["3", "4:fast0"]; got {bad}',
        )
        self.nonfinite_loss = [str(p) for p in points]


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
    faults: FaultsConfig = field(default_factory=FaultsConfig)

    @property
    def uses_ref(self) -> bool:
        """A KL term needs a frozen reference policy, placed like the actor."""
        return self.actor.loss.use_kl_loss or self.algorithm.use_kl_in_reward

    @property
    def ref_worker(self) -> bool:
        """A reference policy of its own; a LoRA actor is its own reference (its adapter switched off)."""
        return self.uses_ref and not self.actor.lora.enabled

    @property
    def actor_world_size(self) -> int:
        return self.trainer.nnodes * self.resources.actor_ranks_per_node

    @property
    def rollout_world_size(self) -> int:
        """vLLM engines: one per actor rank when colocated."""
        if self.resources.colocated:
            return self.actor_world_size
        return self.trainer.nnodes * self.resources.rollout_workers_per_node

    def __post_init__(self) -> None:
        """The rules between sections."""
        algo, rollout, actor, res, trainer = (
            self.algorithm,
            self.rollout,
            self.actor,
            self.resources,
            self.trainer,
        )
        require(
            rollout.n >= 2 or not needs_groups(algo.adv_estimator),
            "rollout.n",
            f">= 2 with algorithm.adv_estimator={algo.adv_estimator} (it compares the samples of each prompt); "
            "use more samples or reinforce_plus_plus",
        )
        filter_groups = algo.filter_groups
        require(
            rollout.n >= 2 or not filter_groups.enable,
            "rollout.n",
            ">= 2 with algorithm.filter_groups.enable=true (it drops groups whose samples all agree: a single "
            "sample always does)",
        )
        rounds = filter_groups.max_num_gen_batches if filter_groups.enable else 1
        samples = rounds * self.data.train_batch_size * rollout.n
        require(
            samples <= SEEDS_PER_STEP,
            "algorithm.filter_groups.max_num_gen_batches"
            if filter_groups.enable
            else "data.train_batch_size",
            f"such that a step generates at most {SEEDS_PER_STEP} rollouts (each has its own sampling seed); "
            f"{rounds} round(s) x data.train_batch_size={self.data.train_batch_size} x rollout.n={rollout.n} "
            f"= {samples}",
        )
        buffer, limit = self.reward.overlong_buffer, rollout.max_response_length
        require(
            not buffer.enable or buffer.buffer_len(limit) < limit,
            "reward.overlong_buffer.len",
            f"less than rollout.max_response_length={limit} (the penalty starts that many tokens before the "
            "limit)",
            buffer.len,
        )
        require(
            not (algo.use_kl_in_reward and actor.loss.use_kl_loss),
            "algorithm.use_kl_in_reward",
            "false when actor.loss.use_kl_loss is true (choose one place for the KL term)",
        )
        require(
            not (actor.lora.enabled and rollout.free_cache_engine and rollout.sleep_level == 2),
            "rollout.sleep_level",
            "1 with actor.lora.rank > 0 (level 2 discards the engine's base weights, and a LoRA sync sends only "
            "the adapter)",
        )
        if res.colocated:
            require(
                rollout.tensor_parallel_size == 1,
                "rollout.tensor_parallel_size",
                "1 with resources.placement=colocated (each actor rank hosts a whole engine); use "
                "resources.placement=split for tensor-parallel engines",
            )
            gpus, shared = res.actor_ranks_per_node, "actor, reference and rollout share each rank's GPU"
        else:
            gpus = res.actor_ranks_per_node * (2 if self.ref_worker else 1)
            gpus += res.rollout_workers_per_node * rollout.tensor_parallel_size
            shared = "actor, reference and rollout use separate GPUs with resources.placement=split"
        require(
            trainer.n_gpus_per_node == 0 or gpus <= trainer.n_gpus_per_node,
            "resources.actor_ranks_per_node",
            f"such that the GPUs per node ({gpus}) fit in trainer.n_gpus_per_node={trainer.n_gpus_per_node} "
            f"({shared})",
        )
        ranks = {
            "actor": self.actor_world_size,
            "rollout": self.rollout_world_size,
            "reward": res.reward_workers,
            "ref": self.actor_world_size if self.ref_worker else 0,
        }
        kills = {str(k): WORKER_KILL.fullmatch(str(k)) for k in self.faults.worker_kill}
        bad_kills = [k for k, m in kills.items() if not (m and int(m[3]) < ranks[m[2]])]
        require(
            not bad_kills,
            "faults.worker_kill",
            f'a list of "<step>:<role>:<rank>" naming a worker this run has (ranks: {ranks}), e.g. ["4:reward:0"]; '
            f"got {bad_kills}",
        )
        # One update must split into whole, equal mini-batches on every FSDP rank.
        world, mini = self.actor_world_size, actor.batching.ppo_mini_batch_size
        rows = self.data.train_batch_size * rollout.n
        require(
            mini % world == 0,
            "actor.batching.ppo_mini_batch_size",
            f"a multiple of the {world} actor ranks (trainer.nnodes x resources.actor_ranks_per_node), got {mini}",
        )
        require(
            rows % mini == 0,
            "actor.batching.ppo_mini_batch_size",
            f"a divisor of the {rows} rollouts per step (data.train_batch_size={self.data.train_batch_size} x "
            f"rollout.n={rollout.n}), got {mini}",
        )


def algorithm_label(choice: str, sfpo_enabled: bool) -> str:
    """The algorithm part of a run's default name (configs/config.yaml): the chosen `algorithm=` group, as
    sfpo_<group> when SFPO is switched on over a group that has it off (`algorithm=dapo
    algorithm.sfpo.enable=true` -> sfpo_dapo), so that run does not continue the other's run directory."""
    return f"sfpo_{choice}" if sfpo_enabled and choice != "sfpo" else choice


def register_schema() -> None:
    ConfigStore.instance().store(name="sfpo_rl_schema", node=RunConfig)
    OmegaConf.register_new_resolver("sfpo_rl_algorithm", algorithm_label, replace=True)


def moved_override(overrides: list[str]) -> str | None:
    """Where an option of these command-line overrides went, if one names an option at its old place."""
    return moved_option((override.lstrip("+~").split("=", 1)[0] for override in overrides), MOVED)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The typed, validated run configuration of a composed config (or of a plain one, e.g. read back from a
    run's config.yaml); ConfigError naming the option otherwise."""
    for key, hint in REQUIRED.items():
        section, option = key.split(".")
        if section in cfg and OmegaConf.is_missing(cfg[section], option):
            raise ConfigError(f"{key} must be set ({hint})")
    given = (f"{section}.{key}" for section in ("actor", "trainer") if section in cfg for key in cfg[section])
    if moved := moved_option(given, MOVED):
        raise ConfigError(moved)
    if "hydra" in cfg:  # composed with return_hydra_config=True: the hydra node is not part of the run
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        return OmegaConf.to_object(OmegaConf.merge(RunConfig, cfg))
    except ConfigError:
        raise
    except (ValueError, TypeError, OmegaConfBaseException) as exc:  # e.g. reward's VerifierError, a bad key
        message = str(exc).split("\n")[0]
        key = getattr(exc, "full_key", None)  # OmegaConf's errors name the option apart from the message
        raise ConfigError(f"{key}: {message}" if key else message) from exc
