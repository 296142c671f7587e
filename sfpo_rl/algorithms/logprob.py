"""Token log-probabilities and entropies from logits, in row chunks so no second vocab-sized tensor of the
whole batch is ever alive."""

from __future__ import annotations

import torch

DEFAULT_CHUNK_ROWS = 1024


def _row_chunks(logits: torch.Tensor, chunk_rows: int) -> tuple[torch.Tensor, ...]:
    return logits.reshape(-1, logits.shape[-1]).split(chunk_rows)


def log_probs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> torch.Tensor:
    """log softmax(logits)[label] for logits [..., V] and labels [...]: label logit - logsumexp."""
    flat_labels = labels.reshape(-1, 1)
    out = []
    for i, chunk in enumerate(_row_chunks(logits, chunk_rows)):
        picked = chunk.gather(-1, flat_labels[i * chunk_rows : i * chunk_rows + len(chunk)]).squeeze(-1)
        out.append(picked - torch.logsumexp(chunk, dim=-1))
    return torch.cat(out).reshape(labels.shape) if out else logits.new_zeros(labels.shape)


def entropy_from_logits(logits: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: logsumexp(z) - sum softmax(z) * z with z = l - max(l), so
    large logits do not cancel catastrophically in float32."""
    out = []
    for chunk in _row_chunks(logits, chunk_rows):
        z = chunk - chunk.max(dim=-1, keepdim=True).values.detach()
        out.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1))
    return torch.cat(out).reshape(logits.shape[:-1]) if out else logits.new_zeros(logits.shape[:-1])
