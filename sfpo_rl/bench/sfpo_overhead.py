"""SFPO's cost over plain updates, on the real 2-rank FSDP2 actor (gloo, float32 on CPU).

Time: one `sfpo_update` (K fast passes, reposition, slow pass) against K + 1 `update` calls on the same batch,
in the same processes, alternating which goes first in each repeat. SFPO's extra work over K + 1 updates is
one copy of the local shard, one in-place lerp and two norm all-reduces, so the target is a ratio <= 1.03.

Memory: peak resident memory of each rank during `sfpo_update` and during `update`, above the resident
memory when the call starts (the kernel's VmHWM, see `sfpo_rl.bench.memory`). A separate job runs with glibc
set to return every freed block to the kernel at once, so the peak follows live tensors (with pooled malloc,
memory freed by one phase is reused unseen by the next). The target: sfpo_update
peaks at most one local shard above update (the slow copy); a second copy (fast weights, a full-parameter
clone) would add at least another shard.
"""

from __future__ import annotations

import argparse
from typing import Any

from sfpo_rl.algorithms.sfpo import displacement_norm, reposition_, snapshot_
from sfpo_rl.bench.common import bench_main, median, row
from sfpo_rl.bench.memory import MIB, peak_rss_above_start
from sfpo_rl.bench.ranks import EAGER_FREE_MALLOC_ENV, run_ranks, slower_rank
from sfpo_rl.bench.workload import (
    actor_config,
    check_rows,
    prepared_actor,
    scratch_model,
    synthetic_rollouts,
    timed,
)
from sfpo_rl.workers.fsdp_utils import all_reduce_sum, local_shards

NAME = "sfpo_overhead"
WORLD = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inner-steps", type=int, default=3, help="SFPO's K")
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--hidden-size", type=int, default=256, help="256 x 4 layers: a 6 MiB local shard")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument(
        "--rows", type=int, default=None, help="rollouts per update; default 16 quick, 64 full"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs; default 3 quick, 5 full")


def _time_job(rank: int, model_dir: str, batch, config: dict, k: int, alpha: float, repeats: int) -> dict:
    actor, local = prepared_actor(rank, WORLD, model_dir, batch, config)

    def sfpo():
        actor.sfpo_update(local, k, alpha)

    def plain():
        for _ in range(k + 1):
            actor.update(local)

    sfpo()  # warm-up: Adam state exists, code paths are paged in
    plain()
    times: dict[str, list[tuple[float, float]]] = {"sfpo": [], "plain": []}
    for i in range(repeats):
        order = ("sfpo", "plain") if i % 2 == 0 else ("plain", "sfpo")
        for name in order:
            times[name].append(timed(sfpo if name == "sfpo" else plain))
    times["sfpo_only_ops"] = [timed(lambda: _sfpo_only_ops(actor, alpha)) for _ in range(5)]
    return times


def _sfpo_only_ops(actor, alpha: float) -> None:
    """What sfpo_update does besides its K + 1 ordinary passes: snapshot the local shard, two global
    displacement norms, the in-place reposition."""
    shards = local_shards(actor.params)
    slow = snapshot_(shards)
    all_reduce_sum(displacement_norm(shards, slow).reshape(1) ** 2)
    reposition_(shards, slow, alpha)
    all_reduce_sum(displacement_norm(shards, slow).reshape(1) ** 2)


def _memory_job(rank: int, model_dir: str, batch, config: dict, k: int, alpha: float) -> dict:
    actor, local = prepared_actor(rank, WORLD, model_dir, batch, config)
    actor.update(local)
    actor.sfpo_update(local, k, alpha)
    update_peaks, sfpo_peaks = [], []
    for _ in range(2):  # the minimum of two damps page-level noise
        update_peaks.append(peak_rss_above_start(lambda: actor.update(local)))
        sfpo_peaks.append(peak_rss_above_start(lambda: actor.sfpo_update(local, k, alpha)))
    params = actor.params
    return {
        "shard_bytes": sum(p.to_local().numel() * p.to_local().element_size() for p in params),
        "full_bytes": sum(p.numel() * p.element_size() for p in params),
        "update_peak_bytes": min(update_peaks),
        "sfpo_peak_bytes": min(sfpo_peaks),
    }


def measure(args: argparse.Namespace, rows: int, repeats: int, widths: tuple[int, int]) -> tuple[list, list]:
    """Per rank: the timed repeats, and (in a job whose glibc frees at once) the peak memory."""
    from transformers import AutoConfig

    k, alpha, config = args.inner_steps, args.alpha, actor_config(rows)
    with scratch_model(args.hidden_size, args.num_layers) as model_dir:
        hf = AutoConfig.from_pretrained(model_dir)
        batch = synthetic_rollouts(hf.vocab_size, hf.pad_token_id, rows, *widths)
        timing = run_ranks(_time_job, str(model_dir), batch, config, k, alpha, repeats, world_size=WORLD)
        memory = run_ranks(
            _memory_job, str(model_dir), batch, config, k, alpha, world_size=WORLD, env=EAGER_FREE_MALLOC_ENV
        )
    return timing, memory


