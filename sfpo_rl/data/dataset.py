"""Prompt datasets: validated records, formatted with the chat template (or a plain template) and tokenized.

A record has `prompt` (text, or a list of chat messages {role, content}), `ground_truth` (text; numbers are
converted), `data_source` (selects the verifier) and optional `extra_info` (a mapping). verl-style files that
keep the answer in `reward_model.ground_truth` are accepted too. Every row is checked when the files are
loaded, so a run stops before any worker starts, naming the file, row and field: the ground truth must not be
empty and, unless `reward.custom_function` scores every sample, the data source must have a verifier and
the ground truth must be one that verifier can read (a number for gsm8k, an integer for arith).

Prompts are tokenized here, once: each item carries `raw_prompt` (the formatted text) and `prompt_token_ids`
(unpadded ids, no special tokens added beyond the template's own), which the rollout uses as they are, so the
length filter and the policy see exactly the same tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfpo_rl.data.io import DataError, read_rows
from sfpo_rl.rewards import VerifierError, ground_truth_problem, verifier_name
from sfpo_rl.utils.options import ConfigError, require

logger = logging.getLogger(__name__)

OVERLONG_MODES = ("filter", "truncate", "error")  # truncate keeps the last tokens (the question's end)
PROMPT_PLACEHOLDER = "{prompt}"


def check_prompt_options(overlong: str, prompt_template: str | None) -> None:
    """The rules of `data.overlong_prompts` and `data.prompt_template` (the run config applies them too)."""
    require(
        overlong in OVERLONG_MODES, "data.overlong_prompts", f"one of {', '.join(OVERLONG_MODES)}", overlong
    )
    if prompt_template is not None and PROMPT_PLACEHOLDER not in prompt_template:
        raise ConfigError(f"data.prompt_template must contain {PROMPT_PLACEHOLDER}, got {prompt_template!r}")


@dataclass(frozen=True)
class PromptRecord:
    prompt: str | list[dict[str, str]]
    ground_truth: str
    data_source: str
    extra_info: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # "file, line N": for messages about this record


def parse_record(row: dict[str, Any], where: str, reward_function: str | None = None) -> PromptRecord:
    """Validate one row; `where` ("file, line N") prefixes every error. With `reward_function` (the
    reward.custom_function that will score it) any data source is accepted."""
    prompt = _field(row, "prompt", where)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where}: field 'prompt' is empty")
    elif isinstance(prompt, list) and prompt:
        for i, message in enumerate(prompt):
            if not isinstance(message, dict):
                raise DataError(
                    f"{where}: field 'prompt[{i}]' must be a message {{role, content}}, got {message!r}"
                )
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    raise DataError(
                        f"{where}: field 'prompt[{i}].{key}' must be a string, got {message.get(key)!r}"
                    )
    else:
        raise DataError(
            f"{where}: field 'prompt' must be a non-empty string or list of chat messages, got {prompt!r}"
        )

    # verl-style rows keep it in reward_model; a parquet file mixing both styles has nulls in either column.
    if row.get("ground_truth") is None and isinstance(row.get("reward_model"), dict):
        gt_field = "reward_model.ground_truth"
        ground_truth = _field(row["reward_model"], "ground_truth", where, prefix="reward_model.")
    else:
        gt_field = "ground_truth"
        ground_truth = _field(row, "ground_truth", where)
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, str | int | float):
        raise DataError(f"{where}: field '{gt_field}' must be a string or number, got {ground_truth!r}")
    if not str(ground_truth).strip():
        raise DataError(f"{where}: field '{gt_field}' is empty; every row needs the answer to check against")

    data_source = _field(row, "data_source", where)
    if not isinstance(data_source, str) or not data_source.strip():
        raise DataError(f"{where}: field 'data_source' must be a non-empty string, got {data_source!r}")
    if reward_function is None:
        _check_verifiable(str(ground_truth), data_source, gt_field, where)

    extra_info = row.get("extra_info")
    if extra_info is not None and not isinstance(extra_info, dict):
        raise DataError(f"{where}: field 'extra_info' must be a mapping or null, got {extra_info!r}")
    return PromptRecord(prompt, str(ground_truth), data_source, dict(extra_info or {}), where)


def _check_verifiable(ground_truth: str, data_source: str, gt_field: str, where: str) -> None:
    try:
        problem = ground_truth_problem(data_source, ground_truth)
    except VerifierError as exc:
        raise DataError(f"{where}: field 'data_source': {exc}") from None
    if problem is not None:
        raise DataError(
            f"{where}: field '{gt_field}' {problem}, so the {verifier_name(data_source)} verifier that "
            f"data_source '{data_source}' selects cannot score against it: {ground_truth[:80]!r}"
        )


def _field(row: dict[str, Any], name: str, where: str, prefix: str = "") -> Any:
    if name not in row or row[name] is None:
        raise DataError(f"{where}: missing field '{prefix}{name}' (fields present: {', '.join(sorted(row))})")
    return row[name]


def load_records(
    files: str | Path | Sequence[str | Path], reward_function: str | None = None
) -> list[PromptRecord]:
    paths = [files] if isinstance(files, str | Path) else list(files)
    if not paths:
        raise DataError("no data files given")
    records = []
    for path in paths:
        rows = read_rows(path)
        if not rows:
            raise DataError(f"{path}: contains no records")
        records.extend(parse_record(row, f"{path}, {where}", reward_function) for where, row in rows)
    return records


def format_prompt(prompt: str | list[dict[str, str]], tokenizer: Any, template: str | None = None) -> str:
    """The text the policy is conditioned on.

    With `template` ("...{prompt}..."), the message contents (joined by blank lines) replace the placeholder;
    otherwise the tokenizer's chat template is applied with a generation prompt when it has one, else the
    contents are used as they are. Pass template="{prompt}" to bypass a chat template.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if template is not None:
        return template.replace(PROMPT_PLACEHOLDER, "\n\n".join(m["content"] for m in messages))
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages)


