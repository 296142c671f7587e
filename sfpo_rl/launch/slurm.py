"""Helpers for docker/slurm/sfpo_rl.sbatch, kept in Python so they are tested.

`python -m sfpo_rl.launch.slurm hosts 'gpu[01-03,07]'` prints one host per line (the script prefers
`scontrol show hostnames` and falls back to this). `python -m sfpo_rl.launch.slurm wait --address H:P
--nodes N` blocks until N Ray nodes are alive (exit 0), or fails after --timeout seconds (exit 1) naming how
many joined.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from collections.abc import Callable

from sfpo_rl.utils.console import marked

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class NodeListError(ValueError):
    """A Slurm node list expression is malformed; the message quotes it."""


def expand_nodelist(expression: str) -> list[str]:
    """Expand a Slurm hostlist, e.g. `gpu[01-03,07],cpu1` -> gpu01 gpu02 gpu03 gpu07 cpu1.

    Ranges keep the zero padding of their lower bound; several bracket groups in one name expand to their
    product in order (`r[1-2]n[1-2]` -> r1n1 r1n2 r2n1 r2n2). Duplicates are kept, order is preserved.
    """
    hosts: list[str] = []
    for entry in _split_top_level(expression):
        hosts.extend(_expand_entry(entry, expression))
    if not hosts:
        raise NodeListError(f"node list {expression!r} names no hosts")
    return hosts


def _split_top_level(expression: str) -> list[str]:
    """Split at commas outside brackets."""
    entries, depth, current = [], 0, ""
    for char in expression.strip():
        if char == "[":
            depth += 1
            if depth > 1:
                raise NodeListError(f"node list {expression!r}: nested '['")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise NodeListError(f"node list {expression!r}: ']' without '['")
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise NodeListError(f"node list {expression!r}: '[' without ']'")
    entries.append(current)
    for entry in entries:
        if not entry.strip():
            raise NodeListError(f"node list {expression!r}: empty entry")
    return [entry.strip() for entry in entries]


def _expand_entry(entry: str, expression: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", entry)
    if match is None:
        return [entry]
    prefix, suffix = entry[: match.start()], entry[match.end() :]
    return [
        f"{prefix}{number}{rest}"
        for number in _expand_ranges(match.group(1), expression)
        for rest in _expand_entry(suffix, expression)
    ]


def _expand_ranges(body: str, expression: str) -> list[str]:
    numbers: list[str] = []
    for part in body.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise NodeListError(f"node list {expression!r}: bad range {part!r} (expected N or N-M)")
        low, high = match.group(1), match.group(2)
        if high is None:
            numbers.append(low)
            continue
        if int(high) < int(low):
            raise NodeListError(f"node list {expression!r}: range {part!r} runs backwards")
        numbers.extend(str(i).zfill(len(low)) for i in range(int(low), int(high) + 1))
    return numbers


def wait_for_nodes(
    count_alive: Callable[[], int],
    expected: int,
    timeout_s: float,
    poll_s: float = 2.0,
    log: Callable[[str], None] = print,
) -> int:
    """Poll `count_alive()` until it reaches `expected`; returns the count, or raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        alive = count_alive()
        if alive != last:
            log(marked(f"{alive}/{expected} Ray nodes alive"))
            last = alive
        if alive >= expected:
            return alive
        if time.monotonic() >= deadline:
            raise TimeoutError(f"only {alive} of {expected} Ray nodes joined within {timeout_s:.0f} s")
        time.sleep(poll_s)


def _ray_alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def _port_open(address: str, deadline: float) -> bool:
    host, _, port = address.rpartition(":")
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfpo_rl.launch.slurm")
    sub = parser.add_subparsers(dest="command", required=True)
    hosts = sub.add_parser("hosts", help="expand a Slurm node list, one host per line")
    hosts.add_argument("nodelist")
    wait = sub.add_parser("wait", help="wait until a Ray cluster has N alive nodes")
    wait.add_argument("--address", required=True, help="the head's GCS address, host:port")
    wait.add_argument("--nodes", type=int, required=True)
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    args = parser.parse_args(argv)

    if args.command == "hosts":
        try:
            print("\n".join(expand_nodelist(args.nodelist)))
        except NodeListError as exc:
            print(f"sfpo_rl.launch.slurm: {exc}", file=sys.stderr)
            return 2
        return 0

    import ray

    deadline = time.monotonic() + args.timeout
    # ray.init keeps retrying an address nobody listens on for minutes: first wait for the head's port.
    if not _port_open(args.address, deadline):
        print(
            f"sfpo_rl.launch.slurm: nothing listens at {args.address} after {args.timeout:.0f} s "
            "(did the Ray head start? see its log)",
            file=sys.stderr,
        )
        return 1
    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    try:
        wait_for_nodes(_ray_alive_nodes, args.nodes, max(0.0, deadline - time.monotonic()))
    except TimeoutError as exc:
        print(f"sfpo_rl.launch.slurm: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
