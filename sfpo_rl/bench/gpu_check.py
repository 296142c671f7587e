"""`python -m sfpo_rl.bench.gpu_check`: the actor's GPU path, checked in one command on one CUDA device.

An FSDP2 actor on one rank (NCCL), bf16 mixed precision with float32 master weights, runs three SFPO steps (K=3,
alpha=0.8) of a random-initialised Qwen2 of Qwen2.5-0.5B's shape (0.49B parameters) on rollouts whose
response lengths have a long tail (log-normal, up to 8x the median), with the actor's defaults: token-budget
micro-batches, one gradient reduce-scatter per mini-batch, packed forwards where flash-attention is installed.
It prints update tokens/s, model FLOP utilisation against a bf16 matmul peak measured in the same process,
peak GPU memory of a plain update (no slow copy), of an SFPO step (slow copy on the GPU) and of one with the
slow copy in host memory, and the drift of the bf16 log-probs from a float32 recomputation of the same weights.
It exits 1, naming what failed, when the drift passes the stated tolerance or an update goes non-finite, and
writes everything to <out>/gpu_check.json.

It imports only torch, transformers, safetensors and the actor's modules (no Ray, vLLM or Hydra), so it runs
from a bare copy of the repository: `make gpu-check`. `--reduced` is the CPU form the tests run: a tiny model,
gloo, float32, a few seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

from sfpo_rl.bench.common import format_table, row, summary_table, write_result
from sfpo_rl.bench.flops import DecoderShape, matmul_peak_flops, update_flops
from sfpo_rl.bench.rollout_batches import long_tailed_rollouts
from sfpo_rl.bench.workload import sectioned
from sfpo_rl.protocol import Batch
from sfpo_rl.workers.actor import FSDPActor, FSDPPolicy

NAME = "gpu_check"
GIB = 2**30
# Stated tolerance of bf16 log-probs against a float32 recomputation: the mean drift moves the PPO ratio by
# about 5% (a quarter of the 0.2 clip range); the largest single-token drift stays far from the clip range's
# scale of broken precision (a bf16 softmax or bf16 master weights drift by whole nats).
MAX_MEAN_DRIFT = 0.05
MAX_DRIFT = 2.0


@dataclass(frozen=True)
class Shape:
    """The model and workload of one form of the check."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rows: int
    prompt_range: tuple[int, int]
    median_response: int
    max_tokens_per_micro_batch: int


# Qwen2.5-0.5B: 24 layers, width 896, 14 query / 2 key-value heads, MLP 4864, 151,936 tokens, tied embeddings.
FULL = Shape(896, 24, 14, 2, 4864, 151_936, 64, (64, 256), 512, 16384)
REDUCED = Shape(64, 2, 4, 2, 128, 512, 8, (4, 12), 12, 96)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sfpo_rl.bench.gpu_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/gpu_check"), help="directory for gpu_check.json"
    )
    parser.add_argument("--reduced", action="store_true", help="the CPU form: tiny model, gloo, float32")
    parser.add_argument("--steps", type=int, default=3, help="SFPO steps timed")
    parser.add_argument("--inner-steps", type=int, default=3, help="SFPO's K")
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--param-dtype", default="auto", help="actor.param_dtype (auto: bf16 on CUDA)")
    parser.add_argument(
        "--forward-layout", default="auto", help="actor.batching.forward_layout: auto, packed, padded"
    )
    parser.add_argument(
        "--max-mean-drift", type=float, default=MAX_MEAN_DRIFT, help="mean |log p drift| allowed"
    )
    parser.add_argument("--max-drift", type=float, default=MAX_DRIFT, help="largest |log p drift| allowed")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _log(start: float, message: str) -> None:
    print(f"[gpu_check {time.perf_counter() - start:6.1f} s] {message}", flush=True)


