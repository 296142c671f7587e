"""Fixed-count against token-budget micro-batches on the real 2-rank FSDP2 actor (gloo, float32 on CPU), on
rollouts whose response lengths have a long tail (log-normal, up to 8x the median).

- fixed count (the path before token budgets): micro-batches of a fixed number of rows, sized for the worst
  case (the most rows whose micro-batch fits the token budget even when it holds the longest prompt and the
  longest response), a gradient reduce-scatter after each.
- token budget (the default): rows of similar length together up to the same budget, one reduce-scatter per
  mini-batch.
- token budget, reduce every micro-batch: separates the two changes.

All run the same batch in the same processes, alternating their order per repeat. Reported: update tokens/s
(real prompt + response tokens over the wall time of the slower rank), the tokens the forwards compute
(padding included), and each rank's peak resident memory during an update (a separate job whose glibc returns
freed memory at once, as in sfpo_overhead).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfpo_rl.algorithms.micro_batches import (
    fixed_micro_batches,
    micro_batch_cost,
    plan_micro_batches,
    row_lengths,
)
from sfpo_rl.bench.common import bench_main, median, row
from sfpo_rl.bench.memory import MIB, peak_rss_above_start
from sfpo_rl.bench.ranks import EAGER_FREE_MALLOC_ENV, run_ranks, slower_rank
from sfpo_rl.bench.rollout_batches import long_tailed_rollouts
from sfpo_rl.bench.workload import actor_config, check_rows, scratch_model, sectioned, timed
from sfpo_rl.protocol import Batch

NAME = "token_budget"
WORLD = 2
VARIANTS = ("fixed count", "token budget, reduce every micro-batch", "token budget")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument(
        "--rows", type=int, default=None, help="rollouts per update; default 48 quick, 96 full"
    )
    parser.add_argument(
        "--median-response", type=int, default=None, help="median response tokens; 32 quick, 64 full"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="token budget per micro-batch; default twice the widest row (fixed count: 2 rows)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds; default 3 quick, 5 full")


def variant_configs(rows: int, budget: int, fixed_rows: int) -> dict[str, dict[str, Any]]:
    base = {**actor_config(rows), "micro_batch_size_per_gpu": None, "max_tokens_per_micro_batch": budget}
    return {
        "fixed count": {**base, "micro_batch_size_per_gpu": fixed_rows, "sync_grads_every_micro_batch": True},
        "token budget, reduce every micro-batch": {**base, "sync_grads_every_micro_batch": True},
        "token budget": base,
    }


def computed_tokens(batch: Batch, config: dict[str, Any]) -> tuple[int, int]:
    """Tokens the padded forwards of one update compute and the number of micro-batches, over both ranks (the
    actor's plan: fixed rows, or the token budget with as many micro-batches on every rank)."""
    local_mini = config["ppo_mini_batch_size"] // WORLD
    ranks = batch.split(WORLD)
    tokens = count = 0
    for first in range(0, len(ranks[0]), local_mini):
        minis = [r[first : first + local_mini] for r in ranks]
        lengths = [row_lengths(m["attention_mask"], m["responses"].shape[1]) for m in minis]
        if config["micro_batch_size_per_gpu"]:
            plans = [fixed_micro_batches(local_mini, config["micro_batch_size_per_gpu"]) for _ in minis]
        else:
            budget = config["max_tokens_per_micro_batch"]
            plans = [plan_micro_batches(*lens, budget, packed=False) for lens in lengths]
            most = max(len(p) for p in plans)
            plans = [plan_micro_batches(*lens, budget, packed=False, min_count=most) for lens in lengths]
        for lens, plan in zip(lengths, plans):
            tokens += sum(micro_batch_cost(*lens, group, packed=False) for group in plan)
            count += len(plan)
    return tokens, count


def _actors(rank: int, model_dir: str, batch: Batch, configs: dict[str, dict]) -> tuple[dict, Batch]:
    from sfpo_rl.workers.actor import FSDPActor

    actors = {name: FSDPActor(model_dir, sectioned(config)) for name, config in configs.items()}
    local = batch.split(WORLD)[rank]
    local["old_log_probs"] = actors[VARIANTS[0]].compute_log_prob(local)["old_log_probs"]
    for actor in actors.values():
        actor.update(local)  # warm-up: Adam state exists, code paths are paged in
    return actors, local


def _time_job(rank: int, model_dir: str, batch: Batch, configs: dict, repeats: int) -> dict:
    actors, local = _actors(rank, model_dir, batch, configs)
    times: dict[str, list[float]] = {name: [] for name in actors}
    for i in range(repeats):
        for name in VARIANTS[i % len(VARIANTS) :] + VARIANTS[: i % len(VARIANTS)]:
            times[name].append(timed(lambda: actors[name].update(local))[0])  # noqa: B023
    return times


def _memory_job(rank: int, model_dir: str, batch: Batch, configs: dict) -> dict:
    actors, local = _actors(rank, model_dir, batch, configs)
    return {
        name: min(peak_rss_above_start(lambda: actor.update(local)) for _ in range(2))  # noqa: B023
        for name, actor in actors.items()
    }


@dataclass
class Workload:
    model_dir: str
    rows: int
    median_response: int
    batch: Batch
    budget: int  # tokens per micro-batch
    fixed_rows: int  # rows per micro-batch of the fixed-count variant
    configs: dict[str, dict[str, Any]]


def setup(args: argparse.Namespace, model_dir: Path) -> Workload:
    """The long-tailed batch for this model and each variant's actor config."""
    from transformers import AutoConfig

    rows = args.rows or (48 if args.quick else 96)
    check_rows(rows, WORLD)
    median_response = args.median_response or (32 if args.quick else 64)
    prompt_range = (8, 24) if args.quick else (16, 48)
    hf = AutoConfig.from_pretrained(model_dir)
    batch = long_tailed_rollouts(hf.vocab_size, hf.pad_token_id, rows, prompt_range, median_response)
    widest = batch["input_ids"].shape[1]  # the longest prompt + the longest response
    budget = args.max_tokens or 2 * widest
    fixed_rows = max(1, budget // widest)
    configs = variant_configs(rows, budget, fixed_rows)
    return Workload(str(model_dir), rows, median_response, batch, budget, fixed_rows, configs)


def per_variant(w: Workload, timing: list[dict], memory: list[dict]) -> dict[str, dict[str, Any]]:
    real = int(w.batch["attention_mask"].sum())
    by_name = {}
    for name in VARIANTS:
        wall = slower_rank([r[name] for r in timing])
        computed, micro_batches = computed_tokens(w.batch, w.configs[name])
        by_name[name] = {
            "wall_s": wall,
            "tokens_per_s": real / median(wall),
            "computed_tokens": computed,
            "micro_batches": micro_batches,
            "peak_bytes_per_rank": [m[name] for m in memory],
        }
    return by_name


def summary_rows(w: Workload, by_name: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    real = int(w.batch["attention_mask"].sum())
    response_lens = sorted(w.batch["response_mask"].sum(-1).tolist())
    fixed, tokens = by_name["fixed count"], by_name["token budget"]
    reduce_each = by_name["token budget, reduce every micro-batch"]
    # Per-round ratios: the variants ran in the same round, so load on the machine hits them alike.
    ratios = [f / t for f, t in zip(fixed["wall_s"], tokens["wall_s"])]
    no_sync_ratios = [r / t for r, t in zip(reduce_each["wall_s"], tokens["wall_s"])]
    repeats = len(ratios)
    workload = (
        f"{w.rows} rollouts, {real} tokens; responses median {response_lens[len(response_lens) // 2]}, "
        f"max {response_lens[-1]}; budget {w.budget} tokens = {w.fixed_rows} rows of the widest"
    )
    return [
        row(
            "token budget / fixed count, update tokens/s",
            median(ratios),
            "x",
            f"median of {repeats} rounds spanning {min(ratios):.2f}-{max(ratios):.2f}; {workload}",
        ),
        row(
            "one reduce-scatter per mini-batch / one per micro-batch, update tokens/s",
            median(no_sync_ratios),
            "x",
            f"token budget both; {repeats} rounds spanning {min(no_sync_ratios):.2f}-{max(no_sync_ratios):.2f}",
        ),
        row("update tokens/s, token budget", tokens["tokens_per_s"], "tokens/s", "the default"),
        row("update tokens/s, fixed count", fixed["tokens_per_s"], "tokens/s", f"{w.fixed_rows} rows"),
        row(
            "forward tokens computed / real tokens",
            tokens["computed_tokens"] / real,
            "x",
            f"token budget; fixed count {fixed['computed_tokens'] / real:.2f}x",
        ),
        row(
            "peak memory per rank, token budget / fixed count",
            max(tokens["peak_bytes_per_rank"]) / max(fixed["peak_bytes_per_rank"]),
            "x",
            "resident memory above the update's start, larger rank",
        ),
    ]


def report(args: argparse.Namespace, w: Workload, timing: list[dict], memory: list[dict]) -> dict[str, Any]:
    real = int(w.batch["attention_mask"].sum())
    by_name = per_variant(w, timing, memory)
    table = [
        [
            name,
            v["micro_batches"],
            v["computed_tokens"] / real,
            v["tokens_per_s"],
            max(v["peak_bytes_per_rank"]) / MIB,
        ]
        for name, v in by_name.items()
    ]
    return {
        "rows": summary_rows(w, by_name),
        "tables": {
            "one update per variant": (
                ["variant", "micro-batches", "computed / real tokens", "tokens/s", "peak MiB / rank"],
                table,
            )
        },
        "notes": [
            "Memory: peak RSS (VmHWM reset via /proc/self/clear_refs) above the RSS at the update's start, in a "
            "job whose glibc returns freed memory at once; minimum of 2 updates each after a warm-up. One "
            "reduce-scatter per mini-batch keeps each rank's gradients unsharded between micro-batches.",
            "Padded forwards (no flash-attention on CPU); computed tokens count what the forwards run after the "
            "actor cuts columns that are padding in every row.",
        ],
        "config": {
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "rows": w.rows,
            "median_response": w.median_response,
            "max_tokens_per_micro_batch": w.budget,
            "fixed_rows": w.fixed_rows,
            "actors": w.configs,
        },
        "variants": by_name,
        "response_lengths": sorted(w.batch["response_mask"].sum(-1).tolist()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    repeats = args.repeats or (3 if args.quick else 5)
    with scratch_model(args.hidden_size, args.num_layers) as model_dir:
        w = setup(args, model_dir)
        timing = run_ranks(_time_job, w.model_dir, w.batch, w.configs, repeats, world_size=WORLD)
        memory = run_ranks(
            _memory_job, w.model_dir, w.batch, w.configs, world_size=WORLD, env=EAGER_FREE_MALLOC_ENV
        )
    return report(args, w, timing, memory)


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
