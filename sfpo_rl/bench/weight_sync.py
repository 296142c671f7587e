"""Weight sync: the time to push the actor's weights into the rollout engine, its throughput, and its share of
a training step.

Isolated measurement: the trainer's own path (`WorkerGroups.sync_weights`) between a real 2-rank FSDP actor
group and a vLLM rollout worker on Ray: actor rank 0 gathers the full weights (`state_dict_for_rollout`),
they travel through Ray's object store and the engine reloads them in place (`load_weights`). Repeated
after a warm-up, for each model size. "gather" is timed alone (rank 0 holding the full state dict, nothing
fetched); "load" is the engine's own timing; the rest of the end-to-end time is the object-store transfer
and Ray dispatch.

Share of a step: from trainer runs' metrics.jsonl (`timing/sync` / `timing/step`, the same steps), by
default those the step_time benchmark wrote under the same --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from sfpo_rl.bench.common import bench_main, median, row
from sfpo_rl.bench.workload import make_model

NAME = "weight_sync"
MIB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        default=None,
        help="model sizes WIDTHxLAYERS, comma-separated; default 512x4 quick, 128x4,512x4,1024x8 full",
    )
    parser.add_argument("--repeats", type=int, default=None, help="default 3 quick, 5 full")
    parser.add_argument(
        "--metrics",
        type=Path,
        nargs="*",
        default=None,
        help="trainer metrics.jsonl files for the share of a step; default <out>/step_time/*/metrics.jsonl",
    )


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'128x4,512x8' -> [(128, 4), (512, 8)]."""
    sizes = []
    for item in text.split(","):
        width, sep, layers = item.strip().partition("x")
        if not (sep and width.isdigit() and layers.isdigit()):
            raise ValueError(f"--sizes: {item!r} is not WIDTHxLAYERS (e.g. 512x4)")
        sizes.append((int(width), int(layers)))
    return sizes


def step_share(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median over training steps (the first left out when there are more) of sync time, step time, their
    ratio and the engine's load statistics."""
    steps = [r for r in rows if "timing/sync" in r and "timing/step" in r]
    if not steps:
        raise ValueError("no training steps with timing/sync and timing/step in the metrics")
    if len(steps) > 1:
        steps = steps[1:]
    return {
        "sync_s": median([r["timing/sync"] for r in steps]),
        "step_s": median([r["timing/step"] for r in steps]),
        "fraction": median([r["timing/sync"] / r["timing/step"] for r in steps]),
        "mb": median([r["sync/load_weights_mb"] for r in steps]),
        "load_s": median([r["sync/load_weights_s"] for r in steps]),
    }


def measure(model_dir: Path, repeats: int) -> dict[str, Any]:
    """Gather, load and end-to-end sync times of one model through the trainer's worker groups."""
    import ray

    from sfpo_rl.controller import RayWorkerGroup, ResourcePool
    from sfpo_rl.trainer.workers import WorkerGroups
    from sfpo_rl.workers.actor_worker import ActorWorker
    from sfpo_rl.workers.rollout import RolloutWorker

    tag = model_dir.parent.name
    actor = RayWorkerGroup(
        ResourcePool([2], name=f"bench-actor-{tag}"), ActorWorker, "actor", str(model_dir), {}
    )
    rollout_cfg = dict(max_prompt_length=32, max_response_length=32, dtype="float32", kv_cache_gib=0.25)
    rollout = RayWorkerGroup(
        ResourcePool([1], name=f"bench-rollout-{tag}"), RolloutWorker, "rollout", str(model_dir), rollout_cfg
    )
    groups = WorkerGroups(actor=actor, rollout=rollout, reward=None)
    try:
        groups.sync_weights()  # warm-up
        gather_s, total_s, load_s, mb = [], [], [], 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            future = actor.state_dict_for_rollout.future()
            ray.wait(future.refs, num_returns=len(future.refs), fetch_local=False)
            gather_s.append(time.perf_counter() - start)
            del future
            start = time.perf_counter()
            stats = groups.sync_weights()
            total_s.append(time.perf_counter() - start)
            load_s.append(stats["sync/load_weights_s"])
            mb = stats["sync/load_weights_mb"]
    finally:
        groups.shutdown()
    return {"mb": mb, "gather_s": gather_s, "load_s": load_s, "total_s": total_s}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sfpo_rl.controller import init_ray
    from sfpo_rl.trainer.tracking import read_jsonl

    sizes = parse_sizes(args.sizes or ("512x4" if args.quick else "128x4,512x4,1024x8"))
    repeats = args.repeats or (3 if args.quick else 5)
    init_ray(num_cpus=8, env_vars={"VLLM_LOGGING_LEVEL": "ERROR"})
    measured = {}
    with tempfile.TemporaryDirectory(prefix="sfpo_bench_") as tmp:
        for width, layers in sizes:
            model_dir = make_model(Path(tmp) / f"{width}x{layers}" / "model", width, layers)
            measured[f"{width}x{layers}"] = measure(model_dir, repeats)

    iso_rows, summary = [], []
    for size, m in measured.items():
        total, gather, load = median(m["total_s"]), median(m["gather_s"]), median(m["load_s"])
        iso_rows.append(
            [size, m["mb"], gather, load, total - gather - load, total, m["mb"] / total, m["mb"] / load]
        )
        summary.append(
            row(
                f"sync {size} ({m['mb']:.0f} MB)",
                m["mb"] / total,
                "MB/s",
                f"end to end, {total:.2f} s; engine load alone {m['mb'] / load:.0f} MB/s",
            )
        )

    metrics = args.metrics if args.metrics is not None else sorted(args.out.glob("step_time/*/metrics.jsonl"))
    share_rows, shares = [], {}
    for path in metrics:
        label = path.parent.name
        shares[label] = s = step_share(read_jsonl(path))
        share_rows.append(
            [label, s["mb"], s["sync_s"], s["step_s"], 100 * s["fraction"], s["mb"] / s["sync_s"]]
        )
        summary.append(
            row(
                f"sync share of a {label} step",
                100 * s["fraction"],
                "%",
                f"{s['sync_s']:.2f} s of {s['step_s']:.2f} s, {s['mb']:.1f} MB (trainer run)",
            )
        )
    if not metrics:
        summary.append(
            row(
                "sync share of a step",
                None,
                "%",
                "no trainer metrics: run step_time first with the same --out, or pass --metrics",
            )
        )
    tables = {
        f"isolated sync through the trainer's worker groups (median of {repeats}; s)": (
            [
                "model",
                "MB",
                "gather",
                "load",
                "transfer + dispatch",
                "end to end",
                "MB/s end to end",
                "MB/s load",
            ],
            iso_rows,
        )
    }
    if share_rows:
        tables["share of a training step (trainer runs; median over steps)"] = (
            ["run", "MB", "sync s", "step s", "sync % of step", "MB/s"],
            share_rows,
        )
    return {
        "rows": summary,
        "tables": tables,
        "notes": [
            "Model sizes WIDTHxLAYERS are random Qwen2 models (float32, head_dim 32) with the tiny tokenizer."
        ],
        "isolated": measured,
        "trainer_runs": {k: {**v, "metrics": str(p)} for (k, v), p in zip(shares.items(), metrics)},
    }


def main(argv=None) -> dict[str, Any]:
    return bench_main(NAME, __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    main()
