"""Verifiers by name: a registry keyed by a sample's `data_source`, and user functions named in the config.

A verifier is called by keyword, `fn(solution_str=..., ground_truth=..., extra_info=..., **options)`, plus
`data_source=...` when it has a parameter of that name (so verl-style `compute_score(data_source,
solution_str, ground_truth, extra_info)` functions work unchanged). It returns a float or a dict with `score`
(float) and optionally `acc` (bool; default: score >= 1). Data sources are matched case-insensitively: first exactly
against names and aliases, then against glob aliases ("aime*") in registration order.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Verifier = Callable[..., float | Mapping[str, Any]]
GroundTruthCheck = Callable[[str], str | None]  # what is wrong with a ground truth, None when it is usable

_VERIFIERS: dict[str, Verifier] = {}
_GROUND_TRUTH_CHECKS: dict[str, GroundTruthCheck] = {}
_EXACT: dict[str, str] = {}  # lower-cased name or alias -> verifier name
_GLOBS: list[tuple[str, str]] = []  # (lower-cased glob alias, verifier name), in registration order


class VerifierError(ValueError):
    """An unknown data source or an invalid verifier function / option in the reward config."""


def register_verifier(
    name: str, *aliases: str, check_ground_truth: GroundTruthCheck | None = None
) -> Callable[[Verifier], Verifier]:
    """Decorator: register `fn` under `name` and `aliases` (aliases may be globs such as "aime*").

    `check_ground_truth(text)` says what is wrong with a ground truth this verifier cannot score (e.g. not a
    number), or None; data files are checked with it when they are loaded.
    """

    def decorator(fn: Verifier) -> Verifier:
        if name in _VERIFIERS and _VERIFIERS[name] is not fn:
            raise VerifierError(f"a verifier named '{name}' is already registered")
        _VERIFIERS[name] = fn
        if check_ground_truth is not None:
            _GROUND_TRUTH_CHECKS[name] = check_ground_truth
        for key in (name, *aliases):
            if any(c in key for c in "*?["):
                _GLOBS.append((key.lower(), name))
            else:
                _EXACT[key.lower()] = name
        return fn

    return decorator


def verifier_name(data_source: str) -> str:
    """The registered verifier that scores samples of `data_source`."""
    key = str(data_source).lower()
    if key in _EXACT:
        return _EXACT[key]
    for pattern, name in _GLOBS:
        if fnmatch.fnmatchcase(key, pattern):
            return name
    known = sorted({*_EXACT, *(p for p, _ in _GLOBS)})
    raise VerifierError(
        f"no verifier for data_source '{data_source}'; known sources: {', '.join(known)}. "
        "Register one with sfpo_rl.rewards.register_verifier or set reward.custom_function"
    )


def ground_truth_problem(data_source: str, ground_truth: str) -> str | None:
    """What makes `ground_truth` unusable for the verifier of `data_source` (None when it can be scored);
    VerifierError when no verifier handles `data_source`."""
    name = verifier_name(data_source)
    if not ground_truth.strip():
        return "is empty"
    check = _GROUND_TRUTH_CHECKS.get(name)
    return check(ground_truth) if check is not None else None


def get_verifier(data_source: str) -> Verifier:
    return _VERIFIERS[verifier_name(data_source)]


def registered_verifiers() -> dict[str, Verifier]:
    return dict(_VERIFIERS)


def load_custom_verifier(spec: str, option: str = "reward.custom_function") -> Verifier:
    """Load `package.module:function` or `path/to/file.py:function` and check it is a callable verifier."""
    target, sep, fn_name = str(spec).rpartition(":")
    if not sep or not target or not fn_name.isidentifier():
        raise VerifierError(
            f"{option}='{spec}' must look like 'package.module:function' or 'path/file.py:function'"
        )
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise VerifierError(f"{option}='{spec}': file {path} does not exist")
        # A name unique per file, so two custom files with the same stem do not replace each other.
        module_name = f"sfpo_rl_custom_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise VerifierError(f"{option}='{spec}': importing {path} failed: {exc!r}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise VerifierError(f"{option}='{spec}': cannot import module '{target}': {exc!r}") from exc
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise VerifierError(f"{option}='{spec}': '{target}' has no attribute '{fn_name}'")
    if not callable(fn):
        raise VerifierError(f"{option}='{spec}': '{fn_name}' is a {type(fn).__name__}, not a function")
    return fn


def takes_data_source(fn: Verifier) -> bool:
    """Whether `fn` has a `data_source` parameter (verl-style functions do): it is then passed by keyword."""
    try:
        return "data_source" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def check_signature(fn: Verifier, options: Mapping[str, Any], where: str) -> None:
    """Fail at load time, not mid-run, when `fn` cannot be called the way the scorer calls it."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    source = {"data_source": ""} if takes_data_source(fn) else {}
    try:
        signature.bind(solution_str="", ground_truth="", extra_info=None, **source, **options)
    except TypeError as exc:
        names = ["solution_str", "ground_truth", "extra_info", *source, *options]
        raise VerifierError(
            f"{where}: {getattr(fn, '__name__', fn)}{signature} cannot be called as "
            f"fn({', '.join(f'{k}=...' for k in names)}): {exc}"
        ) from exc
