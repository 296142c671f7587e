"""The CPU KV cache is sized to what the engine can use: max_num_seqs sequences of full length."""

from __future__ import annotations

import pytest
from transformers import Qwen2Config

from sfpo_rl.workers.rollout import kv_cache_bytes


def checkpoint(tmp_path, **overrides) -> str:
    shape = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4)
    Qwen2Config(**{**shape, **overrides}).save_pretrained(tmp_path)
    return str(tmp_path)


def test_the_tiny_default_gets_room_for_every_sequence(tmp_path):
    # A key and a value per layer: 2 x 4 layers x 2 KV heads x 32 dims x 4 bytes = 2 KiB per token; 224 tokens
    # round up to one 256-token block; 256 sequences.
    path = checkpoint(tmp_path, dtype="float32")
    assert kv_cache_bytes(path, "float32", 256, 224) == 256 * 256 * 2048 == 128 * 2**20
    assert kv_cache_bytes(path, "auto", 256, 224) == 128 * 2**20  # "auto": the checkpoint's float32


@pytest.mark.parametrize(
    ("dtype", "max_model_len", "expected_per_seq"),
    [("bfloat16", 224, 256 * 1024), ("float32", 257, 512 * 2048), ("float16", 512, 512 * 1024)],
)
def test_dtype_and_whole_blocks(tmp_path, dtype, max_model_len, expected_per_seq):
    path = checkpoint(tmp_path)
    assert kv_cache_bytes(path, dtype, 3, max_model_len) == 3 * expected_per_seq


def test_without_grouped_query_attention_every_head_has_its_cache(tmp_path):
    path = checkpoint(tmp_path, num_key_value_heads=None, dtype="bfloat16")
    # 2 x 4 layers x 4 heads x 32 dims x 2 bytes = 2 KiB per token
    assert kv_cache_bytes(path, "auto", 1, 100) == 256 * 2048


def test_an_explicit_head_dim_wins(tmp_path):
    path = checkpoint(tmp_path, head_dim=64)
    assert kv_cache_bytes(path, "float32", 1, 256) == 256 * 2 * 4 * 2 * 64 * 4
