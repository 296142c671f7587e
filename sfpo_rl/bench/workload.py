"""The workloads the benchmarks run on: a random tiny Qwen2 of a chosen size (and its layout), arithmetic prompts
like the built-in task's, a synthetic rollout batch with the padded layout the rollout engine produces, and the
actor that trains on it, one per rank."""

from __future__ import annotations

import random
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sfpo_rl.bench.rollout_batches import padded_rollouts
from sfpo_rl.data import arith
from sfpo_rl.protocol import Batch
from sfpo_rl.tiny.model import make_random_tiny_model

MIB = 2**20


def arith_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` prompts of the built-in task (levels 1-4 in turn), reproducible from `seed`."""
    rng = random.Random(seed)
    return [arith.generate_problem(rng, arith.LEVELS[i % len(arith.LEVELS)]).prompt for i in range(count)]


def make_model(out_dir: Path, hidden_size: int, num_layers: int, seed: int = 0) -> Path:
    """A random Qwen2 (head_dim 32, 2 query heads per kv head) whose tokenizer is trained on task text."""
    rng = random.Random(seed)
    texts = [
        f"{p.prompt}{p.solution}"
        for p in (arith.generate_problem(rng, level) for level in arith.LEVELS for _ in range(50))
    ]
    heads = max(2, hidden_size // 32)
    return make_random_tiny_model(
        out_dir,
        seed=seed,
        texts=texts,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=heads // 2,
    )


@contextmanager
def scratch_model(hidden_size: int, num_layers: int) -> Iterator[Path]:
    """`make_model` in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="sfpo_bench_") as tmp:
        yield make_model(Path(tmp) / "model", hidden_size, num_layers)


@contextmanager
def sized_model(size: str) -> Iterator[tuple[Path, dict[str, float]]]:
    """`scratch_model` of a --size WIDTHxLAYERS, with its layout (see `model_layout`)."""
    with scratch_model(*parse_size(size)) as model_dir:
        yield model_dir, model_layout(model_dir)


def parse_size(text: str) -> tuple[int, int]:
    """'1024x8' -> (1024, 8)."""
    width, sep, layers = text.strip().partition("x")
    if not (sep and width.isdigit() and layers.isdigit()):
        raise ValueError(f"--size: {text!r} is not WIDTHxLAYERS (e.g. 1024x8)")
    return int(width), int(layers)


def model_layout(model_dir: Path) -> dict[str, float]:
    """Parameters, float32 MB and the largest layer's MB (a decoder layer, or a weight outside them)."""
    from safetensors import safe_open

    layers: dict[str, int] = {}
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for name in f.keys():
            numel = 1
            for dim in f.get_slice(name).get_shape():
                numel *= dim
            match = re.match(r"model\.layers\.\d+\.", name)
            layer = match.group(0) if match else name
            layers[layer] = layers.get(layer, 0) + numel
    params = sum(layers.values())
    return {"params": params, "mb": 4 * params / MIB, "layer_mb": 4 * max(layers.values()) / MIB}


def synthetic_rollouts(
    vocab_size: int, pad_id: int, rows: int, prompt_width: int, response_width: int, seed: int = 0
) -> Batch:
    """`rows` rollouts: prompts left-padded to `prompt_width` (lengths in [width/2, width]), responses
    right-padded to `response_width` (lengths in [width/2, width]), GRPO-like +-1 advantages. Everything the
    actor's update needs except `old_log_probs` (compute them with the actor, so ratios start at 1)."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(max(1, prompt_width // 2), prompt_width + 1, (rows,), generator=g)
    response_lens = torch.randint(max(1, response_width // 2), response_width + 1, (rows,), generator=g)
    return padded_rollouts(
        vocab_size, pad_id, prompt_lens.tolist(), response_lens.tolist(), prompt_width, response_width, g
    )


def check_rows(rows: int, world_size: int = 2) -> None:
    """`actor_config(rows)` makes two mini-batches, each split evenly over the ranks."""
    if rows % (2 * world_size):
        raise ValueError(
            f"--rows must be a multiple of {2 * world_size} (two mini-batches split over {world_size} ranks)"
        )


def actor_config(rows: int) -> dict[str, Any]:
    """The embedded default's objective (sfpo_rl's tiny_arith experiment), two optimizer steps per pass."""
    return dict(
        lr=1e-5,
        weight_decay=0.0,
        lr_schedule="constant",
        ppo_mini_batch_size=rows // 2,
        micro_batch_size_per_gpu=8,
        log_prob_micro_batch_size=16,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        entropy_coeff=0.001,
    )


def sectioned(options: dict[str, Any]) -> dict[str, Any]:
    """A flat dict of actor options (as the benchmarks and the tests' reference computations read them) in the
    actor config's sections: {"lr": ..} -> {"optimizer": {"lr": ..}}; other keys stay at the top."""
    from sfpo_rl.workers.actor_config import SECTIONS

    section_of = {f.name: name for name, cls in SECTIONS.items() if name != "lora" for f in fields(cls)}
    nested: dict[str, Any] = {}
    for key, value in options.items():
        if key in section_of:
            nested.setdefault(section_of[key], {})[key] = value
        else:
            nested[key] = value
    return nested


def prepared_actor(rank: int, world_size: int, model_dir: str, batch: Batch, config: dict[str, Any]):
    """This rank's FSDPActor and its contiguous chunk of `batch`, with old_log_probs from the actor itself."""
    from sfpo_rl.workers.actor import FSDPActor

    actor = FSDPActor(model_dir, sectioned(config))
    local = batch.split(world_size)[rank]
    local["old_log_probs"] = actor.compute_log_prob(local)["old_log_probs"]
    return actor, local


def timed(fn) -> tuple[float, float]:
    """Wall seconds between barriers (every rank waits for the slowest) and this process's CPU seconds (all
    its threads) for fn(); collective."""
    dist.barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    cpu = time.process_time() - cpu
    dist.barrier()
    return time.perf_counter() - wall, cpu
