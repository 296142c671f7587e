"""Rollout throughput: the vLLM engine (`VLLMRollout`, as the trainer runs it) against transformers
`generate` on the same model, prompts and sampling: n samples per prompt, temperature 1, no top-k / top-p,
exactly `max_tokens` new tokens per sample (end-of-sequence ignored, so both generate the same number of
tokens and the comparison does not depend on when a random model happens to stop).

Both run in this process with the machine's cores (torch's default thread count for transformers, vLLM's
CPU backend picks its own); transformers gets all prompts x n samples in one batch, its most favourable
setting. Each repeat times one vLLM call and one transformers call, alternating which goes first.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from sfpo_rl.bench.common import bench_main, median, row
from sfpo_rl.bench.rollout_batches import left_padded
from sfpo_rl.bench.workload import arith_prompts, scratch_model
from sfpo_rl.protocol import Batch

NAME = "rollout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden-size", type=int, default=128, help="the built-in tiny model's width")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=None, help="default 16 quick, 64 full")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="new tokens per sample; 64 quick, 96 full"
    )
    parser.add_argument("--repeats", type=int, default=None, help="default 2 quick, 3 full")


def vllm_generate(
    engine, prompt_ids: list[list[int]], n: int, max_tokens: int, seed: int
) -> tuple[int, float]:
    """(generated tokens, seconds) of one engine call."""
    batch = Batch.from_dict({"prompt_token_ids": prompt_ids})
    start = time.perf_counter()
    out = engine.generate(
        batch, n=n, temperature=1.0, top_p=1.0, top_k=-1, max_tokens=max_tokens, seed=seed, ignore_eos=True
    )
    elapsed = time.perf_counter() - start
    return int(out["response_mask"].sum()), elapsed


@torch.no_grad()
def hf_generate(
    model, prompt_ids: list[list[int]], pad_id: int, n: int, max_tokens: int, seed: int
) -> tuple[int, float]:
    """(generated tokens, seconds) of one transformers `generate` over all prompts x n samples, left-padded."""
    input_ids, attention_mask = left_padded(prompt_ids, pad_id)
    width = input_ids.shape[1]
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_return_sequences=n,
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,  # end-of-sequence suppressed: the same work as vLLM's ignore_eos
        pad_token_id=pad_id,
    )
    elapsed = time.perf_counter() - start
    return int(out[:, width:].numel()), elapsed


def measure(args: argparse.Namespace, num_prompts: int, max_tokens: int, repeats: int) -> tuple[dict, float]:
    """(generated tokens, seconds) per repeat of each generator, and the engine's start-up seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sfpo_rl.workers.rollout import VLLMRollout

    with scratch_model(args.hidden_size, args.num_layers) as model_dir:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prompt_ids = tokenizer(arith_prompts(num_prompts), add_special_tokens=False)["input_ids"]
        engine = VLLMRollout(
            model_dir,
            dict(
                n=args.n,
                max_prompt_length=max(len(p) for p in prompt_ids),
                max_response_length=max_tokens,
                dtype="float32",
                kv_cache_gib=0.5,
                max_num_seqs=num_prompts * args.n,
                seed=0,
            ),
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        runners = {
            "vllm": lambda seed: vllm_generate(engine, prompt_ids, args.n, max_tokens, seed),
            "transformers": lambda seed: hf_generate(
                model, prompt_ids, tokenizer.pad_token_id, args.n, max_tokens, seed
            ),
        }
        for fn in runners.values():
            fn(repeats)  # warm-up (its own seed): first-call allocations and kernel choices
        results: dict[str, list[tuple[int, float]]] = {name: [] for name in runners}
        for i in range(repeats):
            for name in runners if i % 2 == 0 else reversed(runners):
                results[name].append(runners[name](i))
    return results, engine.engine_start_s


def report(
    args: argparse.Namespace, num_prompts: int, max_tokens: int, results: dict, engine_start_s: float
) -> dict[str, Any]:
    def tokens_per_s(name: str) -> list[float]:
        return [tokens / seconds for tokens, seconds in results[name]]

    vllm_tps, hf_tps = tokens_per_s("vllm"), tokens_per_s("transformers")
    speedups = [v / h for v, h in zip(vllm_tps, hf_tps)]
    tokens = results["vllm"][0][0]
    if any(t != tokens for r in results.values() for t, _ in r):
        raise RuntimeError(f"generated token counts differ between runs: {results}")
    workload = f"{num_prompts} prompts x n={args.n} x {max_tokens} tokens, hidden {args.hidden_size} x {args.num_layers} layers"
    return {
        "rows": [
            row(
                "vLLM / transformers generate, tokens/s",
                median(speedups),
                "x",
                f"median of {len(speedups)} paired repeats; {workload}",
            ),
            row("vLLM", median(vllm_tps), "tokens/s", f"engine start {engine_start_s:.0f} s (once per run)"),
            row(
                "transformers generate",
                median(hf_tps),
                "tokens/s",
                f"torch threads {torch.get_num_threads()}",
            ),
        ],
        "tables": {
            "per repeat (generated tokens / s)": (
                ["repeat", "tokens", "vLLM", "transformers", "ratio"],
                [[i, tokens, v, h, v / h] for i, (v, h) in enumerate(zip(vllm_tps, hf_tps))],
            )
        },
        "notes": [
            "Sampling: temperature 1, top-k/top-p off, end-of-sequence ignored; the same token ids as prompts."
        ],
        "config": {
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "prompts": num_prompts,
            "n": args.n,
            "max_tokens": max_tokens,
            "generated_tokens_per_call": tokens,
        },
        "seconds": {name: [s for _, s in r] for name, r in results.items()},
        "engine_start_s": engine_start_s,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    num_prompts = args.prompts or (16 if args.quick else 64)
    max_tokens = args.max_tokens or (64 if args.quick else 96)
    repeats = args.repeats or (2 if args.quick else 3)
    results, engine_start_s = measure(args, num_prompts, max_tokens, repeats)
    return report(args, num_prompts, max_tokens, results, engine_start_s)


if __name__ == "__main__":
    bench_main(NAME, __doc__, add_arguments, run)
