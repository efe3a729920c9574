"""Which status a task instance gets from the grades of its gold and empty patches, with the reason a person reads.

Pure functions over `GradeReport`s: `python -m envserver validate` (envserver/validate.py) grades each patch K times
and classifies the runs here. The statuses (`ValidationStatus`), checked in this order:

- `no_image`: no candidate image on the docker host;
- `env_broken`: a gold run reports `env_error` (the tests could not be collected: ImportError, pytest exit 2/4/5 —
  the log line says why) or an infrastructure failure (`no_test_output`, `test_timeout`, `test_patch_failed`, …);
  also the empty patch's infrastructure failures that a patch cannot cause;
- `flaky`: the gold or the empty patch's outcome differs across the K runs;
- `gold_fails`: the gold patch never resolves (the failing FAIL_TO_PASS / PASS_TO_PASS tests are named);
- `empty_passes`: the empty patch resolves (nothing for an agent to fix);
- `valid`: the gold patch resolves in every run and the empty patch in none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from envserver.wire import GradeReport, PatchValidation, ValidationStatus

STATUSES: tuple[ValidationStatus, ...] = ("valid", "gold_fails", "empty_passes", "flaky", "env_broken", "no_image")
"""Every status, in the order tables list them."""

EMPTY_PATCH_OUTCOMES = ("test_timeout", "container_died")
"""Infrastructure failures of the empty-patch run that the unfixed code itself can cause (a bug that hangs or eats
its memory): they count as "not resolved". Any other failure says nothing about the patch and makes `env_broken`."""

MAX_TESTS_IN_REASON = 5
"""Failing tests a reason names before it says how many more there are."""

_PYTHON_VERSION = re.compile(r"platform \S+ -- Python (\d+\.\d+(?:\.\d+)?)")


def env_error_of(report: GradeReport) -> str | None:
    """The grade's `env_error` (the log line of a test run that failed to collect)."""
    return report.env_error


def failed_tests(report: GradeReport) -> tuple[list[str], list[str]]:
    """(FAIL_TO_PASS, PASS_TO_PASS) tests that did not pass; swebench counts a test missing from the log as failed."""
    return (
        report.tests.get("FAIL_TO_PASS", {}).get("failure", []),
        report.tests.get("PASS_TO_PASS", {}).get("failure", []),
    )


def python_version(reports: Sequence[GradeReport]) -> str | None:
    """The Python version pytest's header names in the test output, if any run shows it."""
    for report in reports:
        match = _PYTHON_VERSION.search(report.test_output_tail)
        if match:
            return match.group(1)
    return None


def summarize(reports: Sequence[GradeReport]) -> PatchValidation:
    failed: dict[str, None] = {}
    for report in reports:
        f2p, p2p = failed_tests(report)
        failed.update(dict.fromkeys([*f2p, *p2p]))
    applied = [r.patch_applied for r in reports if r.patch_applied is not None]
    return PatchValidation(
        resolved=[r.resolved for r in reports],
        failed_tests=list(failed),
        durations_s=[round(r.duration_s, 3) for r in reports],
        patch_applied=all(applied) if applied else None,
        env_error=next((e for e in map(env_error_of, reports) if e), None),
        infra_reason=next((r.infra_reason for r in reports if r.infra_failure), None),
        excluded_paths=list(dict.fromkeys(path for r in reports for path in r.excluded_paths)),
    )


