"""The Hydra config tree: it composes into one typed RunConfig, groups switch what they should, sections and
cross-section rules report bad values by option name, the YAML files restate no default, and neither
validating a config nor printing it imports Ray or vLLM."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from sfpo_rl.algorithms.sfpo import SFPOConfig
from sfpo_rl.trainer.config import ConfigError, RunConfig, moved_override, register_schema, to_run_config
from sfpo_rl.trainer.main import run
from sfpo_rl.trainer.setup import CONFIG_DIR
from sfpo_rl.utils.options import require
from sfpo_rl.workers.actor_config import ActorConfig

REPO = Path(__file__).resolve().parents[2]
register_schema()


def composed(*overrides: str):
    """The composed config as `sfpo-rl-train` sees it (trainer.experiment_name reads the chosen groups)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg


def test_the_configs_are_the_repositorys_configs_directory_shipped_in_the_package():
    assert Path(CONFIG_DIR).resolve() == (REPO / "configs").resolve()
    assert (REPO / "sfpo_rl" / "configs").resolve() == (REPO / "configs").resolve()


def test_default_is_one_typed_tree_sfpo_with_the_papers_settings_on_cpu():
    config = to_run_config(composed())
    assert isinstance(config, RunConfig)
    assert isinstance(config.actor, ActorConfig) and isinstance(config.algorithm.sfpo, SFPOConfig)
    sfpo = config.algorithm.sfpo
    assert sfpo.enable and (sfpo.inner_steps, sfpo.alpha, sfpo.entropy_window, sfpo.entropy_threshold) == (
        3,
        0.8,
        30,
        1.0,
    )
    assert config.algorithm.adv_estimator == "grpo" and config.trainer.n_gpus_per_node == 0
    assert (
        config.actor.param_dtype == "float32"
        and config.model.path is None
        and config.data.train_files is None
    )
    assert config.actor.optimizer.betas == (
        0.9,
        0.999,
    )  # a tuple again after the round trip through OmegaConf
    assert config.trainer.experiment_name == "tiny_arith_sfpo"
    assert config.trainer.run_dir == "outputs/tiny_arith_sfpo"
    assert not config.uses_ref and config.actor_world_size == 2


def test_groups_switch_algorithm_and_hardware():
    assert not to_run_config(composed("algorithm=grpo")).algorithm.sfpo.enable
    gpu = to_run_config(composed("hardware=gpu", "actor.batching.ppo_mini_batch_size=64"))
    assert gpu.trainer.n_gpus_per_node == 8 and gpu.actor.param_dtype == "bfloat16"
    assert gpu.resources.actor_ranks_per_node == 8 and not gpu.rollout.enforce_eager
    # GPU nodes default to the hybrid engine: every rank hosts an engine that sleeps while the actor trains.
    assert gpu.resources.placement == "colocated" and gpu.rollout.free_cache_engine
    assert gpu.rollout_world_size == 8
    split = to_run_config(
        composed(
            "hardware=gpu",
            "resources.placement=split",
            "resources.actor_ranks_per_node=4",
            "resources.rollout_workers_per_node=4",
            "actor.batching.ppo_mini_batch_size=64",
        )
    )
    assert split.rollout_world_size == 4 and split.actor_world_size == 4


