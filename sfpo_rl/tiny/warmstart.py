"""The embedded default's starting policy: a tiny Qwen2 given a supervised warm-start on the built-in task.

`ensure_warmstart(cache_dir, cfg)` returns an HF model directory (loadable by transformers and vLLM) that also
holds the task's data files, `train.jsonl` and `val.jsonl` (the loader's format), and `warmstart.json`
(config, cache key, SFT metrics). A directory is reused when its key matches: the key hashes the config, the
source of the code that builds it and the torch / transformers versions. It is made in a temporary directory
and renamed into place, so an interrupted or concurrent build never leaves a half-written model behind. The
default config's warm-start is not built but copied from the package (`sfpo_rl/tiny/shipped.py`), so every
machine starts from the same weights.

The demonstrations are deliberately careless (see `WarmStartConfig`): the policy solves some but far from all
validation problems while it could solve almost all, so RL has both a signal and room to improve.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sfpo_rl.data import arith
from sfpo_rl.data.dataset import format_prompt, load_records
from sfpo_rl.tiny import model as tiny_model
from sfpo_rl.utils.console import say
from sfpo_rl.utils.options import options_from_any

INFO_FILE = "warmstart.json"


@dataclass(frozen=True)
class WarmStartConfig:
    """Options of the built-in model and its warm-start (`model.warmstart.*`).

    The policy should be able to do more than it does, so that RL has a behaviour to find rather than only
    arithmetic to learn: the SFT is long enough for the tiny model to do the task's arithmetic reliably, but
    most of its demonstrations are careless (they stop one step early and box the value before the last
    operation). The warm-started policy therefore usually stops early, sometimes finishes, and is right when
    it finishes: groups of 8 samples hold both outcomes, and the complete procedure is there to be reinforced.
    What it measures, and how that was chosen, is in the README ("What `make train` does").
    """

    seed: int = 0
    # Task data: the levels problems are drawn from (repeat one to weight it) and the split sizes.
    levels: tuple[int, ...] = arith.DEFAULT_LEVELS
    num_train: int = 20000
    # Enough distinct problems that one avg@4 validation has a standard error of about a point.
    num_val: int = 1024
    # Must equal the trainer's data.prompt_template: the SFT conditions on exactly the policy's prompt text.
    prompt_template: str | None = None
    # Tokenizer and model.
    vocab_size: int = 384
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 256
    # SFT: AdamW, linear warm-up then cosine decay to 10%, on reference solutions sampled without replacement.
    sft_steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Fraction of SFT demonstrations that stop one step early (a careless solver): the warm-started policy
    # can do the whole procedure but often skips its last step, a behaviour RL can find and correct.
    careless_fraction: float = 0.7
    # Part of the result (CPU kernels' summation order depends on it). One thread: on a busy 2-core machine two
    # threads were many times slower than one (OpenMP threads waiting on each other).
    num_threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, only changes the cache key

    @classmethod
    def from_any(cls, cfg: WarmStartConfig | Mapping[str, Any] | None) -> WarmStartConfig:
        return options_from_any(cls, cfg, "warmstart")

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))  # a list from a config file hashes the same


def cache_key(cfg: WarmStartConfig) -> str:
    """Hash of the config, the building code and the library versions that affect the numbers."""
    import transformers

    from sfpo_rl.data import dataset, io

    digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    for path in (arith.__file__, dataset.__file__, io.__file__, tiny_model.__file__, __file__):
        digest.update(code_fingerprint(Path(path).read_text()).encode())
    digest.update(f"torch={torch.__version__} transformers={transformers.__version__}".encode())
    return digest.hexdigest()[:16]


def code_fingerprint(source: str) -> str:
    """The code of a module without its comments and docstrings: editing those does not force a rebuild."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:]
    return ast.dump(tree)