def last_log_line(output: str) -> str | None:
    """The last line of a test run's output that is not a shell trace (`set -x` prints `+ command`): usually the
    error that ended it."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line and not line.startswith("+"):
            return line[:300]
    return None


def stops_early(report: GradeReport) -> bool:
    """A gold run that shows the environment broken: further runs cannot change the status."""
    return report.infra_failure or (bool(env_error_of(report)) and not report.resolved)


def _infra_reason(report: GradeReport) -> str:
    reason = report.infra_reason or "unknown infrastructure failure"
    line = last_log_line(report.test_output_tail)
    return f"{reason}; last output: {line}" if line else reason


def _name_tests(kind: str, tests: list[str]) -> str:
    shown = ", ".join(tests[:MAX_TESTS_IN_REASON])
    more = f" (+{len(tests) - MAX_TESTS_IN_REASON} more)" if len(tests) > MAX_TESTS_IN_REASON else ""
    return f"{kind} failing: {shown}{more}"


def _failing(report: GradeReport) -> str:
    f2p, p2p = failed_tests(report)
    parts = [_name_tests(kind, tests) for kind, tests in (("FAIL_TO_PASS", f2p), ("PASS_TO_PASS", p2p)) if tests]
    return "; ".join(parts) or "no failing test named (the log had no test results)"


def classify(gold: Sequence[GradeReport], empty: Sequence[GradeReport]) -> tuple[ValidationStatus, str | None]:
    """The status and its reason from the gold and empty runs (see the module docstring for the order)."""
    for report in gold:
        error = env_error_of(report)
        # A resolved gold run ran the instance's tests, whatever else its log says (pytest's own test suite prints
        # the collection errors of the sessions it tests).
        if error and not report.resolved:
            return "env_broken", f"gold patch: {error}"
        if report.infra_failure:
            status: ValidationStatus = (
                "no_image" if (report.infra_reason or "").startswith("image_missing") else "env_broken"
            )
            return status, f"gold patch: {_infra_reason(report)}"
    gold_proves_env = bool(gold) and all(r.resolved for r in gold)
    for report in empty:
        reason = report.infra_reason or ""
        # With the fix the tests ran and passed, so a run that cannot collect without it (pytest-dev__pytest-7168:
        # the bug is an INTERNALERROR) failed for want of the fix: a 0, as a verified server grades it.
        if gold_proves_env and reason.startswith("env_error"):
            continue
        if report.infra_failure and not reason.startswith(EMPTY_PATCH_OUTCOMES):
            return "env_broken", f"empty patch: {_infra_reason(report)}"
    gold_resolved = [r.resolved for r in gold]
    empty_resolved = [r.resolved for r in empty]
    if len(set(gold_resolved)) > 1 or len(set(empty_resolved)) > 1:
        parts = []
        if len(set(gold_resolved)) > 1:
            failing = next(r for r in gold if not r.resolved)
            parts.append(f"gold patch resolved {sum(gold_resolved)} of {len(gold)} runs ({_failing(failing)})")
        if len(set(empty_resolved)) > 1:
            parts.append(f"empty patch resolved {sum(empty_resolved)} of {len(empty)} runs")
        return "flaky", "; ".join(parts)
    if gold and not any(gold_resolved):
        if any(r.patch_applied is False for r in gold):
            return "gold_fails", "the gold patch does not apply"
        excluded = list(dict.fromkeys(path for r in gold for path in r.excluded_paths))
        policy_note = (
            (
                f" — the patch policy left out its change to {', '.join(excluded)} (a row's `patch_policy: "
                "keep` grades it as the harness does)"
            )
            if excluded
            else ""
        )
        return "gold_fails", (f"gold patch does not resolve: {_failing(gold[0])}{_network_hint(gold[0])}{policy_note}")
    if empty and all(empty_resolved):
        f2p = empty[0].tests.get("FAIL_TO_PASS", {})
        if not f2p.get("success") and not f2p.get("failure"):
            return "empty_passes", "the empty patch resolves: the row lists no FAIL_TO_PASS tests"
        return "empty_passes", "the empty patch resolves: the FAIL_TO_PASS tests pass with no fix"
    return "valid", None


def _network_hint(report: GradeReport) -> str:
    """Why a gold run failed when its tests wanted the network: they cannot pass in an offline grading container."""
    if report.network_error:
        return (
            f" — the tests try to reach the network, which grading turns off (cannot be valid offline): "
            f"{report.network_error}"
        )
    return ""
