"""Batch scoring for the reward worker: verifiers chosen per sample, time-limited, failures counted.

`RewardScorer.score` (or the one-shot `score_responses`) turns decoded responses into per-sample scores and
accuracies; `token_level_scores` puts each score on the last response token, the layout the advantage
estimators read.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sfpo_rl.rewards import verifiers  # noqa: F401  (registers the built-in verifiers)
from sfpo_rl.rewards.registry import (
    Verifier,
    VerifierError,
    check_signature,
    load_custom_verifier,
    registered_verifiers,
    takes_data_source,
    verifier_name,
)
from sfpo_rl.rewards.shaping import OverlongBufferConfig
from sfpo_rl.rewards.verifier_pool import (
    ERROR,
    TIMEOUT,
    Outcome,
    Task,
    VerifierPool,
    score_with_timeout,
    signal_timeout_available,
)
from sfpo_rl.utils.options import is_int, is_number, options_from_any, require

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

TIMEOUT_MODES = ("process", "signal")


@dataclass
class RewardConfig:
    """Options of the `reward` config group; bad values raise VerifierError (a ValueError) naming
    `reward.<option>`."""

    # "package.module:function" or "path/to/file.py:function": scores every sample instead of the registry.
    custom_function: str | None = None
    custom_kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for it
    # Extra keyword arguments per built-in verifier, e.g. {"math": {"format_score": 0.0}} for plain 0/1
    # instead of the paper's 1.0 / 0.1 (boxed but wrong) / 0.0 (no boxed answer).
    verifier_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeout_s: float = 10.0  # per verification
    # process: persistent child processes, a hung one is killed (stops anything);
    # signal: SIGALRM in this process (no extra process; main thread only; cannot stop a hang inside C code).
    timeout_mode: str = "process"
    num_processes: int = 1  # process mode: verifier children per reward worker, scoring in parallel
    # DAPO's soft overlong penalty, added by the trainer where scores become token-level rewards.
    overlong_buffer: OverlongBufferConfig = field(default_factory=OverlongBufferConfig)

    def __post_init__(self) -> None:
        check = functools.partial(require, error=VerifierError)
        timeout = self.timeout_s
        check(is_number(timeout) and timeout > 0, "reward.timeout_s", "a number > 0", timeout)
        check(
            self.timeout_mode in TIMEOUT_MODES,
            "reward.timeout_mode",
            f"one of {', '.join(TIMEOUT_MODES)}",
            self.timeout_mode,
        )
        n = self.num_processes
        check(is_int(n) and n >= 1, "reward.num_processes", "an integer >= 1", n)
        custom = self.custom_function
        check(custom is None or isinstance(custom, str), "reward.custom_function", "a string", custom)
        for option in ("custom_kwargs", "verifier_kwargs"):
            value = getattr(self, option)
            check(isinstance(value, Mapping), f"reward.{option}", "a mapping", value)
        for name, options in self.verifier_kwargs.items():
            check(isinstance(options, Mapping), f"reward.verifier_kwargs.{name}", "a mapping", options)
        if isinstance(self.overlong_buffer, Mapping):  # built from a plain mapping
            self.overlong_buffer = options_from_any(
                OverlongBufferConfig, self.overlong_buffer, "reward.overlong_buffer", VerifierError
            )
        self.custom_kwargs = dict(self.custom_kwargs)
        self.verifier_kwargs = {k: dict(v) for k, v in self.verifier_kwargs.items()}

    @classmethod
    def from_any(cls, config: RewardConfig | Mapping[str, Any] | Any | None) -> RewardConfig:
        """A `RewardConfig` from itself, None (defaults), a mapping or an OmegaConf node."""
        return options_from_any(cls, config, "reward", VerifierError)


class VerifierResolver:
    """data_source -> (verifier, keyword options); custom function and options are checked on construction."""

    def __init__(self, config: RewardConfig):
        self.config = config
        self._custom: Verifier | None = None
        if config.custom_function:
            self._custom = load_custom_verifier(config.custom_function)
            check_signature(
                self._custom, config.custom_kwargs, f"reward.custom_function='{config.custom_function}'"
            )
        known = registered_verifiers()
        for name, options in config.verifier_kwargs.items():
            if name not in known:
                raise VerifierError(
                    f"reward.verifier_kwargs.{name}: no verifier named '{name}'; known: {', '.join(sorted(known))}"
                )
            check_signature(known[name], options, f"reward.verifier_kwargs.{name}")
        self._known = known

    def __call__(self, data_source: str) -> tuple[Verifier, dict[str, Any]]:
        """The verifier for `data_source` and the keyword arguments to call it with besides the sample's."""
        if self._custom is not None:
            fn, options = self._custom, self.config.custom_kwargs
        else:
            name = verifier_name(data_source)
            fn, options = self._known[name], self.config.verifier_kwargs.get(name, {})
        return fn, {**options, "data_source": data_source} if takes_data_source(fn) else options