def time_figures(timing: list[dict]) -> dict[str, Any]:
    """Per repeat: wall time of the slower rank (collectives keep the ranks together), CPU time of both ranks;
    and the SFPO-only operations' best wall time."""

    def walls(name: str) -> list[float]:
        return slower_rank([[wall for wall, _ in r[name]] for r in timing])

    def cpus(name: str) -> list[float]:
        return [sum(per_rank) for per_rank in zip(*[[cpu for _, cpu in r[name]] for r in timing])]

    return {
        "sfpo_wall_s": walls("sfpo"),
        "plain_wall_s": walls("plain"),
        "sfpo_cpu_s": cpus("sfpo"),
        "plain_cpu_s": cpus("plain"),
        "sfpo_only_ops_wall_s": min(walls("sfpo_only_ops")),
    }


def memory_table(memory: list[dict]) -> tuple[list[list[float]], list[float]]:
    """Per rank its shard, model and peaks (MiB), and the extra peak of sfpo_update in local shards."""
    mem_table, extra_shards = [], []
    for rank, m in enumerate(memory):
        extra = m["sfpo_peak_bytes"] - m["update_peak_bytes"]
        extra_shards.append(extra / m["shard_bytes"])
        mem_table.append(
            [
                rank,
                m["shard_bytes"] / MIB,
                m["full_bytes"] / MIB,
                m["update_peak_bytes"] / MIB,
                m["sfpo_peak_bytes"] / MIB,
                extra / MIB,
                extra / m["shard_bytes"],
            ]
        )
    return mem_table, extra_shards


def summary_rows(args: argparse.Namespace, rows: int, t: dict[str, Any], memory: list[dict]) -> list[dict]:
    k, repeats = args.inner_steps, len(t["sfpo_wall_s"])
    wall_ratios = [s / p for s, p in zip(t["sfpo_wall_s"], t["plain_wall_s"])]
    cpu_ratios = [s / p for s, p in zip(t["sfpo_cpu_s"], t["plain_cpu_s"])]
    ops_wall = t["sfpo_only_ops_wall_s"]
    _, extra_shards = memory_table(memory)
    worst_rank = max(range(len(memory)), key=lambda r: extra_shards[r])
    worst, w = extra_shards[worst_rank], memory[worst_rank]

    def spread(ratios: list[float]) -> str:
        return f"target <= 1.03; median of {repeats} repeats spanning {min(ratios):.3f}-{max(ratios):.3f}"

    return [
        row(f"sfpo_update(K={k}) / {k + 1} x update, wall", median(wall_ratios), "x", spread(wall_ratios)),
        row(f"sfpo_update(K={k}) / {k + 1} x update, CPU", median(cpu_ratios), "x", spread(cpu_ratios)),
        row(
            f"SFPO-only ops / {k + 1} x update",
            ops_wall / min(t["plain_wall_s"]),
            "fraction",
            f"snapshot + reposition + 2 norms, timed alone ({ops_wall * 1e3:.1f} ms): the overhead free of "
            "pass-to-pass noise",
        ),
        row(
            "sfpo_update wall time",
            median(t["sfpo_wall_s"]),
            "s",
            f"{rows} rollouts, hidden {args.hidden_size}, {args.num_layers} layers",
        ),
        row(
            "sfpo_update peak - update peak, memory",
            worst,
            "local shards",
            f"target <= 1 shard (+ page noise): {'met' if worst <= 1.15 else 'NOT met'}; rank {worst_rank}: "
            f"update {w['update_peak_bytes'] / MIB:.1f} MiB, sfpo_update {w['sfpo_peak_bytes'] / MIB:.1f} MiB, "
            f"shard {w['shard_bytes'] / MIB:.2f} MiB",
        ),
    ]


def report(
    args: argparse.Namespace, rows: int, widths: tuple[int, int], timing: list[dict], memory: list[dict]
) -> dict[str, Any]:
    k, t = args.inner_steps, time_figures(timing)
    time_table = [
        [i, sw, pw, sw / pw, sc, pc, sc / pc]
        for i, (sw, pw, sc, pc) in enumerate(
            zip(t["sfpo_wall_s"], t["plain_wall_s"], t["sfpo_cpu_s"], t["plain_cpu_s"])
        )
    ]
    update = f"{k + 1}x update"
    return {
        "rows": summary_rows(args, rows, t, memory),
        "tables": {
            "time per repeat (s; wall: slower rank, CPU: both ranks)": (
                ["repeat", "sfpo wall", f"{update} wall", "ratio", "sfpo CPU", f"{update} CPU", "ratio"],
                time_table,
            ),
            "peak memory per rank (MiB above the resident set at the call's start)": (
                ["rank", "local shard", "full model", "update peak", "sfpo peak", "extra", "extra / shard"],
                memory_table(memory)[0],
            ),
        },
        "notes": [
            "Memory: peak RSS (VmHWM reset via /proc/self/clear_refs) above the RSS at the call's start, in a "
            "job whose glibc returns freed memory at once; minimum of 2 calls each after a warm-up.",
            "Time: the two variants alternate which runs first; ratios are medians of per-repeat ratios. CPU "
            "time (process_time of both ranks) is less disturbed by other jobs on a shared machine than wall.",
        ],
        "config": {
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "rows": rows,
            "prompt_width": widths[0],
            "response_width": widths[1],
            "K": k,
            "alpha": args.alpha,
            "actor": actor_config(rows),
        },
        "timing": t,
        "memory": memory,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = args.rows or (16 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 5)
    widths = (16, 48) if args.quick else (32, 96)  # prompt, response
    check_rows(rows, WORLD)
    timing, memory = measure(args, rows, repeats, widths)
    return report(args, rows, widths, timing, memory)


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
