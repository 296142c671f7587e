"""An audit of the suite's numerical bounds: how close each comparison comes to its tolerance.

`pytest --audit-bounds=FILE ...` appends one JSON line per comparison that a test makes with `pytest.approx`,
`torch.allclose` or `below(value, bound)`: where it is (file:line), the observed difference and the tolerance.
`python tests/bound_audit.py FILE...` then prints, per place, the largest difference seen over all the runs
recorded, its tolerance and the margin between them (a bound should keep >= 3x over what repeated runs and
other CPU capability levels observe, or be derived, as tests/integration/actor_helpers.py derives Adam's).
Without the option nothing is recorded and nothing is patched.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
_records: list[dict] | None = None  # None: the audit is off


def below(value: float, bound: float) -> bool:
    """`value < bound`, recorded by the audit."""
    _record(value, bound)
    return value < bound


def _site() -> str:
    for frame in inspect.stack()[2:]:
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_TESTS) and path.name != Path(__file__).name:
            return f"{path.relative_to(_TESTS.parent)}:{frame.lineno}"
    return "?"


def _record(observed: float, tolerance: float) -> None:
    if _records is not None:
        _records.append({"site": _site(), "observed": float(observed), "tolerance": float(tolerance)})


def pytest_addoption(parser):
    parser.addoption(
        "--audit-bounds", default=None, help="append each numerical comparison to this JSONL file"
    )


def pytest_configure(config):
    global _records
    path = config.getoption("--audit-bounds")
    if not path:
        return
    _records = []
    import _pytest.approx
    import torch

    scalar_eq = _pytest.approx.ApproxScalar.__eq__

    def approx_eq(self, actual):
        try:
            _record(abs(actual - self.expected), self.tolerance)
        except TypeError:
            pass  # not a number: nothing to measure
        return scalar_eq(self, actual)

    allclose = torch.allclose

    def audited_allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
        tolerance = atol + rtol * b.abs()
        used = ((a - b).abs() / tolerance).max().item() if a.numel() else 0.0
        _record(used * max(atol, 1e-300), max(atol, 1e-300))  # the worst element, as a fraction of atol
        return allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)

    _pytest.approx.ApproxScalar.__eq__ = approx_eq
    torch.allclose = audited_allclose
    config._audit_bounds_path = path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    start = len(_records) if _records is not None else 0
    yield
    if _records is not None:
        for record in _records[start:]:
            record["test"] = item.nodeid


def pytest_unconfigure(config):
    path = getattr(config, "_audit_bounds_path", None)
    if path and _records:
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in _records)


def summarize(paths: list[str]) -> str:
    worst: dict[str, dict] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            margin = r["tolerance"] / r["observed"] if r["observed"] > 0 else float("inf")
            seen = worst.setdefault(r["site"], {**r, "margin": margin, "count": 0})
            seen["count"] += 1
            if margin < seen["margin"]:
                seen.update(r, margin=margin)
    rows = ["| place | comparisons | largest observed | tolerance | margin |", "|---|---|---|---|---|"]
    for site, r in sorted(worst.items(), key=lambda kv: kv[1]["margin"]):
        margin = "exact" if r["margin"] == float("inf") else f"{r['margin']:.1f}x"
        rows.append(f"| {site} | {r['count']} | {r['observed']:.3g} | {r['tolerance']:.3g} | {margin} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(summarize(sys.argv[1:]))