def _init_process_group(device: torch.device) -> None:
    """One rank: NCCL on CUDA, gloo on the CPU."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # as the actor's CPU ranks: a shared machine's cores stall thread pools
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def _random_model(shape: Shape, out: Path, device: torch.device, seed: int) -> Path:
    """A random-initialised Qwen2 of `shape` saved in HF format (float32 safetensors; no tokenizer needed)."""
    config = Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=shape.vocab_size - 1,
        eos_token_id=shape.vocab_size - 2,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 0.5B parameters on the host takes a while
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    return out


def _save_weights(state: dict[str, torch.Tensor], source: Path, out: Path) -> Path:
    """The actor's full weights as an HF model directory with `source`'s config."""
    config = AutoConfig.from_pretrained(source)
    config.save_pretrained(out)
    if config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    save_file(
        {k: v.contiguous().clone() for k, v in state.items()}, out / "model.safetensors", {"format": "pt"}
    )
    return out


def drift(log_probs: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """|log p - reference log p| over the real response tokens: mean, 99.9th percentile, max."""
    diff = (log_probs.double() - reference.double())[mask.bool()].abs()
    if not len(diff):
        raise ValueError("drift: no response tokens to compare")
    return {
        "mean": diff.mean().item(),
        "p999": diff.quantile(0.999).item(),
        "max": diff.max().item(),
    }


def drift_failures(measured: dict[str, float], max_mean: float, max_any: float) -> list[str]:
    """What exceeds the tolerance (a non-finite drift always does)."""
    failures = []
    if not (measured["mean"] <= max_mean):
        failures.append(f"mean log-prob drift {measured['mean']:.3g} > {max_mean:g} nats")
    if not (measured["max"] <= max_any):
        failures.append(f"largest log-prob drift {measured['max']:.3g} > {max_any:g} nats")
    return failures


def _peak_memory(device: torch.device, fn, *args: Any) -> tuple[Any, float | None]:
    """fn(*args) and the peak GPU memory allocated while it ran, GiB (None on the CPU)."""
    if device.type != "cuda":
        return fn(*args), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    result = fn(*args)
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() / GIB


def _with_old_log_probs(actor: FSDPActor, batch: Batch) -> Batch:
    """The batch with old_log_probs from the actor's current weights (as the trainer computes them)."""
    batch = batch.select()
    batch["old_log_probs"] = actor.compute_log_prob(batch)["old_log_probs"]
    return batch


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.reduced
    if not cuda and not args.reduced:
        raise SystemExit("gpu_check: no CUDA device here; `--reduced` runs the CPU form")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    shape = REDUCED if args.reduced else FULL
    _init_process_group(device)
    try:
        with tempfile.TemporaryDirectory(prefix="sfpo_gpu_check_") as tmp:
            setup = _setup(args, shape, device, Path(tmp), start)
            measured = _measure(args, setup, start)
            return _report(args, setup, measured, start)
    finally:
        dist.destroy_process_group()


@dataclass
class Setup:
    """The check's model, actor and batch."""

    shape: Shape
    device: torch.device
    tmp: Path
    model_dir: Path
    hf: Any
    config: dict[str, Any]
    actor: FSDPActor
    batch: Batch

    @property
    def seq_lens(self) -> list[int]:
        return self.batch["attention_mask"].sum(-1).tolist()

    @property
    def response_lens(self) -> list[int]:
        return self.batch["response_mask"].sum(-1).tolist()


