"""The padding-free (packed) layout of a padded micro-batch.

The real tokens of every row follow one another in a single sequence, each row keeping its own position ids
(0, 1, ...). transformers reads the sequence boundaries from those position ids when no attention mask is
given: flash-attention runs its varlen kernel over them (no padding computed at all), other attention
implementations get a block-diagonal causal mask (exact, but the attention itself is computed over the whole
packed length, so the actor packs only for flash-attention unless told to).

Rows are [prompt | response] with the prompt left-padded and the response right-padded (the rollout layout).
Response token j of row i is predicted by the token before it, so only those positions need logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedLayout:
    input_ids: torch.Tensor  # [1, N] the real tokens of all rows, row after row
    position_ids: torch.Tensor  # [1, N] each row's own positions, restarting at 0
    predict_index: torch.Tensor  # [K] packed positions whose logits predict a real response token
    rows: torch.Tensor  # [K] that token's row
    cols: torch.Tensor  # [K] and response column
    labels: torch.Tensor  # [K] the token itself

    def unpack(self, values: torch.Tensor, n_rows: int, response_width: int) -> torch.Tensor:
        """[K] per-token values back to [n_rows, response_width], 0 where no real response token is
        (differentiable in `values`)."""
        out = values.new_zeros(n_rows, response_width)
        return out.index_put((self.rows, self.cols), values)


def pack(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, response_width: int
) -> PackedLayout:
    """The packed layout of [B, L] rows whose last `response_width` columns are the response."""
    real = attention_mask.bool()
    within_row = real.long().cumsum(-1) - 1  # 0, 1, ... over each row's real tokens
    if not torch.equal(position_ids[real], within_row[real]):
        raise ValueError(
            "packed forward: position ids must count each row's real tokens 0, 1, 2, ... (the rollout "
            "layout); use actor.batching.forward_layout=padded for other position ids"
        )
    packed_index = real.flatten().long().cumsum(0).reshape(real.shape) - 1
    prompt_width = real.shape[1] - response_width
    rows, cols = real[:, prompt_width:].nonzero(as_tuple=True)
    before = prompt_width + cols - 1
    if not real[rows, before].all():
        raise ValueError("packed forward: a response token follows padding; every row needs a real prompt")
    return PackedLayout(
        input_ids=input_ids[real].unsqueeze(0),
        position_ids=position_ids[real].unsqueeze(0),
        predict_index=packed_index[rows, before],
        rows=rows,
        cols=cols,
        labels=input_ids[rows, prompt_width + cols],
    )
