"""Weight sync, actor -> rollout engines, on a random-initialised Qwen2 of 100M+ parameters: time and peak memory
of every process for the three ways the weights can travel, through the trainer's own worker groups:

- colocated: each of the 2 actor ranks streams its shards into the vLLM engine in its own process, one bucket
  of whole layers at a time (`resources.placement=colocated`);
- split, streamed: actor rank 0 sends one bucket at a time through Ray's object store to an engine in a process
  of its own, which loads it before the next is gathered (`resources.placement=split`);
- split, full state dict (the path before the streamed sync): actor rank 0 gathers the whole float32 state dict
  and the engine reloads it from the object store in one piece.

Memory: each process's high-water mark RSS (VmHWM, reset through /proc/<pid>/clear_refs right before each
sync) minus its RSS before the sync: what the sync itself added at its peak, reported also in units of one
bucket plus the largest layer (what a streamed sync should stay near: the bucket in flight and the layer the
engine re-processes) and of the whole model. Repeats follow a warm-up sync; the paths on the split groups are
interleaved.

Share of a step: from trainer runs' metrics.jsonl (`timing/sync` / `timing/step`), by default those the
one_box and step_time benchmarks wrote under the same --out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfpo_rl.bench.common import bench_main, median, row
from sfpo_rl.bench.groups import colocated_groups, split_groups, start_ray
from sfpo_rl.bench.memory import PeakMemory
from sfpo_rl.bench.trainer_runs import step_share
from sfpo_rl.bench.workload import parse_size, sized_model

NAME = "weight_sync"
PATHS = ("colocated", "split, streamed", "split, full state dict")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", default="1024x8", help="model size WIDTHxLAYERS (default 1024x8: 101M parameters, 404 MB)"
    )
    parser.add_argument("--bucket-mb", type=float, default=64.0, help="rollout.sync_bucket_mb (default 64)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="syncs per path after a warm-up; 2 quick, 5 full"
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        nargs="*",
        default=None,
        help="trainer metrics.jsonl files for the share of a step; default <out>/{one_box,step_time}/*/metrics.jsonl",
    )


def timed_sync(sync: Callable[[], Any], pids: dict[str, int]) -> dict[str, Any]:
    with PeakMemory(pids) as memory:
        start = time.perf_counter()
        sync()
        seconds = time.perf_counter() - start
    return {"s": seconds, "memory": memory.result}


def process_labels(groups) -> dict[str, int]:
    """label -> pid of every process taking part, colocated roles under one label."""
    labels: dict[int, list[str]] = {}
    ranks: dict[int, int] = {}
    for group in (groups.actor, groups.rollout):
        for rank, info in enumerate(group.worker_info):
            labels.setdefault(info["pid"], []).append(group.role)
            ranks[info["pid"]] = rank
    return {f"{'+'.join(roles)} rank {ranks[pid]}": pid for pid, roles in labels.items()}


def measure(model_dir: Path, bucket_mb: float, repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Repeated syncs on each path (after one warm-up sync per setup)."""
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    groups = colocated_groups(model_dir, bucket_mb)
    try:
        pids = process_labels(groups)
        groups.sync_weights()  # warm-up
        runs["colocated"] = [timed_sync(groups.sync_weights, pids) for _ in range(repeats)]
    finally:
        groups.shutdown()

    groups = split_groups(model_dir, bucket_mb)

    def full_state_dict() -> None:
        weights = groups.actor.state_dict_for_rollout.future()
        groups.rollout.load_weights(weights.rank0_ref())
        weights.get()

    try:
        pids = process_labels(groups)
        groups.sync_weights()  # warm-up
        full_state_dict()
        for _ in range(repeats):
            runs["split, streamed"].append(timed_sync(groups.sync_weights, pids))
            runs["split, full state dict"].append(timed_sync(full_state_dict, pids))
    finally:
        groups.shutdown()
    return runs


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median seconds, and per process the repeat whose sync added the most memory (later repeats often add
    nothing: the allocator reuses what an earlier sync freed)."""
    labels = runs[0]["memory"]
    return {
        "s": median([r["s"] for r in runs]),
        "memory": {
            label: max((r["memory"][label] for r in runs), key=lambda m: m["extra_mb"]) for label in labels
        },
    }


def sync_tables(results: dict[str, Any], layout: dict[str, float], unit: float) -> tuple[list, list, list]:
    """Per path its speed and worst process; per path and process its memory; a summary row per path."""
    full_s = results["split, full state dict"]["s"]
    sync_rows, memory_rows, summary = [], [], []
    for path, result in results.items():
        worst = max(m["extra_mb"] for m in result["memory"].values())
        sync_rows.append([path, result["s"], layout["mb"] / result["s"], full_s / result["s"], worst])
        for label, m in result["memory"].items():
            extra = m["extra_mb"]
            memory_rows.append(
                [path, label, m["rss_mb"], m["peak_mb"], extra, extra / unit, extra / layout["mb"]]
            )
        summary.append(
            row(
                f"sync {path}",
                result["s"],
                "s",
                f"{layout['params'] / 1e6:.0f}M params: {full_s / result['s']:.2f}x the full-state-dict speed; "
                f"peak extra memory {worst:.0f} MB in the worst process = {worst / unit:.2f} x (bucket + layer) "
                f"= {worst / layout['mb']:.2f} x the model",
            )
        )
    return sync_rows, memory_rows, summary


def trainer_shares(args: argparse.Namespace) -> tuple[list[list[Any]], dict[str, dict[str, Any]]]:
    """The sync's share of a step in each trainer run that synced: table rows and the figures by run."""
    from sfpo_rl.trainer.tracking import read_jsonl

    metrics = args.metrics
    if metrics is None:
        metrics = sorted(args.out.glob("one_box/*/metrics.jsonl")) + sorted(
            args.out.glob("step_time/*/metrics.jsonl")
        )
    share_rows, shares = [], {}
    for path in metrics:
        rows = read_jsonl(path)
        if not any("timing/sync" in r for r in rows):  # e.g. one_box's single-process baseline: no sync
            continue
        label = f"{path.parent.parent.name}/{path.parent.name}"
        shares[label] = s = {**step_share(rows), "metrics": str(path)}
        share_rows.append([label, s["mb"], s["sync_s"], s["step_s"], 100 * s["fraction"]])
    return share_rows, shares