def _setup(args: argparse.Namespace, shape: Shape, device: torch.device, tmp: Path, start: float) -> Setup:
    model_dir = _random_model(shape, tmp / "model", device, args.seed)
    hf = AutoConfig.from_pretrained(model_dir)
    _log(
        start,
        f"random Qwen2 saved: {shape.num_layers} layers x {shape.hidden_size}, vocab {shape.vocab_size}",
    )
    config = dict(
        lr=1e-5,
        weight_decay=0.0,
        ppo_mini_batch_size=shape.rows // 2,  # two optimizer steps per pass
        max_tokens_per_micro_batch=shape.max_tokens_per_micro_batch,
        clip_ratio_high=0.28,
        entropy_coeff=0.001,
        param_dtype=args.param_dtype,
        forward_layout=args.forward_layout,
        activation_checkpointing=device.type == "cuda",  # as configs/hardware/gpu.yaml
    )
    actor = FSDPActor(model_dir, sectioned(config))
    batch = long_tailed_rollouts(
        shape.vocab_size,
        hf.pad_token_id,
        shape.rows,
        shape.prompt_range,
        shape.median_response,
        seed=args.seed,
    )
    params = sum(p.numel() for p in actor.params)
    layout = "packed" if actor.packed else "padded"
    _log(
        start,
        f"actor ready: {params / 1e9:.3f}B parameters, {actor.param_dtype} compute with float32 master weights, "
        f"{actor.model.config._attn_implementation} attention, {layout} forwards",
    )
    return Setup(shape, device, tmp, model_dir, hf, config, actor, batch)


def _measure(args: argparse.Namespace, s: Setup, start: float) -> dict[str, Any]:
    """Timed SFPO steps, the peak memory of each kind of update, and the drift from a float32 recomputation."""
    actor, device, k, alpha = s.actor, s.device, args.inner_steps, args.alpha
    tokens, passes = sum(s.seq_lens), args.inner_steps + 1  # ppo_epochs = 1
    compute_dtype = actor.param_dtype
    steps, sfpo_peaks = [], []
    for step in range(1, args.steps + 1):
        data = _with_old_log_probs(actor, s.batch)
        t0 = time.perf_counter()
        result, peak = _peak_memory(device, actor.sfpo_update, data, k, alpha)
        seconds = time.perf_counter() - t0
        steps.append({"step": step, "seconds": seconds, "nonfinite": result.nonfinite, **result.metrics})
        if step > 1:  # step 1 also allocates Adam's moments
            sfpo_peaks.append(peak)
        _log(
            start,
            f"SFPO step {step}: {seconds:.2f} s, {tokens * passes / seconds:,.0f} tokens/s, loss "
            f"{result.metrics['actor/pg_loss']:.4f}, entropy {result.entropy:.3f}",
        )
    _, plain_peak = _peak_memory(device, actor.update, _with_old_log_probs(actor, s.batch))
    actor.config.sfpo_slow_copy_device = "cpu"
    _, host_copy_peak = _peak_memory(device, actor.sfpo_update, _with_old_log_probs(actor, s.batch), k, alpha)
    _log(start, "memory measured: a plain update, an SFPO step with the slow copy in host memory")

    log_probs = actor.compute_log_prob(s.batch)["old_log_probs"]
    weights = _save_weights(actor.state_dict_for_rollout(), s.model_dir, s.tmp / "trained")
    float32 = FSDPPolicy(
        weights, sectioned({**s.config, "param_dtype": "float32", "forward_layout": "padded"})
    )
    reference = float32.compute_log_prob(s.batch)["old_log_probs"]
    measured = drift(log_probs, reference, s.batch["response_mask"])
    _log(
        start, f"drift of the log-probs from float32: mean {measured['mean']:.2e}, max {measured['max']:.2e}"
    )
    peak_flops = matmul_peak_flops(size=8192 if device.type == "cuda" else 256, dtype=compute_dtype)
    return {
        "steps": steps,
        "sfpo_peaks": sfpo_peaks,
        "plain_peak": plain_peak,
        "host_copy_peak": host_copy_peak,
        "drift": measured,
        "compute_dtype": compute_dtype,
        "peak_flops": peak_flops,
    }


