"""The actor's micro-batching options: defaults (token budget, one gradient reduction per mini-batch, packed
where flash-attention runs it) and errors that name the option."""

import pytest

from sfpo_rl.workers.actor_config import ActorConfig


def test_defaults_are_the_token_budget_paths():
    cfg = ActorConfig().batching
    assert cfg.micro_batch_size_per_gpu is None and cfg.log_prob_micro_batch_size is None
    assert cfg.max_tokens_per_micro_batch == 16384
    assert cfg.sync_grads_every_micro_batch is False and cfg.forward_layout == "auto"
    fixed = ActorConfig.from_any(
        {"batching": {"micro_batch_size_per_gpu": 2, "log_prob_micro_batch_size": 4}}
    )
    assert (fixed.batching.micro_batch_size_per_gpu, fixed.batching.log_prob_micro_batch_size) == (2, 4)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"max_tokens_per_micro_batch": 0},
            r"actor\.batching\.max_tokens_per_micro_batch must be an integer >= 1",
        ),
        (
            {"micro_batch_size_per_gpu": 0},
            r"actor\.batching\.micro_batch_size_per_gpu must be null \(micro-batches by",
        ),
        ({"log_prob_micro_batch_size": 1.5}, r"actor\.batching\.log_prob_micro_batch_size must be null"),
        (
            {"sync_grads_every_micro_batch": "yes"},
            r"actor\.batching\.sync_grads_every_micro_batch must be true or false",
        ),
        ({"forward_layout": "flat"}, r"actor\.batching\.forward_layout must be one of auto, packed, padded"),
    ],
)
def test_bad_values_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        ActorConfig.from_any({"batching": options})
