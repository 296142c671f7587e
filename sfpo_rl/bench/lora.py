"""LoRA against full fine-tuning on a random ~100M-parameter Qwen2, the same batch and the same SFPO step: what the
adapter shrinks, measured in one run.

- Actor (2 FSDP2 ranks over gloo, no Ray): each rank's peak resident memory during an SFPO step (K=3), its
  optimizer-state bytes, SFPO's slow-copy bytes (this rank's), and the seconds of one SFPO step (median of the
  repeats); both arms on the same two processes, one after the other.
- Weight sync (split placement through the trainer's worker groups: 2 actor ranks on Ray, one vLLM engine):
  bytes shipped per sync and its seconds: full fine-tuning streams every weight in buckets, LoRA sends the
  adapter alone, which the engine serves as a LoRA adapter.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

from sfpo_rl.bench.common import bench_main, median, row
from sfpo_rl.bench.groups import split_groups, start_ray
from sfpo_rl.bench.memory import MIB, reset_peak, status_bytes
from sfpo_rl.bench.ranks import EAGER_FREE_MALLOC_ENV, run_ranks
from sfpo_rl.bench.workload import (
    actor_config,
    parse_size,
    prepared_actor,
    sized_model,
    synthetic_rollouts,
)

NAME = "lora"
WORLD = 2
ARMS = ("full", "lora")
# What each arm reports, with its label and unit.
LABELS = {
    "trainable_params": ("trainable parameters", ""),
    "peak_rss_mb": ("actor peak memory per rank (RSS during an SFPO step)", "MB"),
    "optimizer_mb": ("optimizer state per rank", "MB"),
    "slow_copy_mb": ("SFPO slow copy per rank", "MB"),
    "sync_mb": ("shipped per sync", "MB"),
    "sync_s": ("sync seconds (split placement)", "s"),
    "step_s": ("update seconds (one SFPO step, K={k})", "s"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="1024x8", help="WIDTHxLAYERS (default 1024x8: 101M parameters)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16; alpha = 2 x rank)")
    parser.add_argument("--rows", type=int, default=16, help="rollouts per update (default 16)")
    parser.add_argument("--inner-steps", type=int, default=3, help="SFPO K (default 3)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps and syncs per arm; 2 quick, 3 full"
    )


def _actor_job(rank: int, model_dir: str, batch, configs: dict, k: int, repeats: int) -> dict[str, Any]:
    """Both arms on the same ranks, one after the other (the first freed before the second is built), SFPO
    steps timed and their peak memory read."""
    import torch
    import torch.distributed as dist

    out: dict[str, Any] = {}
    for arm, config in configs.items():
        actor, local = prepared_actor(rank, WORLD, model_dir, batch, config)
        actor.sfpo_update(local, k, 0.8)  # warm-up: Adam state exists, code paths are paged in
        seconds, peaks, slow = [], [], 0.0
        for _ in range(repeats):
            gc.collect()
            reset_peak()
            dist.barrier()
            start = time.perf_counter()
            result = actor.sfpo_update(local, k, 0.8)
            dist.barrier()
            seconds.append(time.perf_counter() - start)
            peaks.append(status_bytes("VmHWM"))
            slow = result.metrics["sfpo/slow_copy_bytes"]
        optimizer = sum(
            (v.to_local() if hasattr(v, "to_local") else v).nbytes
            for state in actor.optimizer.state.values()
            for v in state.values()
            if torch.is_tensor(v)
        )
        out[arm] = {
            "step_s": seconds,
            "peak_rss_bytes": min(peaks),
            "optimizer_bytes": optimizer,
            "slow_copy_bytes": slow,
            "trainable_params": sum(p.numel() for p in actor.params),
        }
        del actor, local
        gc.collect()
    return out


def _sync(model_dir: Path, lora: dict | None, bucket_mb: float, repeats: int) -> list[dict[str, float]]:
    """Syncs on split worker groups (one warm-up first): each one's seconds and the engine's load stats."""
    groups = split_groups(model_dir, bucket_mb, name=f"bench-{'lora' if lora else 'full'}", lora=lora)
    try:
        if lora:
            [reason] = groups.rollout.lora_fallback()
            if reason:
                raise RuntimeError(f"the engine cannot serve the adapter: {reason}")
        groups.sync_weights()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            stats = groups.sync_weights()
            runs.append({"s": time.perf_counter() - start, **stats})
        return runs
    finally:
        groups.shutdown()


def measure(args: argparse.Namespace, model_dir: Path, repeats: int, lora: dict) -> tuple[list, dict]:
    """Both arms' actor figures on each rank, then both arms' syncs."""
    from transformers import AutoConfig

    base = actor_config(args.rows)
    configs = {"full": base, "lora": {**base, "lora": lora}}
    hf = AutoConfig.from_pretrained(model_dir)
    batch = synthetic_rollouts(hf.vocab_size, hf.pad_token_id, args.rows, 16, 48)
    ranks = run_ranks(
        _actor_job,
        str(model_dir),
        batch,
        configs,
        args.inner_steps,
        repeats,
        world_size=WORLD,
        env=EAGER_FREE_MALLOC_ENV,
    )
    start_ray()
    syncs = {arm: _sync(model_dir, lora if arm == "lora" else None, 64.0, repeats) for arm in ARMS}
    return ranks, syncs


def per_arm(ranks: list[dict], syncs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each arm's figures: the larger rank's memory, the median step and sync."""
    measured: dict[str, dict[str, float]] = {}
    for arm in ARMS:
        per_rank = [r[arm] for r in ranks]
        measured[arm] = {
            "trainable_params": per_rank[0]["trainable_params"],
            "peak_rss_mb": max(r["peak_rss_bytes"] for r in per_rank) / MIB,
            "optimizer_mb": max(r["optimizer_bytes"] for r in per_rank) / MIB,
            "slow_copy_mb": per_rank[0]["slow_copy_bytes"] / MIB,
            "sync_mb": median([s["sync/load_weights_mb"] for s in syncs[arm]]),
            "sync_s": median([s["s"] for s in syncs[arm]]),
            "step_s": median([s for r in per_rank for s in r["step_s"]]),
        }
    return measured


