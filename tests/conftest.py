"""Shared fixtures (expensive artefacts, tiny models, are built once per test session) and the test lanes:
`slow` marks every test that starts Ray, vLLM or torch.distributed; a test without it that leaves Ray or a
process group running fails, so `make test-fast` (tests/unit, not slow) stays fast. Unit tests get a shorter
per-test timeout than pyproject's."""

import os
import sys

import pytest

UNIT_TIMEOUT_S = 120


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/unit/" in str(item.path) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


def _running() -> set[str]:
    """What of Ray and torch.distributed runs in this process (without importing either)."""
    ray, dist = sys.modules.get("ray"), sys.modules.get("torch.distributed")
    return {
        name
        for name, running in (
            ("Ray", ray is not None and ray.is_initialized()),
            ("a torch.distributed process group", dist is not None and dist.is_initialized()),
        )
        if running
    }


_BEFORE = pytest.StashKey[set]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_BEFORE] = _running()  # before the test's fixtures start anything
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    started = _running() - item.stash.get(_BEFORE, set())
    if started and item.get_closest_marker("slow") is None:
        pytest.fail(
            f"{item.nodeid} started {' and '.join(sorted(started))} but is not marked slow", pytrace=False
        )


# vLLM keeps its engine in the calling process (on CPU, VLLMRollout sizes its KV cache itself).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
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
    model.cache_dir pointing here), copied once per session from the package's shipped build (seconds)."""
    from sfpo_rl.tiny.warmstart import ensure_warmstart

    cache = tmp_path_factory.mktemp("sfpo_cache")
    ensure_warmstart(cache)
    return cache
