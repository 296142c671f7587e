"""Time-limited verification: a verifier that raises or runs too long gives reward 0 and is counted.

A Python thread cannot be killed, so there are two ways to stop a call:

- `score_with_timeout` (`reward.timeout_mode=signal`): SIGALRM raises `VerifierTimeout` inside the call.
  Microseconds of overhead, no extra process. Only on a process's main thread (a Ray actor runs its methods
  there) and only for code that returns to the interpreter now and then: pure Python loops, sympy, even a huge
  `10**10**8` or a backtracking regex are interrupted; a hang inside a C extension that never checks for
  signals is not.
- `VerifierPool` (`reward.timeout_mode=process`, the default): persistent child processes score tasks, each
  under SIGALRM on the child's own main thread, and stream back one result per task. A child that gives no
  result within `timeout_s + grace_s` is killed and restarted and its task counted as a timeout, so anything
  is stopped. A child that dies (an OOM kill, a crash in C code) costs at most the task it was scoring, counted
  as an error; one found dead between batches is replaced before it is sent anything and costs nothing. Children are plain `python -m` subprocesses (not multiprocessing spawn/fork): nothing of the
  parent's main module is re-imported, and a parent that holds threads (Ray, torch) is never forked.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

OK, ERROR, TIMEOUT = "ok", "error", "timeout"
READY = "ready"
CHILD_MODULE = "sfpo_rl.rewards.verifier_process"


class VerifierTimeout(BaseException):
    """Raised into a verifier past its limit; a BaseException so its own `except Exception` cannot swallow it."""


@dataclass(frozen=True)
class Outcome:
    score: float
    acc: bool
    status: str  # OK, ERROR or TIMEOUT
    detail: str = ""  # what went wrong, for the log


@dataclass(frozen=True)
class Task:
    data_source: str
    solution_str: str
    ground_truth: Any
    extra_info: Any


def signal_timeout_available() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def outcome_of(result: Any) -> Outcome:
    """A verifier's float or {"score", "acc"} as an Outcome; acc defaults to score >= 1 (fully correct)."""
    acc = None
    if isinstance(result, Mapping):
        if "score" not in result:
            raise ValueError(f"verifier returned a dict without 'score': keys {sorted(result)}")
        acc = result.get("acc")
        result = result["score"]
    if isinstance(result, bool) or not isinstance(result, int | float) or not math.isfinite(result):
        raise ValueError(f"verifier score must be a finite number, got {result!r}")
    return Outcome(float(result), bool(result >= 1.0) if acc is None else bool(acc), OK)


def score_with_timeout(
    fn: Callable[..., Any],
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    timeout_s: float,
    options: Mapping[str, Any] | None = None,
) -> Outcome:
    """Run one verification under SIGALRM (main thread only); exceptions and timeouts become reward 0."""
    if not signal_timeout_available():
        raise RuntimeError(
            "score_with_timeout needs the main thread (SIGALRM); elsewhere use reward.timeout_mode=process"
        )

    def on_alarm(signum: int, frame: Any) -> None:
        raise VerifierTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            result = fn(
                solution_str=solution_str, ground_truth=ground_truth, extra_info=extra_info, **(options or {})
            )
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return outcome_of(result)
    except VerifierTimeout:  # also when the alarm lands just after fn returned: the limit was reached
        return Outcome(0.0, False, TIMEOUT, f"no result within {timeout_s:g}s")
    except Exception as exc:
        return Outcome(0.0, False, ERROR, f"{type(exc).__name__}: {exc}")
    finally:
        signal.signal(signal.SIGALRM, previous)


class _Child:
    """One verifier subprocess and its end of a socket pair."""

    def __init__(self, config: Any):
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE, str(fd)], pass_fds=(fd,), stdin=subprocess.DEVNULL
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.conn)
        self.conn.send((list(sys.path), config))  # the child imports custom verifiers like the parent

    def wait_ready(self, timeout_s: float) -> None:
        try:
            message = self.conn.recv() if self.conn.poll(timeout_s) else None
        except (EOFError, OSError):
            message = f"it exited with code {self.proc.wait()}"
        if message != READY:
            self.close()
            reason = message or f"no answer within {timeout_s:g}s"
            raise RuntimeError(f"the verifier process failed to start: {reason}")

    def close(self) -> None:
        self._finalizer()