def report(
    args: argparse.Namespace, layout: dict[str, float], ranks: list[dict], syncs: dict
) -> dict[str, Any]:
    width, layers = parse_size(args.size)
    measured = per_arm(ranks, syncs)
    full, lora = measured["full"], measured["lora"]
    labels = {key: (label.format(k=args.inner_steps), unit) for key, (label, unit) in LABELS.items()}
    table = [
        [label, unit, full[key], lora[key], lora[key] / full[key]] for key, (label, unit) in labels.items()
    ]
    summary = [
        row(
            f"LoRA r{args.rank} / full: {label}",
            lora[key] / full[key],
            "x",
            f"{lora[key]:.3g} vs {full[key]:.3g} {unit}".strip(),
        )
        for key, (label, unit) in labels.items()
        if key != "trainable_params"
    ]
    return {
        "rows": summary,
        "tables": {
            f"{layout['params'] / 1e6:.0f}M-parameter Qwen2, LoRA rank {args.rank} vs full fine-tuning": (
                ["what", "unit", "full", f"LoRA r{args.rank}", "LoRA / full"],
                table,
            )
        },
        "notes": [
            f"Model: a random Qwen2 {width}x{layers}, float32; {args.rows} synthetic rollouts (prompts 8-16, "
            "responses 24-48 tokens); the embedded default's objective; LoRA on the q, k, v, o, gate, up and "
            "down projections with alpha = 2 x rank.",
            "Peak memory: VmHWM over a timed SFPO step after a warm-up step (reset through /proc/self/clear_refs), "
            "the larger rank; the process also holds torch and the frozen base shard.",
        ],
        "model": layout,
        "measured": measured,
        "per_rank": ranks,
        "syncs": syncs,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    repeats = args.repeats or (2 if args.quick else 3)
    lora = {"rank": args.rank, "alpha": 2.0 * args.rank}
    with sized_model(args.size) as (model_dir, layout):
        print(
            f"[bench] lora: {layout['params'] / 1e6:.0f}M parameters, LoRA rank {args.rank}, {args.rows} rollouts, "
            f"SFPO K={args.inner_steps}, {repeats} repeats",
            flush=True,
        )
        ranks, syncs = measure(args, model_dir, repeats, lora)
    return report(args, layout, ranks, syncs)


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