class RewardScorer:
    """Scores batches of decoded responses with the verifiers the config selects, each under a time limit.

    In process mode the verifier children start on the first `score` and live until `close()`.
    """

    def __init__(self, config: RewardConfig | Mapping[str, Any] | Any | None = None):
        self.config = RewardConfig.from_any(config)
        self.resolve = VerifierResolver(
            self.config
        )  # custom function and options checked here, in the parent
        self._pool: VerifierPool | None = None

    def validate_sources(self, data_sources: Sequence[str]) -> None:
        """Raise VerifierError for a data source no verifier handles (before any scoring starts)."""
        for source in sorted(set(map(str, data_sources))):
            self.resolve(source)

    def score(
        self,
        responses: Sequence[str],
        ground_truths: Sequence[Any],
        data_sources: Sequence[str],
        extra_infos: Sequence[Any] | None = None,
    ) -> list[Outcome]:
        """One Outcome per response (score, acc, status); failed verifications score 0 and are logged."""
        extra_infos = [None] * len(responses) if extra_infos is None else extra_infos
        lengths = {len(responses), len(ground_truths), len(data_sources), len(extra_infos)}
        if len(lengths) != 1:
            raise ValueError(
                f"score: responses ({len(responses)}), ground_truths ({len(ground_truths)}), data_sources "
                f"({len(data_sources)}) and extra_infos ({len(extra_infos)}) must have the same length"
            )
        self.validate_sources(data_sources)
        tasks = [
            Task(str(d), r, g, e) for r, g, d, e in zip(responses, ground_truths, data_sources, extra_infos)
        ]
        if not tasks:
            return []
        if self.config.timeout_mode == "signal":
            outcomes = self._score_here(tasks)
        else:
            if self._pool is None:
                self._pool = VerifierPool(self.config, self.config.num_processes)
            outcomes = self._pool.score(tasks)
        _log_failures(outcomes)
        return outcomes

    def _score_here(self, tasks: list[Task]) -> list[Outcome]:
        if not signal_timeout_available():
            raise RuntimeError(
                "reward.timeout_mode=signal needs the main thread of its process (SIGALRM); use "
                "reward.timeout_mode=process"
            )
        outcomes = []
        for task in tasks:
            fn, options = self.resolve(task.data_source)
            outcomes.append(
                score_with_timeout(
                    fn,
                    task.solution_str,
                    task.ground_truth,
                    task.extra_info,
                    timeout_s=self.config.timeout_s,
                    options=options,
                )
            )
        return outcomes

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _log_failures(outcomes: Sequence[Outcome]) -> None:
    failed = [o for o in outcomes if o.status in (ERROR, TIMEOUT)]
    if failed:
        logger.warning(
            "%d of %d verifications failed (errors %d, timeouts %d) and scored 0; first: %s",
            len(failed),
            len(outcomes),
            sum(o.status == ERROR for o in failed),
            sum(o.status == TIMEOUT for o in failed),
            failed[0].detail,
        )


def score_responses(
    responses: Sequence[str],
    ground_truths: Sequence[Any],
    data_sources: Sequence[str],
    extra_infos: Sequence[Any] | None = None,
    config: RewardConfig | Mapping[str, Any] | Any | None = None,
) -> list[Outcome]:
    """One-shot `RewardScorer(config).score(...)`; keep a RewardScorer to reuse its verifier processes."""
    scorer = RewardScorer(config)
    try:
        return scorer.score(responses, ground_truths, data_sources, extra_infos)
    finally:
        scorer.close()


def token_level_scores(scores: Sequence[float] | torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, R] float32 zeros with each row's score on its last valid response token (mask may have holes)."""
    import torch  # here, not at module level: verifier child processes import this module and need no torch

    mask = response_mask.bool()
    if mask.dim() != 2:
        raise ValueError(f"response_mask must be [batch, response_length], got shape {tuple(mask.shape)}")
    scores = torch.as_tensor(scores, dtype=torch.float32, device=mask.device)
    if scores.shape != (mask.shape[0],):
        raise ValueError(f"{scores.numel()} scores for a response_mask of {mask.shape[0]} rows")
    empty = ~mask.any(dim=1)
    if empty.any():
        raise ValueError(
            f"rows {empty.nonzero().flatten().tolist()} have no response token to put a score on"
        )
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).max(dim=1).values
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[torch.arange(mask.shape[0], device=mask.device), last] = scores
    return out
