"""Fixtures the integration tests share."""

import pytest
import ray

from sfpo_rl.controller import init_ray


@pytest.fixture(scope="module")
def ray_local() -> bool:
    """A local Ray with room for two actor ranks and two engines, for the module; True if this module started it
    (and so shuts it down)."""
    started = not ray.is_initialized()
    init_ray(num_cpus=8)
    yield started
    if started:
        ray.shutdown()