def _stop(proc: subprocess.Popen, conn: Connection) -> None:
    """Ask the child to exit, kill it if it does not (a hung one never reads the request)."""
    try:
        conn.send(None)
    except (OSError, ValueError):
        pass
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    conn.close()


class VerifierPool:
    """Persistent verifier subprocesses; a child that hangs or dies is killed and replaced.

    Tasks go out in chunks, a child streams one result per task, and each result must arrive within
    `timeout_s + grace_s` of the previous one (the child cuts Python-level overruns itself at `timeout_s`
    with SIGALRM; the grace is for the rest, which only killing stops).
    """

    def __init__(
        self, config: Any, num_processes: int = 1, grace_s: float = 1.0, start_timeout_s: float = 120.0
    ):
        self.config = config
        self.limit_s = config.timeout_s + grace_s
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self._children = [_Child(config) for _ in range(num_processes)]
        for child in self._children:  # they start side by side
            child.wait_ready(start_timeout_s)

    def score(self, tasks: Sequence[Task]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(tasks)
        todo = deque(range(len(tasks)))
        # Chunks small enough to spread the work, large enough that messages are few.
        chunk = max(1, min(64, math.ceil(len(tasks) / (4 * len(self._children)))))
        running: dict[int, deque[int]] = {}  # child index -> task indices sent, in order
        deadline: dict[int, float] = {}
        while todo or running:
            for c in range(len(self._children)):
                if c not in running and todo:
                    sent = deque(todo.popleft() for _ in range(min(chunk, len(todo))))
                    self._send(c, [tasks[i] for i in sent])
                    running[c], deadline[c] = sent, time.monotonic() + self.limit_s
            timeout = max(0.0, min(deadline[c] for c in running) - time.monotonic())
            ready = set(wait([self._children[c].conn for c in running], timeout))
            for c in list(running):
                conn = self._children[c].conn
                if conn in ready:
                    try:
                        outcomes[running[c].popleft()] = conn.recv()
                        deadline[c] = time.monotonic() + self.limit_s
                    except (EOFError, OSError):
                        self._replace(c, running, todo, outcomes, ERROR, "the verifier process died")
                        continue
                elif time.monotonic() >= deadline[c]:
                    self._replace(
                        c, running, todo, outcomes, TIMEOUT, f"no result within {self.limit_s:g}s; killed"
                    )
                    continue
                if not running[c]:
                    del running[c]
        return outcomes  # type: ignore[return-value]  (every slot is filled when the loop ends)

    def _send(self, c: int, tasks: list[Task]) -> None:
        """Give child `c` a chunk; a child that died while idle (it held no task) is replaced first."""
        child = self._children[c]
        if child.proc.poll() is None:
            try:
                child.conn.send(tasks)
                return
            except OSError:  # BrokenPipeError / ConnectionResetError: it died since the poll
                pass
        self._restart(c, f"the verifier process died while idle (exit code {child.proc.poll()})")
        self._children[c].conn.send(tasks)

    def _replace(
        self,
        c: int,
        running: dict[int, deque[int]],
        todo: deque[int],
        outcomes: list[Outcome | None],
        status: str,
        detail: str,
    ) -> None:
        """Charge the child's current task, requeue the rest of its chunk first, start a fresh child."""
        sent = running.pop(c)
        outcomes[sent.popleft()] = Outcome(0.0, False, status, detail)
        todo.extendleft(reversed(sent))
        self._restart(c, detail)

    def _restart(self, c: int, detail: str) -> None:
        self._children[c].proc.kill()
        self._children[c].close()
        self.restarts += 1
        logger.warning("verifier process %d: %s; restarting it (restart %d)", c, detail, self.restarts)
        self._children[c] = _Child(self.config)
        self._children[c].wait_ready(self.start_timeout_s)

    def close(self) -> None:
        for child in self._children:
            child.close()