def report(
    args: argparse.Namespace, layout: dict[str, float], repeats: int, runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    width, layers = parse_size(args.size)
    results = {path: summarize(r) for path, r in runs.items()}
    unit = args.bucket_mb + layout["layer_mb"]  # one bucket plus one layer
    sync_rows, memory_rows, summary = sync_tables(results, layout, unit)
    share_rows, shares = trainer_shares(args)
    tables = {
        f"sync time (median of {repeats}) and speed": (
            ["path", "s", "MB/s", "x full state dict", "worst peak extra MB"],
            sync_rows,
        ),
        f"memory per process during a sync (MB; bucket + layer = {unit:.0f}, model = {layout['mb']:.0f})": (
            ["path", "process", "RSS before", "peak RSS", "peak extra", "x (bucket + layer)", "x model"],
            memory_rows,
        ),
    }
    if share_rows:
        tables["share of a training step (trainer runs; median over steps)"] = (
            ["run", "MB", "sync s", "step s", "sync % of step"],
            share_rows,
        )
    return {
        "rows": summary,
        "tables": tables,
        "notes": [
            f"Model: a random Qwen2 {width}x{layers} (head_dim 32, tied embeddings) with the tiny tokenizer, "
            "float32 everywhere; 2 FSDP ranks over gloo; engines are vLLM CPU builds.",
            "Peak extra: VmHWM after the sync minus VmRSS before it (VmHWM reset through /proc/<pid>/clear_refs).",
        ],
        "model": layout,
        "bucket_mb": args.bucket_mb,
        "bucket_plus_layer_mb": unit,
        "results": results,
        "runs": runs,
        "trainer_runs": shares,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    repeats = args.repeats or (2 if args.quick else 5)
    start_ray()
    with sized_model(args.size) as (model_dir, layout):
        print(
            f"[bench] weight_sync: {layout['params'] / 1e6:.0f}M parameters ({layout['mb']:.0f} MB float32), "
            f"largest layer {layout['layer_mb']:.0f} MB, buckets of {args.bucket_mb:g} MB, {repeats} repeats",
            flush=True,
        )
        runs = measure(model_dir, args.bucket_mb, repeats)
    return report(args, layout, repeats, runs)


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