class PromptDataset:
    """Formatted, tokenized prompts; over-long prompts are filtered (counted), left-truncated (counted), or an
    error. Option names in messages are the trainer's: `rollout.max_prompt_length`, `data.overlong_prompts`,
    `data.prompt_template`. `reward_function` is reward.custom_function (then any data source is accepted)."""

    def __init__(
        self,
        files: str | Path | Sequence[str | Path],
        tokenizer: Any,
        *,
        max_prompt_length: int = 512,
        overlong: str = "filter",
        prompt_template: str | None = None,
        reward_function: str | None = None,
    ):
        check_prompt_options(overlong, prompt_template)
        if (
            isinstance(max_prompt_length, bool)
            or not isinstance(max_prompt_length, int)
            or max_prompt_length < 1
        ):
            raise ValueError(f"rollout.max_prompt_length must be an integer >= 1, got {max_prompt_length!r}")
        self.files = [str(files)] if isinstance(files, str | Path) else [str(f) for f in files]
        records = load_records(files, reward_function)
        texts = [format_prompt(r.prompt, tokenizer, prompt_template) for r in records]
        token_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]

        self.items: list[dict[str, Any]] = []
        self.num_filtered = 0
        self.num_truncated = 0
        for record, text, ids in zip(records, texts, token_ids):
            if len(ids) > max_prompt_length:
                if overlong == "error":
                    raise DataError(
                        f"{record.where}: prompt has {len(ids)} tokens > rollout.max_prompt_length="
                        f"{max_prompt_length}; raise the limit or set data.overlong_prompts=filter"
                    )
                if overlong == "filter":
                    self.num_filtered += 1
                    continue
                ids = ids[-max_prompt_length:]
                text = tokenizer.decode(ids, skip_special_tokens=False)
                self.num_truncated += 1
            self.items.append(
                {
                    "raw_prompt": text,
                    "prompt_token_ids": list(ids),
                    "ground_truth": record.ground_truth,
                    "data_source": record.data_source,
                    "extra_info": record.extra_info,
                }
            )
        if self.num_filtered or self.num_truncated:
            logger.warning(
                "%s: %d prompts longer than %d tokens were %s",
                ", ".join(self.files),
                self.num_filtered or self.num_truncated,
                max_prompt_length,
                "filtered out" if self.num_filtered else "left-truncated",
            )
        if not self.items:
            raise DataError(
                f"{', '.join(self.files)}: all {len(records)} prompts are longer than "
                f"rollout.max_prompt_length={max_prompt_length}"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]
