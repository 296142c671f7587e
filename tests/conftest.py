"""Shared fixtures. Expensive artefacts (tiny models) are built once per test session."""

import os

import pytest

# vLLM keeps its engine in the calling process and uses a small KV cache on CPU.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer, 128-wide Qwen2 with a locally trained byte-level BPE tokenizer (HF format)."""
    from sfpo_rl.tiny.model import make_random_tiny_model

    texts = ["Compute 12 + 34 - 5. 12 + 34 = 46. 46 - 5 = 41. The answer is \\boxed{41}."] * 20
    return make_random_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0, texts=texts)


@pytest.fixture(scope="session")
def warmstart_cache(tmp_path_factory):
    """A cache dir holding the built-in task's default warm-start (what `sfpo-rl-train` uses with
    model.cache_dir pointing here), built once per session (a few minutes on 2 cores)."""
    from sfpo_rl.tiny.warmstart import ensure_warmstart

    cache = tmp_path_factory.mktemp("sfpo_cache")
    ensure_warmstart(cache)
    return cache
