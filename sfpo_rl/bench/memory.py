"""Resident memory of a process, read from /proc (Linux): its current resident set (VmRSS) and its high-water
mark (VmHWM), which writing "5" to /proc/<pid>/clear_refs resets to the current resident set. Together they give
what one call added at its peak. Why not torch's memory profiler: it misses FSDP2's frees of all-gathered
parameters (done by resizing storage to 0)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 2**20


def status_bytes(field: str, pid: int | str = "self") -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def reset_peak(pid: int | str = "self") -> None:
    """Set the process's VmHWM to its current resident set."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_above_start(fn: Callable[[], Any]) -> int:
    """Peak resident bytes of this process while fn runs, above its resident bytes when fn starts."""
    gc.collect()
    reset_peak()
    start = status_bytes("VmRSS")
    fn()
    return status_bytes("VmHWM") - start


class PeakMemory:
    """Per process (label -> pid): RSS before a block and the high-water mark RSS during it, in MB."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.before: dict[str, float] = {}
        self.result: dict[str, dict[str, float]] = {}

    def __enter__(self) -> PeakMemory:
        for label, pid in self.pids.items():
            reset_peak(pid)
            self.before[label] = status_bytes("VmRSS", pid) / MIB
        return self

    def __exit__(self, *exc: Any) -> None:
        for label, pid in self.pids.items():
            peak = status_bytes("VmHWM", pid) / MIB
            self.result[label] = {
                "rss_mb": self.before[label],
                "peak_mb": peak,
                "extra_mb": peak - self.before[label],
            }
