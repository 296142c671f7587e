"""Model FLOPs of a policy update and the machine's measured matmul peak.

Model FLOPs count the matrix multiplies the model needs, not what the kernels happen to execute (padding,
recomputation under activation checkpointing and elementwise work are not counted), per the usual MFU
convention. For a decoder of L layers, width d, attention width a = heads * head_dim, MLP width f, vocabulary V:

    per layer and token, weights:   W = d*a (q) + 2*d*kv*head_dim (k, v) + a*d (o) + 3*d*f (gate, up, down)
    update (forward + backward):    6 * L * W * T                      T: real tokens (prompt + response)
                                  + 6 * d * V * T_resp                 LM head, only on response positions
                                  + 6 * L * a * sum_r s_r * (s_r + 1)  causal attention, sequence lengths s_r

The "6" is 2 FLOPs per multiply-add times 3 (forward, and backward for activations and weights). The attention
term: query i of a causal sequence meets i keys, QK^T and AV cost 2 * i * a FLOPs each in the forward, summed
over i = 1..s that is 2 * a * s * (s + 1), times 3 for forward + backward. The actor computes logits only for
response positions (`logits_to_keep`), so the LM head counts response tokens only. Embedding lookups are not
matmuls and are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from sfpo_rl.utils.decoder_shape import DecoderShape


def update_flops(
    shape: DecoderShape, seq_lens: Sequence[int], response_lens: Sequence[int]
) -> dict[str, int]:
    """Model FLOPs of one forward + backward over sequences of `seq_lens` real tokens (prompt + response)
    whose last `response_lens` tokens are the response (see the module docstring for the formula)."""
    if len(seq_lens) != len(response_lens):
        raise ValueError(f"{len(seq_lens)} sequence lengths but {len(response_lens)} response lengths")
    if any(r > s or r < 0 for s, r in zip(seq_lens, response_lens)):
        raise ValueError("every response length must be in [0, its sequence length]")
    dense = 6 * shape.num_layers * shape.layer_matmul_params * sum(seq_lens)
    lm_head = 6 * shape.hidden_size * shape.vocab_size * sum(response_lens)
    attention = 6 * shape.num_layers * shape.attention_width * sum(s * (s + 1) for s in seq_lens)
    return {"dense": dense, "lm_head": lm_head, "attention": attention, "total": dense + lm_head + attention}


def matmul_peak_flops(
    size: int = 1024, min_seconds: float = 0.5, trials: int = 3, dtype: torch.dtype = torch.float32
) -> float:
    """Best FLOP/s of a square `size` x `size` torch.matmul in this process (its current thread count), over
    `trials` timed bursts of at least `min_seconds` each after a warm-up."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    torch.matmul(a, b, out=out)  # warm-up: thread pool, kernel choice
    best = 0.0
    for _ in range(trials):
        _sync()
        count, start = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=out)
            count += 1
            _sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, 2 * size**3 * count / elapsed)
    return best


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