def _report(args: argparse.Namespace, s: Setup, m: dict[str, Any], start: float) -> dict[str, Any]:
    actor, shape, steps, measured = s.actor, s.shape, m["steps"], m["drift"]
    failures = drift_failures(measured, args.max_mean_drift, args.max_drift)
    failures += [f"SFPO step {t['step']} went non-finite" for t in steps if t["nonfinite"]]
    tokens, response_lens, passes = sum(s.seq_lens), s.response_lens, args.inner_steps + 1
    step_flops = update_flops(DecoderShape.from_hf_config(s.hf), s.seq_lens, response_lens)["total"] * passes
    timed = steps[1:] or steps  # step 1 also pays for warm-up
    seconds = sorted(t["seconds"] for t in timed)[len(timed) // 2]
    peak_dtype = str(m["compute_dtype"]).removeprefix("torch.")
    sfpo_peaks = m["sfpo_peaks"]
    sfpo_peak = max(sfpo_peaks) if sfpo_peaks and sfpo_peaks[0] is not None else None
    shard_bytes = sum(p.to_local().numel() * p.to_local().element_size() for p in actor.params)
    rows = [
        row(
            "update throughput", tokens * passes / seconds, "tokens/s", f"median of SFPO steps 2-{args.steps}"
        ),
        row(
            "model FLOP utilisation",
            step_flops / seconds / m["peak_flops"],
            "fraction",
            f"vs measured {peak_dtype} matmul peak",
        ),
        row("matmul peak", m["peak_flops"] / 1e12, "TFLOP/s", f"{peak_dtype}, this device"),
        row("peak memory, plain update", m["plain_peak"], "GiB", "no slow copy"),
        row("peak memory, SFPO step", sfpo_peak, "GiB", "slow copy on the device"),
        row(
            "peak memory, SFPO step, slow copy in host",
            m["host_copy_peak"],
            "GiB",
            "sfpo_slow_copy_device=cpu",
        ),
        row("slow copy (local shard, float32)", shard_bytes / GIB, "GiB", "expected SFPO - plain"),
        row("log-prob drift, mean", measured["mean"], "nats", f"tolerance {args.max_mean_drift:g}"),
        row("log-prob drift, max", measured["max"], "nats", f"tolerance {args.max_drift:g}"),
        row("check", "FAILED" if failures else "passed", "", "; ".join(failures)),
    ]
    device = s.device
    return {
        "rows": rows,
        "failures": failures,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": _versions(),
        "model": {
            **vars(shape),
            "parameters": sum(p.numel() for p in actor.params),
            "attention": actor.model.config._attn_implementation,
            "forward_layout": "packed" if actor.packed else "padded",
        },
        "actor": s.config,
        "workload": {
            "rows": shape.rows,
            "tokens": tokens,
            "response_tokens": sum(response_lens),
            "median_response": sorted(response_lens)[len(response_lens) // 2],
            "max_response": max(response_lens),
            "flops_per_sfpo_step": step_flops,
        },
        "steps": steps,
        "drift": measured,
        "peak_memory_gib": {
            "plain_update": m["plain_peak"],
            "sfpo": sfpo_peaks,
            "sfpo_host_copy": m["host_copy_peak"],
        },
        "modules_loaded": sorted(mod for mod in ("ray", "vllm", "hydra") if mod in sys.modules),
        "wall_s": time.perf_counter() - start,
    }


def _versions() -> dict[str, str | None]:
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    steps = [
        [s["step"], s["seconds"], s["actor/pg_loss"], s["actor/entropy"], s["actor/grad_norm"]]
        for s in result["steps"]
    ]
    print(
        f"\n### {NAME}: SFPO steps\n\n{format_table(['step', 'seconds', 'pg loss', 'entropy', 'grad norm'], steps)}"
    )
    print(f"\n### {NAME} ({result['device']})\n\n{summary_table(result['rows'])}", flush=True)
    path = write_result(args.out, NAME, result)
    print(f"[gpu_check] wrote {path}", flush=True)
    if result["failures"]:
        print(f"[gpu_check] FAILED: {'; '.join(result['failures'])}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
