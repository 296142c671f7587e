"""The FSDP2 policy actor: log-probs, ordinary policy updates, shard-local SFPO updates, checkpoints.

`FSDPPolicy` is one rank of a sharded causal LM that only computes log-probs (the frozen reference policy uses
it as it is: no gradients, optimizer or schedule); `FSDPActor` adds the updates, with the policy loss chosen by
`actor.loss.policy_loss` from the registry in `sfpo_rl.algorithms.policy_loss`. Both are usable without Ray, vLLM
or Hydra inside any initialised torch.distributed process group (one object per rank, each called with its
own rows); their Ray shells are in `sfpo_rl.workers.actor_worker`. An update returns an `UpdateResult`.

Batches: every rank gets a contiguous chunk of the global batch (the worker group's DP_SPLIT). A mini-batch is
`ppo_mini_batch_size / world_size` consecutive rows of each rank's chunk, so global mini-batch j is the union of
the ranks' j-th local mini-batches (with `shuffle_mini_batches`, of their j-th local permuted mini-batches).

No wasted work: a micro-batch holds rows of similar length up to `actor.batching.max_tokens_per_micro_batch` tokens
(`sfpo_rl.algorithms.micro_batches`; `micro_batch_size_per_gpu` gives fixed-count micro-batches instead), a
padded forward cuts the columns that are padding in every row, a packed forward has no padding at all
(`sfpo_rl.algorithms.packing`), and gradients are reduce-scattered once per mini-batch, after its last
micro-batch (FSDP2's `set_requires_gradient_sync`).

Loss scale: the loss of a micro-batch is its share of the whole mini-batch loss (normalised by the mini-batch's
GLOBAL token or sequence count, summed over ranks with all_reduce) times world_size, because FSDP averages
gradients over ranks. So the accumulated gradient equals that of one full-mini-batch loss in one process,
whatever the micro-batches and however tokens fall across ranks.

SFPO: the slow copy is a snapshot of this rank's local shards only (optionally in host memory), the
fast trajectory runs the ordinary update loop K times in place, and the reposition is in place on the local
shards, so no full parameter is ever gathered and no second copy of the fast weights exists.

Non-finite numbers never reach the weights: an optimizer step whose loss or gradient norm is non-finite on any
rank is skipped (gradients dropped, parameters and Adam state untouched) and counted in
`UpdateResult.skipped_steps`. In SFPO a fast pass with a skipped step ends the fast trajectory: the slow copy is
restored and the slow pass runs from theta(s, 0), a plain update (`UpdateResult.sfpo.restored`). The trainer
counts such steps and stops a run that keeps producing them.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM

from sfpo_rl.algorithms.kl import kl_penalty
from sfpo_rl.algorithms.logprob import entropy_from_logits, log_probs_from_logits
from sfpo_rl.algorithms.micro_batches import (
    fixed_micro_batches,
    micro_batch_cost,
    plan_micro_batches,
    row_lengths,
)
from sfpo_rl.algorithms.packing import pack
from sfpo_rl.algorithms.policy_loss import LossInputs, get_policy_loss
from sfpo_rl.algorithms.sfpo import displacement_norm, reposition_, restore_, snapshot_
from sfpo_rl.protocol import Batch
from sfpo_rl.workers import checkpoint
from sfpo_rl.workers.actor_config import ActorConfig
from sfpo_rl.workers.fsdp_utils import (
    DTYPES,
    all_reduce_max,
    all_reduce_sum,
    attention_implementation,
    default_device,
    local_shards,
    shard_model,
)
from sfpo_rl.workers.lora import add_adapter, is_adapter_name, merge_lora, saved_name, write_adapter
from sfpo_rl.workers.optim import build_optimizer, build_scheduler
from sfpo_rl.workers.update_result import FastTrajectory, UpdateResult

__all__ = ["ActorConfig", "FSDPActor", "FSDPPolicy", "UpdateResult"]

logger = logging.getLogger(__name__)

FORWARD_KEYS = ("input_ids", "attention_mask", "responses")
UPDATE_KEYS = (*FORWARD_KEYS, "response_mask", "old_log_probs", "advantages")

# Per-pass sums reduced over ranks in one all_reduce: loss terms (already global-normalised partial sums),
# token-weighted sums of the loss function's token-mean diagnostics, and the token count that weights them.
_SUM_KEYS = ("pg_loss", "kl_loss", "entropy", "clipfrac", "approx_kl", "ratio_mean", "tokens")
# Attention implementations that run packed sequences without padding (transformers' varlen path).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


class PassResult(NamedTuple):
    """One ordinary update pass, reduced over ranks."""

    metrics: dict[str, float]
    skipped_steps: int
    entropy: float


class FSDPPolicy:
    """One rank of a sharded causal LM that computes log-probs. `trainable=False` (the reference policy) keeps
    no gradients; the actor subclass trains it. Every public method is collective: all ranks call it, each with
    its own rows. Uses `config`'s precision and log-prob micro-batch options."""

    def __init__(
        self, model_path: str | os.PathLike, config: ActorConfig | Mapping[str, Any], trainable: bool = False
    ):
        if not dist.is_initialized():
            raise RuntimeError(
                f"{type(self).__name__} needs an initialised torch.distributed process group "
                "(dist.init_process_group, or its worker inside a RayWorkerGroup)"
            )
        self.config = cfg = ActorConfig.from_any(config)
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise FileNotFoundError(
                f"{type(self).__name__} model path {self.model_path} is not an HF model directory (no config.json)"
            )
        self.device = default_device()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

        hf_config = AutoConfig.from_pretrained(self.model_path)
        self.export_dtype = getattr(hf_config, "dtype", None) or torch.float32
        self.tied_lm_head = bool(getattr(hf_config, "tie_word_embeddings", False))
        # The log-prob pass and the update pass must compute the same function (ratio = 1 at the start).
        for name, value in vars(hf_config).items():
            if "dropout" in name and isinstance(value, float):
                setattr(hf_config, name, 0.0)
        param_dtype = DTYPES["bfloat16" if self.device.type == "cuda" else "float32"]
        if cfg.param_dtype != "auto":
            param_dtype = DTYPES[cfg.param_dtype]
        self.param_dtype = param_dtype  # of the forward and backward; master weights stay float32
        attention = attention_implementation(self.device, param_dtype)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path,
            config=hf_config,
            dtype=torch.float32,
            **({"attn_implementation": attention} if attention else {}),
        )
        model.config.use_cache = False
        self.packed = cfg.batching.forward_layout == "packed" or (
            cfg.batching.forward_layout == "auto" and model.config._attn_implementation in VARLEN_ATTENTION
        )
        if not trainable:
            model.requires_grad_(False)
        elif cfg.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora = cfg.lora if trainable and cfg.lora.enabled else None
        if self.lora is not None:  # before sharding: FSDP2 then shards the frozen base and the adapter alike
            model = add_adapter(model, self.lora, seed=cfg.batching.seed)
        reduce_dtype = DTYPES[cfg.reduce_dtype]
        mp_policy = None
        if (param_dtype, reduce_dtype) != (torch.float32, torch.float32):
            mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
        shard_model(model, self.device, mp_policy)
        self.model = model
        self._warned_over_budget = False

    # ------------------------------------------------------------------ forward
    def _forward(
        self, micro: Batch, temperature: float, entropy_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies [b, R] of the response tokens under logits / temperature; 0 where the
        forward computed nothing (padding)."""
        logits, labels, unpack = (self._packed_logits if self.packed else self._padded_logits)(micro)
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        log_probs = log_probs_from_logits(logits, labels)
        if entropy_grad:
            entropy = entropy_from_logits(logits)
        else:
            with torch.no_grad():
                entropy = entropy_from_logits(logits.detach())
        return unpack(log_probs), unpack(entropy)

    def _padded_logits(self, micro: Batch) -> tuple[torch.Tensor, torch.Tensor, Callable]:
        """Logits [b, kept, V] predicting the first `kept` response columns, their labels, and how to pad a
        [b, kept] result back to [b, R].

        Columns that are padding in every row of the micro-batch are cut before the forward: leading prompt
        padding (real tokens never attend to it and positions come from position_ids) and trailing response
        padding (its outputs are masked everywhere).
        """
        input_ids, attention_mask, responses = (micro[k] for k in FORWARD_KEYS)
        position_ids = micro["position_ids"] if "position_ids" in micro else _position_ids(attention_mask)
        resp_len = responses.shape[1]
        prompt_len = input_ids.shape[1] - resp_len
        real = attention_mask.any(dim=0).nonzero().flatten()
        # Keep at least the last prompt column (it predicts the first response token) and one response column.
        start = min(int(real[0]), prompt_len - 1) if len(real) else prompt_len - 1
        end = max(int(real[-1]) + 1, prompt_len + 1) if len(real) else prompt_len + 1
        kept = end - prompt_len
        logits = self.model(
            input_ids=input_ids[:, start:end],
            attention_mask=attention_mask[:, start:end],
            position_ids=position_ids[:, start:end],
            use_cache=False,
            logits_to_keep=kept + 1,  # position t predicts token t + 1: prompt_len-1 .. end-2 are needed
        ).logits[:, :-1]
        return logits, responses[:, :kept], lambda x: F.pad(x, (0, resp_len - kept))

    def _packed_logits(self, micro: Batch) -> tuple[torch.Tensor, torch.Tensor, Callable]:
        """Logits [K, V] of a padding-free forward at the K positions that predict real response tokens, their
        labels, and how to scatter a [K] result back to [b, R]."""
        input_ids, attention_mask, responses = (micro[k] for k in FORWARD_KEYS)
        position_ids = micro["position_ids"] if "position_ids" in micro else _position_ids(attention_mask)
        layout = pack(input_ids, attention_mask, position_ids, responses.shape[1])
        logits = self.model(
            input_ids=layout.input_ids,
            position_ids=layout.position_ids,
            use_cache=False,
            logits_to_keep=layout.predict_index,
        ).logits[0]
        return logits, layout.labels, lambda x: layout.unpack(x, len(micro), responses.shape[1])

    def _dummy_forward(self) -> None:
        """A one-token forward that takes part in FSDP's collectives for a rank with fewer micro-batches."""
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    @staticmethod
    def _temperature(batch: Batch) -> float:
        temperature = float(batch.meta.get("temperature", 1.0))
        if not temperature > 0:
            raise ValueError(f"batch.meta['temperature'] must be > 0, got {temperature}")
        return temperature

    # ------------------------------------------------------------------ log-probs
    def _micro_batches(
        self, data: Batch, rows_per_micro_batch: int | None, same_count_on_all_ranks: bool
    ) -> list[torch.Tensor]:
        """Row indices of each micro-batch of this rank's `data`: fixed-count with `rows_per_micro_batch`, else
        by the token budget. `same_count_on_all_ranks` (collective) splits micro-batches until every rank has as
        many as the busiest one."""
        if rows_per_micro_batch is not None:
            groups = fixed_micro_batches(len(data), rows_per_micro_batch)
        else:
            lengths = row_lengths(data["attention_mask"], data["responses"].shape[1])
            budget = self.config.batching.max_tokens_per_micro_batch
            groups = plan_micro_batches(*lengths, budget, self.packed)
            if same_count_on_all_ranks:
                count = int(all_reduce_max(len(groups), self.device))
                if count > len(groups):
                    groups = plan_micro_batches(*lengths, budget, self.packed, min_count=count)
            over = [g for g in groups if len(g) == 1 and micro_batch_cost(*lengths, g, self.packed) > budget]
            if over and not self._warned_over_budget:
                self._warned_over_budget = True
                logger.warning(
                    "actor: a row of %d tokens exceeds actor.batching.max_tokens_per_micro_batch=%d; such rows run alone",
                    micro_batch_cost(*lengths, over[0], self.packed),
                    budget,
                )
        return [torch.tensor(g, dtype=torch.long) for g in groups]

    @torch.no_grad()
    def compute_log_prob(self, batch: Batch) -> Batch:
        """`old_log_probs` and `entropy` [B, R] of this rank's rows (0 where the forward computed nothing)."""
        temperature = self._temperature(batch)
        columns = [k for k in (*FORWARD_KEYS, "position_ids") if k in batch.tensors]
        data = batch.select(keys=columns, non_tensor_keys=[]).to(self.device)
        groups = self._micro_batches(
            data, self.config.batching.log_prob_micro_batch_size, same_count_on_all_ranks=False
        )
        # Every rank must run as many forwards as the busiest one (each forward all-gathers parameters).
        count = int(all_reduce_max(len(groups), self.device))
        self.model.eval()
        log_probs, entropies = [], []
        for i in range(count):
            if i < len(groups):
                lp, ent = self._forward(data[groups[i]], temperature, entropy_grad=False)
                log_probs.append(lp)
                entropies.append(ent)
            else:
                self._dummy_forward()
        # Without a backward the root module keeps its gathered parameters; free them (and never let a later
        # in-place change of the shards meet a stale gathered copy).
        self.model.reshard()
        if not groups:
            empty = torch.zeros(0, batch["responses"].shape[1])
            return Batch.from_dict({"old_log_probs": empty, "entropy": empty.clone()})
        # Back to the rows' own order (token-budget micro-batches group rows by length).
        order = torch.cat(groups).to(self.device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=self.device)
        return Batch.from_dict(
            {
                "old_log_probs": torch.cat(log_probs)[inverse].cpu(),
                "entropy": torch.cat(entropies)[inverse].cpu(),
            }
        )


class FSDPActor(FSDPPolicy):
    """One rank of the actor: the policy with its optimizer, LR schedule, updates and checkpoints."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        config: ActorConfig | Mapping[str, Any],
        total_steps: int | None = None,
    ):
        """`total_steps`: the run's training steps (trainer.total_steps), the length of the LR schedule; needed
        by a cosine schedule and by a warmup ratio."""
        super().__init__(model_path, config, trainable=True)
        cfg = self.config
        self.policy_loss = get_policy_loss(cfg.loss.policy_loss)
        # The loss options every micro-batch's LossInputs share.
        self.loss_inputs = functools.partial(
            LossInputs,
            clip_ratio_low=cfg.loss.clip_ratio_low,
            clip_ratio_high=cfg.loss.clip_ratio_high,
            clip_ratio_c=cfg.loss.clip_ratio_c,
            loss_agg_mode=cfg.loss.loss_agg_mode,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # Each rank's loss counts world_size times, because FSDP averages gradients over ranks.
        self.loss_scale = float(self.world_size)
        opt = cfg.optimizer
        if opt.needs_total_steps and total_steps is None:
            raise ValueError(
                f"{type(self).__name__}: actor.optimizer.lr_schedule={opt.lr_schedule} with warmup_ratio="
                f"{opt.warmup_ratio} needs total_steps (trainer.total_steps)"
            )
        self.optimizer = build_optimizer(
            self.model, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas, eps=opt.eps
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            schedule=opt.lr_schedule,
            warmup_steps=opt.resolved_warmup_steps(total_steps),
            total_steps=total_steps,
            min_lr_ratio=opt.min_lr_ratio,
        )

    @torch.no_grad()
    def compute_ref_log_prob(self, batch: Batch) -> Batch:
        """`ref_log_probs` [B, R] of this rank's rows under the base model: the LoRA actor with its adapter off
        (the reference policy of a KL term, with no second copy of the model)."""
        if self.lora is None:
            raise RuntimeError(
                "compute_ref_log_prob: the actor has no LoRA adapter to switch off (actor.lora.rank=0)"
            )
        with self.model.disable_adapter():
            out = self.compute_log_prob(batch)
        return Batch.from_dict({"ref_log_probs": out["old_log_probs"]})

    # ------------------------------------------------------------------ updates
    def update(self, batch: Batch) -> UpdateResult:
        """One ordinary policy update (ppo_epochs x mini-batches); the LR schedule advances once."""
        data = self._training_data(batch)
        return self._finish_step(self._policy_pass(data, pass_index=0, stage="update"), fast=None)

    def sfpo_update(self, batch: Batch, inner_steps: int, alpha: float) -> UpdateResult:
        """One SFPO step: K fast updates, reposition theta0 + alpha (thetaK - theta0), one slow update.

        The result is the slow pass's, with how the fast trajectory ended; its metrics add `sfpo/*` diagnostics. Adam moments carry through all K + 1 passes;
        the LR schedule advances once for the whole step. A fast pass with a non-finite step (or fast weights that
        went non-finite) discards the fast trajectory: the slow copy is restored before the slow pass.
        """
        if not (isinstance(inner_steps, int) and inner_steps >= 1):
            raise ValueError(f"sfpo_update: inner_steps must be an integer >= 1, got {inner_steps!r}")
        data = self._training_data(batch)
        shards = local_shards(self.params)
        slow_device = torch.device("cpu") if self.config.sfpo_slow_copy_device == "cpu" else None
        slow = snapshot_(shards, device=slow_device)
        # The slow copy's size on the rank that holds the most (with LoRA, of the adapter's shards only).
        sfpo: dict[str, float] = {
            "sfpo/slow_copy_bytes": all_reduce_max(sum(s.nbytes for s in slow), self.device)
        }
        fast_skipped = 0
        for k in range(inner_steps):
            fast = self._policy_pass(data, pass_index=k, stage=f"fast{k}")
            sfpo[f"sfpo/fast_loss_k{k}"] = fast.metrics["actor/pg_loss"]
            fast_skipped += fast.skipped_steps
            if fast.skipped_steps:  # the same on every rank (the checks are global)
                break
        displacement = self._global_norm(displacement_norm(shards, slow))
        fast_failed = fast_skipped > 0 or not math.isfinite(displacement)
        if fast_failed:
            logger.warning("actor: SFPO fast trajectory went non-finite; slow weights restored")
            restore_(shards, slow)
        else:
            reposition_(shards, slow, float(alpha))
        sfpo["sfpo/fast_skipped_steps"] = float(fast_skipped)
        sfpo["sfpo/fast_displacement_norm"] = displacement
        sfpo["sfpo/fast_restored"] = float(fast_failed)
        sfpo["sfpo/reposition_norm"] = self._global_norm(displacement_norm(shards, slow))
        del slow  # the slow pass runs without the snapshot
        slow_pass = self._policy_pass(data, pass_index=inner_steps, stage="slow")
        sfpo["sfpo/slow_loss"] = slow_pass.metrics["actor/pg_loss"]
        slow_pass.metrics.update(sfpo)
        return self._finish_step(
            slow_pass, fast=FastTrajectory(skipped_steps=fast_skipped, restored=fast_failed)
        )

    def _global_norm(self, local_norm: torch.Tensor | float) -> float:
        """The norm over all ranks' shards from each rank's local norm (sum of squares, then sqrt)."""
        squared = torch.as_tensor(local_norm, dtype=torch.float64, device=self.device).reshape(1) ** 2
        return math.sqrt(all_reduce_sum(squared).item())

    def _finish_step(self, last: PassResult, fast: FastTrajectory | None) -> UpdateResult:
        """The step's result (from its last pass) with the LR it used; then advance the schedule (once per
        training step)."""
        last.metrics["actor/lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return UpdateResult(
            skipped_steps=last.skipped_steps, entropy=last.entropy, sfpo=fast, metrics=last.metrics
        )

    def _training_data(self, batch: Batch) -> Batch:
        """The update's columns on the device, after checking every rank holds the same whole number of local
        mini-batches (ranks must run the same number of forward/backward passes)."""
        keys = [*UPDATE_KEYS, *(("ref_log_probs",) if self.config.loss.use_kl_loss else ())]
        missing = [k for k in keys if k not in batch.tensors]
        if missing:
            raise KeyError(f"actor update: batch lacks {missing}; it has {sorted(batch.keys())}")
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(batch)], device=self.device))
        sizes = [int(s.item()) for s in sizes]
        local_mini = self.config.batching.ppo_mini_batch_size // self.world_size
        if len(set(sizes)) != 1 or sizes[0] == 0 or sizes[0] % local_mini:
            raise ValueError(
                f"actor update: the batch ({sum(sizes)} rows, {sizes} per rank) must split into whole "
                f"mini-batches of actor.batching.ppo_mini_batch_size={self.config.batching.ppo_mini_batch_size} rows, equally "
                f"over {self.world_size} ranks (a multiple of {self.config.batching.ppo_mini_batch_size} rows)"
            )
        columns = [*keys, *(("position_ids",) if "position_ids" in batch.tensors else ())]
        return batch.select(keys=columns, non_tensor_keys=[]).to(self.device)

    def _row_order(self, n_rows: int, pass_index: int, epoch: int) -> torch.Tensor | None:
        """Row permutation of one epoch (None: in order). Seeded by (seed, training step, pass, epoch), so a
        resumed run shuffles as the original would have."""
        if not self.config.batching.shuffle_mini_batches:
            return None
        step = self.scheduler.last_epoch
        # hash() of a tuple of ints is the same in every process (only str/bytes hashing is salted).
        generator = torch.Generator().manual_seed(
            hash((self.config.batching.seed, step, pass_index, epoch)) & (2**63 - 1)
        )
        return torch.randperm(n_rows, generator=generator)

    def _policy_pass(self, data: Batch, pass_index: int, stage: str) -> PassResult:
        """One ordinary update: ppo_epochs x (mini-batches, each one optimizer step), reduced over ranks. `stage`
        (update, fast<k>, slow) names the pass for fault injection (sfpo_rl.workers.faults)."""
        cfg = self.config
        temperature = self._temperature(data)
        local_mini = cfg.batching.ppo_mini_batch_size // self.world_size
        sums = torch.zeros(len(_SUM_KEYS), dtype=torch.float64, device=self.device)
        ratio_max = torch.full((1,), -math.inf, dtype=torch.float64, device=self.device)
        grad_norms: list[float] = []
        skipped = 0
        self.model.train()
        for epoch in range(cfg.batching.ppo_epochs):
            order = self._row_order(len(data), pass_index, epoch)
            for first in range(0, len(data), local_mini):
                rows = (
                    slice(first, first + local_mini) if order is None else order[first : first + local_mini]
                )
                grad_norm = self._optimizer_step(data[rows], temperature, sums, ratio_max)
                grad_norms.append(grad_norm)
                skipped += not math.isfinite(grad_norm)
        sums = all_reduce_sum(sums)
        dist.all_reduce(ratio_max, op=dist.ReduceOp.MAX)
        total = dict(zip(_SUM_KEYS, sums.tolist()))
        n_steps = len(grad_norms)
        tokens = max(total["tokens"], 1.0)
        finite_norms = [g for g in grad_norms if math.isfinite(g)]
        entropy = total["entropy"] / tokens
        metrics = {
            "actor/pg_loss": total["pg_loss"] / n_steps,
            "actor/entropy": entropy,
            "actor/clipfrac": total["clipfrac"] / tokens,
            "actor/approx_kl": total["approx_kl"] / tokens,
            "actor/ratio_mean": total["ratio_mean"] / tokens,
            "actor/ratio_max": ratio_max.item(),
            "actor/grad_norm": sum(finite_norms) / len(finite_norms) if finite_norms else math.nan,
            "actor/n_optimizer_steps": float(n_steps - skipped),
            "actor/skipped_steps": float(skipped),
        }
        if cfg.loss.use_kl_loss:
            metrics["actor/kl_loss"] = total["kl_loss"] / n_steps
        return PassResult(metrics, skipped, entropy)

    def _optimizer_step(
        self, mini: Batch, temperature: float, sums: torch.Tensor, ratio_max: torch.Tensor
    ) -> float:
        """Accumulate the mini-batch's gradient, clip, step. Returns the global grad norm, NaN when the loss was
        non-finite on any rank; a non-finite result skips the step (gradients dropped, parameters and Adam
        state untouched)."""
        cfg = self.config
        nonfinite_loss = self._backward_mini_batch(mini, temperature, sums, ratio_max)
        max_norm = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm.item())
        dist.all_reduce(nonfinite_loss, op=dist.ReduceOp.MAX)
        if nonfinite_loss.item():
            grad_norm = math.nan
        if math.isfinite(grad_norm):
            self.optimizer.step()
        else:
            logger.warning("actor: non-finite loss or gradient norm; optimizer step skipped")
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _backward_mini_batch(
        self, mini: Batch, temperature: float, sums: torch.Tensor, ratio_max: torch.Tensor
    ) -> torch.Tensor:
        """Backward of the mini-batch's loss, micro-batch by micro-batch, leaving its gradient (reduced over
        ranks) in the parameters' .grad; adds the metric terms to `sums` and `ratio_max`. Returns 1 where this
        rank's loss was non-finite, else 0. Collective."""
        cfg, loss_cfg = self.config, self.config.loss
        nonfinite_loss = torch.zeros(1, dtype=torch.float64, device=self.device)
        counts = all_reduce_sum(
            torch.stack(
                [
                    mini["response_mask"].sum().double(),
                    torch.tensor(float(len(mini)), dtype=torch.float64, device=self.device),
                ]
            )
        )
        num_tokens, num_seqs = counts.tolist()
        groups = self._micro_batches(
            mini, cfg.batching.micro_batch_size_per_gpu, same_count_on_all_ranks=True
        )
        for i, rows in enumerate(groups):
            micro = mini[rows]
            # Reduce-scatter only after the mini-batch's last micro-batch; until then gradients accumulate
            # unsharded on each rank.
            self.model.set_requires_gradient_sync(
                cfg.batching.sync_grads_every_micro_batch or i == len(groups) - 1
            )
            mask = micro["response_mask"]
            log_prob, entropy = self._forward(micro, temperature, entropy_grad=loss_cfg.entropy_coeff != 0)
            inputs = self.loss_inputs(
                log_prob,
                micro["old_log_probs"],
                micro["advantages"],
                mask,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
            )
            pg_loss, pg_metrics = self.policy_loss(inputs)
            loss = pg_loss
            if loss_cfg.entropy_coeff != 0:
                loss = loss - loss_cfg.entropy_coeff * inputs.aggregate(entropy)
            kl_loss = torch.zeros((), device=self.device)
            if loss_cfg.use_kl_loss:
                kl = kl_penalty(log_prob, micro["ref_log_probs"], loss_cfg.kl_loss_type)
                kl_loss = inputs.aggregate(kl)
                loss = loss + loss_cfg.kl_loss_coef * kl_loss
            scaled = loss * self.loss_scale
            nonfinite_loss += (~torch.isfinite(scaled.detach())).double()
            scaled.backward()

            micro_tokens = mask.sum()
            with torch.no_grad():
                terms = [
                    pg_loss,
                    kl_loss,
                    (entropy * mask).sum(),
                    pg_metrics["clipfrac"] * micro_tokens,
                    pg_metrics["approx_kl"] * micro_tokens,
                    pg_metrics["ratio_mean"] * micro_tokens,
                    micro_tokens,
                ]
                sums += torch.stack([t.detach().double() for t in terms])
                torch.maximum(ratio_max, pg_metrics["ratio_max"].double().reshape(1), out=ratio_max)
        return nonfinite_loss

    # ------------------------------------------------------------------ weights and checkpoints
    def state_dict_for_rollout(self) -> dict[str, torch.Tensor] | None:
        """Full float32 weights with HF names in CPU memory on rank 0 (a LoRA adapter merged in), None on the
        others. Collective."""
        state = checkpoint.full_state_dict(self.model)
        if self.rank != 0:
            return None
        return merge_lora(state, self.lora.scaling) if self.lora is not None else state

    def adapter_state(self) -> dict[str, torch.Tensor] | None:
        """The LoRA adapter's full tensors with PEFT's saved names in CPU memory on rank 0, None on the others.
        Collective."""
        state = checkpoint.full_state_dict(self.model, trainable_only=True)
        return {saved_name(k): v for k, v in state.items() if is_adapter_name(k)} if self.rank == 0 else None

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        checkpoint.save_checkpoint(
            path, self.model, self.optimizer, self.scheduler, self.device, lora_rank=self._lora_rank
        )

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        return checkpoint.load_checkpoint(
            path, self.model, self.optimizer, self.scheduler, self.device, lora_rank=self._lora_rank
        )

    @property
    def _lora_rank(self) -> int:
        return 0 if self.lora is None else self.lora.rank

    def export_hf(self, path: str | os.PathLike, adapter_path: str | os.PathLike | None = None) -> None:
        """An HF model directory at `path` (with LoRA, the adapter merged in) and, with LoRA and `adapter_path`,
        the PEFT adapter directory there. Collective."""
        state = self.state_dict_for_rollout()
        checkpoint.export_hf(path, state, self.model_path, self.tied_lm_head, self.export_dtype, self.device)
        if self.lora is not None and adapter_path is not None:
            adapter = self.adapter_state()
            checkpoint.agree(
                lambda: (
                    self.rank != 0 or write_adapter(adapter_path, adapter, self.lora, str(self.model_path))
                ),
                f"exporting the LoRA adapter to {adapter_path}",
                self.device,
            )


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
