"""LoRA options, the target-module check before launch, PEFT's names, and merging an adapter into full weights
(against PEFT's own merge)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from sfpo_rl.trainer.setup import check_lora_targets
from sfpo_rl.utils.options import ConfigError
from sfpo_rl.workers.actor_config import ActorConfig
from sfpo_rl.workers.lora import (
    DEFAULT_TARGET_MODULES,
    LoraConfig,
    add_adapter,
    check_target_modules,
    engine_lora_rank,
    merge_lora,
    saved_name,
)

SMALL = Qwen2Config(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, tie_word_embeddings=True,
)  # fmt: skip


def test_lora_is_off_by_default_and_nests_under_actor():
    assert ActorConfig().lora == LoraConfig(rank=0) and not ActorConfig().lora.enabled
    config = ActorConfig.from_any({"lora": {"rank": 8, "alpha": 32}})
    assert config.lora.enabled and config.lora.scaling == 4.0
    assert config.lora.target_modules == list(DEFAULT_TARGET_MODULES)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rank": -1}, "actor.lora.rank must be an integer >= 0"),
        ({"rank": 8, "alpha": 0}, "actor.lora.alpha must be a number > 0"),
        ({"rank": 8, "dropout": 1.0}, r"actor.lora.dropout must be in \[0, 1\)"),
        ({"rank": 8, "target_modules": []}, "actor.lora.target_modules must be a non-empty list"),
        ({"rank": 8, "target_modules": "q_proj"}, "actor.lora.target_modules must be a non-empty list"),
        ({"rnak": 8}, r"actor.lora.rnak: unknown option"),
    ],
)
def test_bad_lora_options_name_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        ActorConfig.from_any({"lora": options})


def test_an_unknown_target_module_is_refused_with_the_models_module_names():
    check_target_modules(LoraConfig(rank=8), SMALL, "m")  # the default targets exist in a Qwen2
    with pytest.raises(ConfigError) as err:
        check_target_modules(
            LoraConfig(rank=8, target_modules=["q_proj", "qkv_proj"]), SMALL, "model.path=/m"
        )
    text = str(err.value)
    assert text.startswith("actor.lora.target_modules: ['qkv_proj'] not in model.path=/m")
    for name in (*DEFAULT_TARGET_MODULES, "lm_head", "embed_tokens"):
        assert name in text


def test_an_adapter_on_a_tied_lm_head_is_refused():
    with pytest.raises(
        ConfigError, match=r"\['lm_head'\] of m, whose LM head and embeddings share one weight"
    ):
        check_target_modules(LoraConfig(rank=8, target_modules=["q_proj", "lm_head"]), SMALL, "m")


def test_the_run_checks_targets_of_the_built_in_model_before_building_it(tmp_path):
    lora = LoraConfig(rank=8, target_modules=["c_attn"])
    config = SimpleNamespace(model=SimpleNamespace(path=None), actor=ActorConfig(lora=lora))
    with pytest.raises(ConfigError, match=r"\['c_attn'\] not in the built-in model"):
        check_lora_targets(config)
    assert not any(tmp_path.iterdir())


def test_merge_equals_peft_merge_and_unload():
    torch.manual_seed(0)
    lora = LoraConfig(rank=4, alpha=8.0)
    model = add_adapter(Qwen2ForCausalLM(SMALL), lora, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # PEFT starts B at zero: the merge would change nothing
    merged = merge_lora(model.state_dict(), lora.scaling)
    reference = model.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    assert max((merged[k] - reference[k]).abs().max().item() for k in reference) < 1e-6


def test_the_adapter_is_seeded_and_names_are_peft_saved_names():
    lora = LoraConfig(rank=4)
    a, b = (add_adapter(Qwen2ForCausalLM(SMALL), lora, seed=3) for _ in range(2))
    adapters = [{n: p for n, p in m.named_parameters() if p.requires_grad} for m in (a, b)]
    assert all(torch.equal(adapters[0][n], adapters[1][n]) for n in adapters[0])
    assert not any(p.requires_grad for n, p in a.named_parameters() if "lora_" not in n)
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert name in adapters[0]
    assert saved_name(name) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def test_engine_rank_is_the_smallest_vllm_rank_that_holds_it():
    assert [engine_lora_rank(r) for r in (1, 2, 8, 9, 16, 300, 512)] == [1, 8, 8, 16, 16, 320, 512]
