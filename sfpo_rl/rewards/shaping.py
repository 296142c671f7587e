"""DAPO's overlong reward shaping (arXiv 2503.14476, Sec. 3.4): a soft, linear penalty for responses that enter
the last `len` tokens before the response limit, added to the reward where scores become token-level rewards.

A response of L tokens (its eos included) under a limit of L_max tokens with a buffer of L_buf tokens gets

    penalty(L) = min(0, (L_max - L_buf - L) / L_buf * penalty_factor)

0 up to L_max - L_buf tokens, then falling linearly to -penalty_factor at L_max (verl's DAPO reward manager
computes the same). Pure functions of tensors; this module imports no torch itself, so the verifier processes
that import the reward options stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sfpo_rl.utils.options import is_int, is_number, require

if TYPE_CHECKING:
    import torch

# `reward.overlong_buffer.len: null`: this share of rollout.max_response_length, DAPO's own proportion (a
# 4,096-token buffer before its 20,480-token limit).
DEFAULT_BUFFER_SHARE = 0.2


@dataclass
class OverlongBufferConfig:
    """`reward.overlong_buffer.*`."""

    enable: bool = False
    len: int | None = None  # tokens before rollout.max_response_length; null: a fifth of it (DAPO's share)
    penalty_factor: float = 1.0  # the penalty at the limit (DAPO and verl's recipe: 1.0)

    def __post_init__(self) -> None:
        require(isinstance(self.enable, bool), "reward.overlong_buffer.enable", "true or false", self.enable)
        n = self.len
        require(
            n is None or (is_int(n) and n >= 1), "reward.overlong_buffer.len", "null or an integer >= 1", n
        )
        factor = self.penalty_factor
        require(
            is_number(factor) and factor >= 0,
            "reward.overlong_buffer.penalty_factor",
            "a number >= 0",
            factor,
        )

    def buffer_len(self, max_response_length: int) -> int:
        """The buffer in tokens: `len`, or DAPO's share of the response limit when it is null."""
        return self.len if self.len is not None else max(1, int(max_response_length * DEFAULT_BUFFER_SHARE))


def overlong_penalty(
    response_lengths: torch.Tensor, max_response_length: int, buffer_len: int, penalty_factor: float
) -> torch.Tensor:
    """[B] lengths (tokens) -> [B] penalties <= 0: zero up to max_response_length - buffer_len tokens, then
    linear down to -penalty_factor at max_response_length."""
    expected = max_response_length - buffer_len
    return ((expected - response_lengths.float()) / buffer_len * penalty_factor).clamp(max=0.0)


def add_at_last_token(
    token_level: torch.Tensor, response_mask: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """[B, R] token-level rewards with `values` [B] added on each row's last response token (where the score
    sits); a row without response tokens is left unchanged."""
    lengths = response_mask.sum(-1)
    last = (lengths - 1).clamp(min=0).unsqueeze(-1)
    added = (values.to(token_level.dtype) * (lengths > 0)).unsqueeze(-1)
    return token_level.scatter_add(-1, last, added)
