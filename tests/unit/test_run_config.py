"""The Hydra config tree: defaults compose and validate, groups switch what they should, and cross-section
constraints are reported by option name."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from sfpo_rl.trainer.config import ConfigError, register_schema, validate

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
register_schema()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_is_sfpo_with_the_papers_settings_on_cpu():
    cfg = composed()
    parts = validate(cfg)
    assert parts.sfpo.enable and (parts.sfpo.inner_steps, parts.sfpo.alpha) == (3, 0.8)
    assert (parts.sfpo.entropy_window, parts.sfpo.entropy_threshold) == (30, 1.0)
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.trainer.n_gpus_per_node == 0
    assert parts.actor.param_dtype == "float32" and cfg.model.path is None


def test_groups_switch_algorithm_and_hardware():
    assert not validate(composed("algorithm=grpo")).sfpo.enable
    gpu = composed("hardware=gpu", "actor.ppo_mini_batch_size=64")
    assert gpu.trainer.n_gpus_per_node == 8 and validate(gpu).actor.param_dtype == "bfloat16"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["actor.ppo_mini_batch_size=48"], "actor.ppo_mini_batch_size must be a divisor of the 128 rollouts"),
        (["resources.actor_ranks_per_node=3", "actor.ppo_mini_batch_size=64"], "a multiple of the 3 actor"),
        (["data.train_files=[a.jsonl]"], "data.val_files must be set together"),
        (["algorithm.adv_estimator=gae"], "algorithm.adv_estimator must be one of"),
        (["algorithm.use_kl_in_reward=true", "actor.use_kl_loss=true"], "algorithm.use_kl_in_reward"),
        (["actor.clip_ratio_c=0.5"], "actor.clip_ratio_c"),
        (["rollout.temperature=-1"], "rollout.temperature"),
        (["trainer.total_steps=0"], "trainer.total_steps must be an integer >= 1"),
        (
            ["rollout.n=1", "actor.ppo_mini_batch_size=16"],
            "rollout.n must be >= 2 with algorithm.adv_estimator=grpo",
        ),
        (["algorithm.sfpo.alpha=1.5"], "algorithm.sfpo.alpha"),
        (["model=hf"], "model.path must be set (model=hf needs model.path="),
        (["data=files"], "data.train_files must be set (data=files needs"),
        (["trainer.worker_timeout_s=-1"], "trainer.worker_timeout_s must be a number of seconds >= 0"),
        (["trainer.inject_worker_kill=[3:reward]"], "trainer.inject_worker_kill must be a list of"),
        (["trainer.inject_worker_kill=[3:actor:2]"], "got ['3:actor:2']"),  # 2 actor ranks: 0 and 1
        (["trainer.inject_worker_kill=[3:ref:0]"], "got ['3:ref:0']"),  # no KL term: no reference workers
    ],
)
def test_invalid_combinations_name_the_option(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(composed(*overrides))


def test_schema_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigCompositionException, match="actor.lrr"):
        composed("actor.lrr=1")
    with pytest.raises(ConfigCompositionException, match="rollout.n=many"):
        composed("rollout.n=many")


def test_single_sample_runs_are_allowed_with_a_batch_level_estimator():
    cfg = composed(
        "rollout.n=1", "actor.ppo_mini_batch_size=16", "algorithm.adv_estimator=reinforce_plus_plus"
    )
    assert validate(cfg).rollout.n == 1
