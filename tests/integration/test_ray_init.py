"""The local Ray instance starts no idle workers: every process it runs for a job is one of the job's actors."""

from __future__ import annotations

import time

import psutil
import pytest
import ray

from sfpo_rl.controller import init_ray

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=1)
class Echo:
    def pid(self) -> int:
        import os

        return os.getpid()


def idle_workers() -> list[psutil.Process]:
    processes = psutil.Process().children(recursive=True)
    return [p for p in processes if p.is_running() and "ray::IDLE" in " ".join(p.cmdline())]


def test_no_idle_workers_are_prestarted():
    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=4)
    try:
        actor = Echo.remote()
        # By now Ray has prestarted what it would: 2 idle workers without the option.
        ray.get(actor.pid.remote())
        time.sleep(2.0)
        assert idle_workers() == []
    finally:
        ray.shutdown()
