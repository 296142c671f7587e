"""Training throughput of the policy update on the real 2-rank FSDP2 actor: tokens/s, model FLOP/s, and that
as a fraction of this machine's measured matmul peak (model FLOPs utilisation, MFU).

Tokens are the real (unpadded) prompt + response tokens of the batch; one `update` with ppo_epochs=1 runs
every row forward and backward once. Model FLOPs follow `sfpo_rl.bench.flops` (6 x matmul weights x tokens,
the LM head on response tokens, causal attention). The peak is measured in the same processes right after
the updates: both ranks time a float32 torch.matmul at the same moment, each with the one thread it trains
with, and their sum is the peak the update could reach.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch.distributed as dist

from sfpo_rl.bench.common import bench_main, median, row
from sfpo_rl.bench.flops import DecoderShape, matmul_peak_flops, update_flops
from sfpo_rl.bench.ranks import run_ranks, slower_rank
from sfpo_rl.bench.workload import actor_config, prepared_actor, scratch_model, synthetic_rollouts, timed

NAME = "throughput"
WORLD = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument(
        "--rows", type=int, default=None, help="rollouts per update; default 16 quick, 64 full"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed updates; default 3 quick, 5 full")
    parser.add_argument("--matmul-size", type=int, default=1024, help="square matmul size for the peak")


def _job(rank: int, model_dir: str, batch, config: dict, repeats: int, matmul_size: int) -> dict:
    actor, local = prepared_actor(rank, WORLD, model_dir, batch, config)
    actor.update(local)  # warm-up
    update_s = [timed(lambda: actor.update(local))[0] for _ in range(repeats)]
    dist.barrier()  # both ranks measure the peak at the same time, as they train
    peak = matmul_peak_flops(size=matmul_size)
    return {"update_s": update_s, "peak_flops": peak}


def measure(args: argparse.Namespace, rows: int, repeats: int) -> tuple[Any, dict, list[dict]]:
    """The model's config, the batch, and per rank its timed updates and matmul peak."""
    from transformers import AutoConfig

    prompt_width, response_width = (16, 48) if args.quick else (32, 96)
    with scratch_model(args.hidden_size, args.num_layers) as model_dir:
        hf = AutoConfig.from_pretrained(model_dir)
        batch = synthetic_rollouts(hf.vocab_size, hf.pad_token_id, rows, prompt_width, response_width)
        config = actor_config(rows)
        ranks = run_ranks(_job, str(model_dir), batch, config, repeats, args.matmul_size, world_size=WORLD)
    return hf, batch, ranks


def report(args: argparse.Namespace, rows: int, hf: Any, batch, ranks: list[dict]) -> dict[str, Any]:
    seq_lens = batch["attention_mask"].sum(-1).tolist()
    response_lens = batch["response_mask"].sum(-1).tolist()
    flops = update_flops(DecoderShape.from_hf_config(hf), seq_lens, response_lens)
    update_s = slower_rank([r["update_s"] for r in ranks])
    seconds = median(update_s)
    tokens = sum(seq_lens)
    achieved = flops["total"] / seconds
    peak = sum(r["peak_flops"] for r in ranks)
    workload = f"{rows} rollouts, {tokens} tokens, hidden {args.hidden_size} x {args.num_layers} layers"
    return {
        "rows": [
            row(
                "update MFU", achieved / peak, "fraction", "model FLOP/s / measured matmul peak of both ranks"
            ),
            row("update throughput", tokens / seconds, "tokens/s", workload),
            row(
                "update model FLOP/s",
                achieved / 1e9,
                "GFLOP/s",
                f"{flops['total'] / 1e9:.2f} GFLOP per update",
            ),
            row(
                "matmul peak, float32",
                peak / 1e9,
                "GFLOP/s",
                f"{args.matmul_size}^2 matmul, 1 thread per rank, 2 ranks",
            ),
        ],
        "tables": {
            "model FLOPs of one update (GFLOP)": (
                ["dense", "LM head", "attention", "total"],
                [[flops[k] / 1e9 for k in ("dense", "lm_head", "attention", "total")]],
            ),
            "update wall time per repeat (s, slower rank)": (
                ["repeat", "seconds"],
                list(enumerate(update_s)),
            ),
        },
        "notes": [
            "FLOPs = 6 * L * (matmul weights per layer) * tokens + 6 * d * V * response tokens + "
            "6 * L * (heads * head_dim) * sum s(s+1) (causal attention); padding and recomputation not counted.",
            "A model this small runs small matmuls and much non-matmul work (softmax, norms, FSDP all-gathers over "
            "gloo), so a low MFU here says little about GPU runs.",
        ],
        "config": {
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "rows": rows,
            "actor": actor_config(rows),
        },
        "flops": flops,
        "update_s": update_s,
        "peak_flops_per_rank": [r["peak_flops"] for r in ranks],
        "tokens": tokens,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = args.rows or (16 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 5)
    hf, batch, ranks = measure(args, rows, repeats)
    return report(args, rows, hf, batch, ranks)


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