def test_colocated_placement_has_one_engine_per_actor_rank():
    config = to_run_config(composed("resources.placement=colocated", "faults.worker_kill=[3:rollout:1]"))
    assert config.rollout_world_size == config.actor_world_size == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["actor.batching.ppo_mini_batch_size=48"],
            "actor.batching.ppo_mini_batch_size must be a divisor of the 128 rollouts",
        ),
        (
            ["resources.actor_ranks_per_node=3", "actor.batching.ppo_mini_batch_size=64"],
            "a multiple of the 3 actor",
        ),
        (["data.train_files=[a.jsonl]"], "data.val_files must be set together"),
        (["algorithm.adv_estimator=gae"], "algorithm.adv_estimator must be one of"),
        (["algorithm.use_kl_in_reward=true", "actor.loss.use_kl_loss=true"], "algorithm.use_kl_in_reward"),
        (["actor.loss.clip_ratio_c=0.5"], "actor.loss.clip_ratio_c"),
        (["actor.loss.policy_loss=ppo"], "actor.loss.policy_loss must be one of gspo, ppo_clip"),
        (["rollout.temperature=-1"], "rollout.temperature"),
        (["trainer.total_steps=0"], "trainer.total_steps must be an integer >= 1, got 0"),
        (
            ["rollout.n=1", "actor.batching.ppo_mini_batch_size=16"],
            "rollout.n must be >= 2 with algorithm.adv_estimator=grpo",
        ),
        (["algorithm.sfpo.alpha=1.5"], "algorithm.sfpo.alpha must be a number in [0, 1], got 1.5"),
        (["model=hf"], "model.path must be set (model=hf needs model.path="),
        (["data=files"], "data.train_files must be set (data=files needs"),
        (["data.val_max_samples=0"], "data.val_max_samples must be null or an integer >= 1, got 0"),
        (["ray.num_cpus=0"], "ray.num_cpus must be null or an integer >= 1"),
        (["algorithm.kl_coef=-1"], "algorithm.kl_coef must be a number >= 0"),
        (["reward.timeout_s=0"], "reward.timeout_s"),
        (["trainer.worker_timeout_s=-1"], "trainer.worker_timeout_s must be a number of seconds >= 0"),
        (["trainer.logger=[nope]"], "trainer.logger must be a list drawn from"),
        (["faults.worker_kill=[3:reward]"], "faults.worker_kill must be a list of"),
        (["faults.worker_kill=[3:actor:2]"], "got ['3:actor:2']"),  # 2 actor ranks: 0 and 1
        (["faults.worker_kill=[3:ref:0]"], "got ['3:ref:0']"),  # no KL term: no reference workers
        (["faults.worker_kill=[3:rollout:1]"], "got ['3:rollout:1']"),  # split: one engine
        (["resources.placement=both"], "resources.placement must be colocated or split, got 'both'"),
        (
            ["resources.placement=colocated", "rollout.tensor_parallel_size=2"],
            "rollout.tensor_parallel_size must be 1 with resources.placement=colocated",
        ),
        (
            ["resources.offload_optimizer=true"],
            "resources.offload_optimizer must be false with resources.placement=split",
        ),
        (["rollout.sync_bucket_mb=0"], "rollout.sync_bucket_mb must be a number of MB > 0, got 0"),
        (["actor.lora.rank=-1"], "actor.lora.rank must be an integer >= 0 (0: off), got -1"),
        (
            ["actor.lora.rank=8", "rollout.free_cache_engine=true", "rollout.sleep_level=2"],
            "rollout.sleep_level must be 1 with actor.lora.rank > 0",
        ),
        # A LoRA actor is its own reference policy: no reference workers to kill.
        (
            ["actor.lora.rank=8", "actor.loss.use_kl_loss=true", "faults.worker_kill=[3:ref:0]"],
            "got ['3:ref:0']",
        ),
        (
            ["hardware=gpu", "resources.placement=split", "actor.batching.ppo_mini_batch_size=64"],
            "the GPUs per node (9) fit in trainer.n_gpus_per_node=8",
        ),
    ],
)
def test_invalid_values_and_combinations_name_the_option(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        to_run_config(composed(*overrides))


def test_schema_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigCompositionException, match="actor.lrr"):
        composed("actor.lrr=1")
    with pytest.raises(ConfigCompositionException, match="rollout.n=many"):
        composed("rollout.n=many")


def test_a_plain_config_is_checked_against_the_schema_by_option_name():
    """E.g. a run's config.yaml read back, or `--cfg job` output: no Hydra schema attached."""
    full = composed("trainer.experiment_name=x")
    run_only = OmegaConf.masked_copy(full, [key for key in full if key != "hydra"])
    plain = OmegaConf.create(OmegaConf.to_yaml(run_only, resolve=True))
    assert to_run_config(plain).trainer.experiment_name == "x"
    with pytest.raises(ConfigError, match=r"^actor\.lrr: Key 'lrr' not in 'ActorConfig'"):
        to_run_config(OmegaConf.merge(plain, {"actor": {"lrr": 1}}))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"actor": {"lr": 1e-5}}, "actor.optimizer.lr"),
        ({"actor": {"ppo_epochs": 2}}, "actor.batching.ppo_epochs"),
        ({"actor": {"entropy_coeff": 0.0}}, "actor.loss.entropy_coeff"),
        ({"actor": {"total_steps": 10}}, "trainer.total_steps"),
        ({"actor": {"inject_nonfinite_loss": ["3"]}}, "faults.nonfinite_loss"),
        ({"trainer": {"inject_worker_kill": ["3:reward:0"]}}, "faults.worker_kill"),
    ],
)
def test_an_option_at_its_old_place_names_its_new_one(old, new):
    """A run's config.yaml from before the actor's sections and the faults section, read back."""
    ((section, options),) = old.items()
    path = f"{section}.{next(iter(options))}"
    with pytest.raises(ConfigError, match=f"^{re.escape(path)} has moved: it is now {re.escape(new)}$"):
        to_run_config(OmegaConf.create(old))
    assert moved_override([f"{path}=1"]) == f"{path} has moved: it is now {new}"