def ensure_warmstart(cache_dir: str | Path, cfg: WarmStartConfig | Mapping[str, Any] | None = None) -> Path:
    """The cached warm-started model directory for `cfg`, made first when there is none: a copy of the shipped
    warm-start when `cfg` is the config it was built from (the default), else built here."""
    cfg = WarmStartConfig.from_any(cfg)
    cache_dir = Path(cache_dir)
    key = cache_key(cfg)
    target = cache_dir / f"warmstart-{key}"
    if (target / INFO_FILE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".warmstart-{key}-", dir=cache_dir))
    try:
        from sfpo_rl.tiny import shipped

        if not (shipped.serves(cfg) and shipped.install(tmp, cfg)):
            build_warmstart(tmp, cfg, key)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / INFO_FILE).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_warmstart(out_dir: Path, cfg: WarmStartConfig, key: str = "") -> dict[str, Any]:
    """Write data, tokenizer, and the SFT-trained model into `out_dir`; returns the SFT metrics."""
    train_file, val_file = arith.write_arith_dataset(
        out_dir, cfg.num_train, cfg.num_val, cfg.seed, cfg.levels
    )
    train_records = load_records(train_file)
    tokenizer = tiny_model.build_tokenizer(
        [r.prompt + r.extra_info["solution"] for r in train_records], vocab_size=cfg.vocab_size
    )
    model = tiny_model.build_model(
        tokenizer,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        seed=cfg.seed,
    )
    rng = random.Random(f"careless-{cfg.seed}")
    pairs = [
        (r.prompt, careless_solution(s) if rng.random() < cfg.careless_fraction else s)
        for r in train_records
        for s in [r.extra_info["solution"]]
    ]
    examples = sft_examples(pairs, tokenizer, cfg.prompt_template)
    metrics = train_sft(model, examples, tokenizer.pad_token_id, cfg)
    tiny_model.save_pretrained(model, tokenizer, out_dir)
    info = {
        "key": key,
        "config": dataclasses.asdict(cfg),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "sft": metrics,
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    return metrics


def careless_solution(solution: str) -> str:
    """The worked solution with its last step left out, boxing the value before the last operation:
    "12+5=17. 17-7=10. \\boxed{10}" -> "12+5=17. \\boxed{17}"; "12+5=17. \\boxed{17}" -> "\\boxed{12}"."""
    *steps, _ = solution.split(" ")
    before_last = re.match(r"\d+", steps[-1]).group()
    return " ".join([*steps[:-1], f"\\boxed{{{before_last}}}"])


def sft_examples(
    pairs: Sequence[tuple[str, str]], tokenizer: Any, prompt_template: str | None
) -> list[tuple[list[int], int]]:
    """(token ids of formatted prompt + solution + eos, prompt length): prompt and solution are tokenized
    separately, as the policy sees them (prompt ids from the loader, response ids from the sampler)."""
    prompts = [format_prompt(p, tokenizer, prompt_template) for p, _ in pairs]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    solution_ids = tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + s + [eos], len(p)) for p, s in zip(prompt_ids, solution_ids)]


def train_sft(
    model: torch.nn.Module, examples: Sequence[tuple[list[int], int]], pad_id: int, cfg: WarmStartConfig
) -> dict[str, Any]:
    """Plain single-process SFT: mean cross-entropy over solution tokens (and eos), deterministic for a seed."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )

    def lr_factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.sft_steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order: list[int] = []
    losses = []
    start = time.perf_counter()
    model.train()
    try:
        for step in range(1, cfg.sft_steps + 1):
            if len(order) < cfg.batch_size:
                order += rng.sample(range(len(examples)), len(examples))
            batch = [examples[i] for i in order[: cfg.batch_size]]
            del order[: cfg.batch_size]
            input_ids, attention_mask, labels = _collate(batch, pad_id)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if step % max(1, cfg.sft_steps // 10) == 0:  # a few minutes of work: show it moving
                say(
                    f"warm-start SFT step {step}/{cfg.sft_steps}: loss {loss.item():.3f} "
                    f"({time.perf_counter() - start:.0f} s)",
                )
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": cfg.sft_steps,
        "seconds": round(time.perf_counter() - start, 1),
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(tail) / len(tail), 4),  # mean over the last 10% of steps
    }


def _collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return input_ids, attention_mask, labels


def sample_accuracy(model_dir: str | Path, data_file: str | Path, **sampling: Any) -> dict[str, float]:
    """Accuracy of transformers generation on `data_file` (temperature 0: greedy), overall and per level, and
    how often the policy finishes (works as many steps as the problem has) and is right when it does.
    `sampling`: the options of `sampled_outcomes`."""
    responses, accs, levels = sampled_outcomes(model_dir, data_file, **sampling)
    return {**accuracy_by_level(accs, levels), **finishing(responses, levels, accs)}


@torch.no_grad()
def sampled_outcomes(
    model_dir: str | Path,
    data_file: str | Path,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    num_samples: int = 1,
    seed: int = 0,
    prompt_template: str | None = None,
    batch_size: int = 256,
) -> tuple[list[str], list[float], list[Any]]:
    """Per sample, in the file's order (`num_samples` per problem): the response, its accuracy and the
    problem's level."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sfpo_rl.rewards import score_responses

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    records = load_records(data_file)
    torch.manual_seed(seed)
    responses = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        texts = [format_prompt(r.prompt, tokenizer, prompt_template) for r in chunk]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        out = model.generate(
            **enc,
            **(sampling if temperature > 0 else {"do_sample": False}),
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        responses += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    repeated = [r for r in records for _ in range(num_samples)]
    outcomes = score_responses(
        responses,
        [r.ground_truth for r in repeated],
        [r.data_source for r in repeated],
        config={"timeout_mode": "signal"},
    )
    return responses, [float(o.acc) for o in outcomes], [r.extra_info.get("level") for r in repeated]


def accuracy_by_level(accs: Sequence[float], levels: Sequence[Any]) -> dict[str, float]:
    result = {"acc": sum(accs) / len(accs)}
    for level in sorted(set(levels) - {None}):
        picked = [a for a, lv in zip(accs, levels) if lv == level]
        result[f"acc_level{level}"] = sum(picked) / len(picked)
    return result


def finishing(responses: Sequence[str], levels: Sequence[int], accs: Sequence[float]) -> dict[str, float]:
    """The share of responses that work all of the problem's steps (one "=" per step) and their accuracy:
    what the policy could reach if it never stopped early."""
    finished = [a for r, lv, a in zip(responses, levels, accs) if r.count("=") >= lv]
    return {
        "finished": len(finished) / len(responses),
        "acc_if_finished": sum(finished) / len(finished) if finished else 0.0,
    }
