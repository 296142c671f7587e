"""The actor's micro-batching options: defaults (token budget, one gradient reduction per mini-batch, packed
where flash-attention runs it) and errors that name the option."""

import pytest

from sfpo_rl.workers.actor_config import ActorConfig


def test_defaults_are_the_token_budget_paths():
    cfg = ActorConfig()
    assert cfg.micro_batch_size_per_gpu is None and cfg.log_prob_micro_batch_size is None
    assert cfg.max_tokens_per_micro_batch == 16384
    assert cfg.sync_grads_every_micro_batch is False and cfg.forward_layout == "auto"
    fixed = ActorConfig(micro_batch_size_per_gpu=2, log_prob_micro_batch_size=4)
    assert (fixed.micro_batch_size_per_gpu, fixed.log_prob_micro_batch_size) == (2, 4)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_tokens_per_micro_batch": 0}, r"actor\.max_tokens_per_micro_batch must be an integer >= 1"),
        ({"micro_batch_size_per_gpu": 0}, r"actor\.micro_batch_size_per_gpu must be null \(micro-batches by"),
        ({"log_prob_micro_batch_size": 1.5}, r"actor\.log_prob_micro_batch_size must be null"),
        (
            {"sync_grads_every_micro_batch": "yes"},
            r"actor\.sync_grads_every_micro_batch must be true or false",
        ),
        ({"forward_layout": "flat"}, r"actor\.forward_layout must be one of auto, packed, padded"),
    ],
)
def test_bad_values_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        ActorConfig(**options)