def test_single_sample_runs_are_allowed_with_a_batch_level_estimator():
    cfg = composed(
        "rollout.n=1", "actor.batching.ppo_mini_batch_size=16", "algorithm.adv_estimator=reinforce_plus_plus"
    )
    assert to_run_config(cfg).rollout.n == 1


def test_kl_term_brings_the_reference_policy():
    config = to_run_config(composed("actor.loss.use_kl_loss=true", "faults.worker_kill=[3:ref:1]"))
    assert config.uses_ref


def test_the_built_in_models_context_is_checked_before_it_is_built(tmp_path):
    cfg = composed(f"model.cache_dir={tmp_path / 'cache'}", f"trainer.run_dir={tmp_path / 'run'}")
    cfg.rollout.max_prompt_length = 1024
    with pytest.raises(
        ConfigError, match=re.escape("= 1120 tokens, more than the 256 positions of the built-in")
    ):
        run(cfg)
    assert not (tmp_path / "cache").exists()  # no warm-start was built


def test_require_is_the_one_message_format():
    require(True, "x.y", "anything")
    with pytest.raises(ConfigError, match=r"^x\.y must be an integer >= 1, got 'a'$"):
        require(False, "x.y", "an integer >= 1", "a")
    with pytest.raises(ConfigError, match=r"^x\.y must be set$"):
        require(False, "x.y", "set")


def _flat(tree: dict, prefix: str = "") -> dict:
    """Dotted key -> leaf value; the values of free-form mappings count as leaves."""
    out = {}
    for key, value in (tree or {}).items():
        if key in ("defaults", "hydra"):
            continue
        dotted = f"{prefix}{key}"
        free_form = dotted in (
            "reward.verifier_kwargs",
            "ray.env_vars",
            "model.warmstart",
            "algorithm.adv_options",
        )
        out.update(
            _flat(value, dotted + ".") if isinstance(value, dict) and not free_form else {dotted: value}
        )
    return out


def test_yaml_files_hold_only_what_they_change():
    """Defaults live in the dataclasses: no config file restates one."""
    defaults = _flat(OmegaConf.to_container(OmegaConf.structured(RunConfig)))
    restated = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        text = path.read_text()
        group = path.parent.name
        package = "" if "@package _global_" in text or group == "configs" else f"{group}."
        for key, value in _flat(yaml.safe_load(text), package).items():
            if key in defaults and value == defaults[key]:
                restated.append(f"{path.relative_to(REPO)}: {key}: {value!r}")
    assert len(defaults) > 100 and not restated, "the schema's defaults already:\n" + "\n".join(restated)


# Modules that make `import ray` / `import vllm` fail: a command that still works never imported them.
POISON = {
    "ray/__init__.py": "raise ImportError('ray was imported')",
    "vllm/__init__.py": "raise ImportError('vllm was imported')",
}


@pytest.fixture(scope="module")
def no_ray_or_vllm(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("poison")
    for rel, text in POISON.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_validating_a_config_imports_neither_ray_nor_vllm(no_ray_or_vllm):
    script = textwrap.dedent(
        f"""
        import sys
        from hydra import compose, initialize_config_dir
        from sfpo_rl.trainer.config import register_schema, to_run_config
        register_schema()
        with initialize_config_dir(config_dir={CONFIG_DIR!r}, version_base="1.3"):
            cfg = compose("config", overrides=["trainer.experiment_name=x", "algorithm=grpo"])
        config = to_run_config(cfg)
        assert not config.algorithm.sfpo.enable
        print(sorted(m for m in ("ray", "vllm") if m in sys.modules))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=no_ray_or_vllm, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_cfg_job_prints_the_config_without_importing_ray_or_vllm(no_ray_or_vllm, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sfpo_rl.trainer.main", "algorithm=grpo", "--cfg", "job", "--resolve"],
        env=no_ray_or_vllm,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = OmegaConf.create(proc.stdout)
    assert printed.trainer.experiment_name == "tiny_arith_grpo" and not printed.algorithm.sfpo.enable
    assert not list(tmp_path.iterdir())  # printing wrote nothing
