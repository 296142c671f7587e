"""The fault-injection suite's ledger: tests record each fault they inject and each bad input they try, and the
session ends with one line saying how many were injected / tried and how many the system survived / rejected
with a clear error. Bad-input tests of other suites (listed below) are counted too when they run in the same
session (CI runs them all together).

The ledger is registered as a session-wide plugin (not only a conftest hook), so it also sees the reports of
tests outside this directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

# Bad-input tests that live with the code they check: config schema/validation, CLI overrides, data files,
# reward functions that raise, hang or return non-numbers, reward options.
OTHER_BAD_INPUT_TESTS = (
    "tests/unit/test_run_config.py::test_invalid_combinations_name_the_option",
    "tests/unit/test_run_config.py::test_schema_rejects_unknown_keys_and_wrong_types",
    "tests/e2e/test_train_job.py::test_bad_overrides_fail_fast_with_the_option_named",
    "tests/unit/test_data.py::test_bad_jsonl_names_file_line_and_field",
    "tests/unit/test_data.py::test_bad_parquet_and_other_files",
    "tests/unit/test_data.py::test_bad_dataset_options",
    "tests/unit/test_verifiers.py::test_raising_or_non_numeric_verifiers_score_zero_and_are_counted",
    "tests/unit/test_verifiers.py::test_process_mode_cuts_a_hang_and_restarts_the_child",
    "tests/unit/test_verifiers.py::test_bad_custom_specs_fail_clearly",
    "tests/unit/test_verifiers.py::test_bad_reward_options",
    "tests/unit/test_dapo.py::test_bad_dapo_options_name_the_option",
    "tests/unit/test_dapo.py::test_the_command_exits_2_before_any_worker_starts",
)


@dataclass(eq=False)  # a plugin object must be hashable
class FaultLedger:
    injected: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    other_run: int = 0
    other_passed: int = 0

    def inject(self, fault: str) -> None:
        """Record a fault as injected (e.g. by a fixture that runs the job); `survives` checks it later."""
        self.injected.append(fault)

    @contextlib.contextmanager
    def survives(self, fault: str) -> Iterator[None]:
        """The block asserts that the system survived `fault`; counted as survived when it passes."""
        assert fault in self.injected, f"fault {fault!r} was never injected"
        yield
        self.survived.append(fault)

    @contextlib.contextmanager
    def bad_input(self, name: str) -> Iterator[None]:
        """The block feeds a bad input and asserts a clear rejection; counted as rejected when it passes."""
        self.tried.append(name)
        yield
        self.rejected.append(name)

    # ------------------------------------------------------------------ pytest hooks
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.nodeid.startswith(OTHER_BAD_INPUT_TESTS):
            self.other_run += 1
            self.other_passed += report.passed

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not (self.injected or self.tried or self.other_run):
            return
        line = (
            f"fault injection: {len(self.injected)} faults injected, {len(self.survived)} survived; "
            f"{len(self.tried)} bad inputs tried, {len(self.rejected)} rejected with a clear error"
        )
        if self.other_run:
            line += f"; bad-input cases in other suites: {self.other_passed} of {self.other_run} passed"
        terminalreporter.write_sep("=", line, bold=True)
        lost = [f for f in self.injected if f not in self.survived]
        if lost:
            terminalreporter.write_line(f"faults not survived: {', '.join(lost)}")


_LEDGER = FaultLedger()


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("sfpo_fault_ledger"):
        config.pluginmanager.register(_LEDGER, "sfpo_fault_ledger")


@pytest.fixture(scope="session")
def faults() -> FaultLedger:
    return _LEDGER
