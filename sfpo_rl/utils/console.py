"""A console a person can read: third-party output (Ray's notices, vLLM's warnings, model-loading progress
bars) goes to the run's log files instead, unless `trainer.verbose=true`.

The redirection is of the file descriptors, not of Python's `sys.stdout`, so it also catches what C++ code
and child processes write.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set in every worker's environment: the directory its process writes its output to (see WorkerHost.start).
WORKER_LOG_DIR_ENV = "SFPO_RL_WORKER_LOG_DIR"


def send_output_to(path: Path) -> tuple[int, int]:
    """Append this process's stdout and stderr to `path` from now on; returns copies of the old descriptors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return saved


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr appended to `path` while the block runs."""
    saved = send_output_to(path)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, fd in zip((1, 2), saved):
            os.dup2(fd, target)
            os.close(fd)


PREFIX = "[sfpo_rl]"  # marks the framework's own lines among Ray's and the workers' forwarded output


def marked(text: str) -> str:
    """`text` as one of the framework's console lines."""
    return f"{PREFIX} {text}"


def say(*lines: str) -> None:
    """Lines for the person at the console, marked and flushed at once (so they keep their place among the
    workers' forwarded output)."""
    print("\n".join(marked(line) for line in lines), flush=True)
