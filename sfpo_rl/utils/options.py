"""Typed option objects (dataclasses): the one check helper they validate themselves with, and building them
from whatever a caller holds: the object itself, None (defaults), a plain mapping, or an OmegaConf node."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")
_NOT_GIVEN = object()


class ConfigError(ValueError):
    """A config value is invalid; the message names the option (`section.option`)."""


def require(
    ok: bool, option: str, expected: str, value: Any = _NOT_GIVEN, error: type[Exception] = ConfigError
) -> None:
    """Raise `error`("<option> must be <expected>[, got <value>]") unless `ok`."""
    if not ok:
        got = "" if value is _NOT_GIVEN else f", got {value!r}"
        raise error(f"{option} must be {expected}{got}")


def options_from_any(cls: type[T], config: Any, section: str, error: type[Exception] = ConfigError) -> T:
    """`cls(**config)` after rejecting keys `cls` does not have, naming the option as `<section>.<key>`."""
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if not isinstance(config, Mapping):
        from omegaconf import DictConfig, OmegaConf

        if not isinstance(config, DictConfig):
            raise TypeError(f"{section} must be a mapping, got {type(config).__name__}")
        config = OmegaConf.to_container(config, resolve=True)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise error(f"{section}.{unknown[0]}: unknown option; valid options: {', '.join(sorted(known))}")
    return cls(**config)


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML `true` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))
