"""Entry point of one `VerifierPool` child: `python -m sfpo_rl.rewards.verifier_process <socket fd>`.

Receives (sys.path, RewardConfig), builds the verifiers, answers "ready" (or the error text), then scores
task lists one result at a time, each under SIGALRM on this process's main thread, until it gets None.
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection


def serve(conn: Connection) -> None:
    path, config = conn.recv()
    sys.path[:] = path
    from sfpo_rl.rewards.scoring import VerifierResolver
    from sfpo_rl.rewards.verifier_pool import READY, score_with_timeout

    try:
        resolve = VerifierResolver(config)
    except Exception as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    conn.send(READY)
    while (tasks := conn.recv()) is not None:
        for task in tasks:
            fn, options = resolve(task.data_source)
            conn.send(
                score_with_timeout(
                    fn,
                    task.solution_str,
                    task.ground_truth,
                    task.extra_info,
                    timeout_s=config.timeout_s,
                    options=options,
                )
            )


if __name__ == "__main__":
    try:
        serve(Connection(int(sys.argv[1])))
    except (EOFError, KeyboardInterrupt):  # the parent went away
        pass
