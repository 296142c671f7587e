"""Shared by the actor tests: a fixed random rollout batch, the rank launcher (`run_ranks`, shared with the
benchmarks), and a plain single-process reference (transformers model, AdamW, full-mini-batch PPO-clip loss) written independently of
sfpo_rl's loss code."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from sfpo_rl.bench.ranks import run_ranks  # noqa: F401  (re-exported for the tests)
from sfpo_rl.protocol import Batch

# ------------------------------------------------------------------ data


def make_batch(vocab_size: int, pad_id: int, seed: int = 0, temperature: float = 0.8) -> Batch:
    """12 rollouts, prompts left-padded to 6, responses right-padded to 8, GRPO-like advantages.

    Lengths are chosen so micro-batches have columns that are padding in every row (both ends), which the
    actor cuts before its forward; that must not change any result.
    """
    g = torch.Generator().manual_seed(seed)
    prompt_lens = [2, 3, 4, 3, 6, 5, 2, 6, 4, 3, 5, 2]
    response_lens = [3, 5, 2, 4, 8, 1, 6, 7, 8, 2, 5, 3]
    n, p_len, r_len = len(prompt_lens), 6, 8
    prompts = torch.full((n, p_len), pad_id)
    responses = torch.full((n, r_len), pad_id)
    prompt_mask = torch.zeros(n, p_len, dtype=torch.long)
    response_mask = torch.zeros(n, r_len, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip(prompt_lens, response_lens)):
        prompts[i, p_len - pl :] = torch.randint(0, vocab_size, (pl,), generator=g)
        responses[i, :rl] = torch.randint(0, vocab_size, (rl,), generator=g)
        prompt_mask[i, p_len - pl :] = 1
        response_mask[i, :rl] = 1
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    advantages = (torch.randn(n, 1, generator=g) * response_mask).float()
    return Batch.from_dict(
        {
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": response_mask,
            "advantages": advantages,
        },
        meta={"temperature": temperature},
    )


def perturbed(log_probs: torch.Tensor, mask: torch.Tensor, seed: int, scale: float = 0.3) -> torch.Tensor:
    """Old log-probs a little off the current policy, so ratios differ from 1 and clipping takes effect."""
    g = torch.Generator().manual_seed(seed)
    return (log_probs + scale * torch.randn(log_probs.shape, generator=g)) * mask


# ------------------------------------------------------------------ plain single-process reference


def plain_model(model_dir) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def plain_log_probs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of the responses from one full forward over the padded batch."""
    r_len = batch["responses"].shape[1]
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).logits
    logits = logits[:, -r_len - 1 : -1] / batch.meta["temperature"]
    log_softmax = torch.log_softmax(logits, dim=-1)
    log_probs = log_softmax.gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    return log_probs, entropy


def plain_optimizer(model: torch.nn.Module, cfg: dict, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (Qwen2's 1-D params are biases and norm weights)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=cfg["betas"], eps=cfg["eps"])


def global_mini_batches(batch: Batch, world_size: int, mini_batch_size: int) -> list[Batch]:
    """Global mini-batch j = the j-th `mini_batch_size / world_size` rows of every rank's contiguous chunk."""
    chunks = batch.split(world_size)
    local = mini_batch_size // world_size
    return [Batch.concat([chunk[j : j + local] for chunk in chunks]) for j in range(0, len(chunks[0]), local)]


def _masked_agg(values: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    mask = mask.float()
    if mode == "token-mean":
        return (values * mask).sum() / mask.sum()
    if mode == "seq-mean-token-mean":
        return ((values * mask).sum(-1) / mask.sum(-1)).mean()
    raise ValueError(mode)


def plain_loss(
    model: torch.nn.Module, mini: Batch, cfg: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of one global mini-batch in one process (one forward over all its rows), its pg part, and the
    per-token entropies."""
    mask = mini["response_mask"]
    log_probs, entropy = plain_log_probs(model, mini)
    adv = mini["advantages"]
    mode = cfg.get("loss_agg_mode", "token-mean")
    if cfg.get("policy_loss") == "gspo":  # one ratio per sequence; mean over sequences
        assert mode == "seq-mean-token-mean"
        log_ratio = (log_probs - mini["old_log_probs"]) * mask
        ratio = torch.exp(log_ratio.sum(-1) / mask.sum(-1))
        adv = adv[:, 0]  # outcome advantages: the same on every token of a row
    else:
        ratio = torch.exp(log_probs - mini["old_log_probs"])
    clipped = ratio.clamp(1 - cfg["clip_ratio_low"], 1 + cfg["clip_ratio_high"])
    pg = torch.maximum(-adv * ratio, -adv * clipped)
    pg_loss = pg.mean() if cfg.get("policy_loss") == "gspo" else _masked_agg(pg, mask, mode)
    loss = pg_loss - cfg["entropy_coeff"] * _masked_agg(entropy, mask, mode)
    if cfg.get("use_kl_loss"):
        kl = mini["ref_log_probs"] - log_probs  # low-variance KL (k3), clamped as in verl
        k3 = (torch.exp(kl) - kl - 1).clamp(-10, 10)
        loss = loss + cfg["kl_loss_coef"] * _masked_agg(k3, mask, mode)
    return loss, pg_loss, entropy


def plain_gradients(model: torch.nn.Module, mini: Batch, cfg: dict) -> dict[str, torch.Tensor]:
    """The gradient of one global mini-batch's loss, by parameter name."""
    model.zero_grad()
    plain_loss(model, mini, cfg)[0].backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def plain_update(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, cfg: dict, world_size: int = 2
) -> dict:
    """One ordinary update in one process: ppo_epochs x global mini-batches, each one loss over all its rows.

    Returns the mean pg loss over the mini-batches and the token-mean entropy of the training passes.
    """
    pg_losses, entropy_sum, tokens = [], 0.0, 0.0
    for _ in range(cfg["ppo_epochs"]):
        for mini in global_mini_batches(batch, world_size, cfg["ppo_mini_batch_size"]):
            mask = mini["response_mask"]
            loss, pg_loss, entropy = plain_loss(model, mini, cfg)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            optimizer.zero_grad()
            pg_losses.append(pg_loss.item())
            entropy_sum += (entropy.detach() * mask).sum().item()
            tokens += mask.sum().item()
    return {"pg_loss": sum(pg_losses) / len(pg_losses), "entropy": entropy_sum / tokens}


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def max_param_diff(actor_state: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    """Largest absolute difference between the actor's full weights and the plain model's (same HF names)."""
    reference = model.state_dict()
    assert actor_state.keys() == reference.keys()
    return max((actor_state[k] - reference[k]).abs().max().item() for k in actor_state)
