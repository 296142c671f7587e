"""Model FLOP counting of the throughput benchmark against a hand-worked count and brute-force references."""

from __future__ import annotations

import pytest
import torch

from sfpo_rl.bench.flops import DecoderShape, update_flops
from sfpo_rl.tiny.model import build_model, build_tokenizer

SHAPE = DecoderShape(
    num_layers=2, hidden_size=8, intermediate_size=24, num_heads=2, num_kv_heads=1, head_dim=4, vocab_size=10
)


def test_update_flops_matches_a_hand_worked_count():
    # Per layer and token: q 8*8 + k, v 2*8*4 + o 8*8 + MLP 3*8*24 = 768 weights.
    # dense 6*2*768*(3+5) = 73728; LM head 6*8*10*(2+1) = 1440; attention 6*2*8*(3*4 + 5*6) = 4032.
    flops = update_flops(SHAPE, seq_lens=[3, 5], response_lens=[2, 1])
    assert SHAPE.layer_matmul_params == 768
    assert flops == {"dense": 73728, "lm_head": 1440, "attention": 4032, "total": 79200}


def test_attention_term_equals_a_brute_force_count_of_causal_multiply_adds():
    seq_lens = [1, 7, 12]
    macs = 0
    for s in seq_lens:
        for query in range(1, s + 1):  # query i meets keys 1..i, in QK^T and again in AV
            macs += 2 * query * SHAPE.attention_width * SHAPE.num_layers
    forward_flops = 2 * macs
    assert update_flops(SHAPE, seq_lens, [0, 0, 0])["attention"] == 3 * forward_flops


def test_shape_from_a_real_qwen2_counts_its_linear_weights():
    tokenizer = build_tokenizer(["12 + 34 = 46"])
    model = build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    shape = DecoderShape.from_hf_config(model.config)
    layer = model.model.layers[0]
    linear_weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert shape.layer_matmul_params == linear_weights
    assert shape.hidden_size * shape.vocab_size == model.lm_head.weight.numel()
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim) == (4, 2, 16)


def test_update_flops_rejects_inconsistent_lengths():
    with pytest.raises(ValueError, match="2 sequence lengths but 1 response"):
        update_flops(SHAPE, [3, 4], [1])
    with pytest.raises(ValueError, match="response length"):
        update_flops(SHAPE, [3], [4])
