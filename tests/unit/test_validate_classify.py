"""Validation without Docker: how gold/empty grades classify an instance, and reading validation files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from envserver.tasks import SAMPLE_TASKS_PATH
from envserver.validate import ValidationFileError, build_report, load_validation, write_report
from envserver.validation_status import classify, summarize
from envserver.wire import GradeReport, InstanceValidation, ValidationReport

ROOT = Path(__file__).resolve().parents[2]
F2P = ["tests/test_a.py::test_fixed"]
P2P = ["tests/test_a.py::test_kept"]


def grade(
    resolved: bool,
    *,
    f2p_failing: tuple[str, ...] = (),
    p2p_failing: tuple[str, ...] = (),
    infra: str | None = None,
    applied: bool | None = True,
    tail: str = "",
) -> GradeReport:
    tests = {
        "FAIL_TO_PASS": {"success": [t for t in F2P if t not in f2p_failing], "failure": list(f2p_failing)},
        "PASS_TO_PASS": {"success": [t for t in P2P if t not in p2p_failing], "failure": list(p2p_failing)},
    }
    return GradeReport(
        resolved=resolved,
        reward=float(resolved),
        infra_failure=infra is not None,
        infra_reason=infra,
        patch_applied=applied,
        tests={} if infra else tests,
        test_output_tail=tail,
        duration_s=1.25,
    )


GOLD = grade(True)
EMPTY = grade(False, f2p_failing=tuple(F2P))


@pytest.mark.parametrize(
    "gold, empty, status, words",
    [
        ([GOLD], [EMPTY], "valid", []),
        ([GOLD, GOLD, GOLD], [EMPTY, EMPTY, EMPTY], "valid", []),
        (
            [grade(False, f2p_failing=tuple(F2P), p2p_failing=tuple(P2P))],
            [EMPTY],
            "gold_fails",
            ["FAIL_TO_PASS failing: tests/test_a.py::test_fixed", "PASS_TO_PASS failing: tests/test_a.py::test_kept"],
        ),
        ([grade(False, applied=False)], [EMPTY], "gold_fails", ["does not apply"]),
        ([GOLD], [grade(True)], "empty_passes", ["FAIL_TO_PASS tests pass with no fix"]),
        (
            [GOLD, grade(False, f2p_failing=tuple(F2P))],
            [EMPTY, EMPTY],
            "flaky",
            ["gold patch resolved 1 of 2 runs", "tests/test_a.py::test_fixed"],
        ),
        ([GOLD, GOLD], [EMPTY, grade(True)], "flaky", ["empty patch resolved 1 of 2 runs"]),
        (
            [
                grade(
                    False,
                    infra="no_test_output: the tests never started (exit 2)",
                    tail="+ cd /testbed\nsource: no such env testbed\n+ exit 2\n",
                )
            ],
            [],
            "env_broken",
            ["gold patch: no_test_output", "last output: source: no such env testbed"],
        ),
        ([grade(False, infra="test_timeout: the test run exceeded 900 s")], [], "env_broken", ["test_timeout"]),
        ([grade(False, infra="image_missing: no image for this task on the docker host")], [], "no_image", []),
        # The unfixed code may hang: a timeout of the empty patch is "not resolved"; an engine error says nothing.
        ([GOLD], [grade(False, infra="test_timeout: the test run exceeded 900 s")], "valid", []),
        ([GOLD], [grade(False, infra="docker_error: engine went away")], "env_broken", ["empty patch: docker_error"]),
        # A run that cannot collect without the fix, when the fix makes it pass (pytest-dev__pytest-7168: the bug is
        # an INTERNALERROR): the fix is missing, not the environment.
        ([GOLD], [grade(False, infra="env_error: INTERNALERROR> Traceback (most recent call last):")], "valid", []),
        (
            [GOLD, grade(False, f2p_failing=tuple(F2P))],
            [grade(False, infra="env_error: INTERNALERROR> Traceback (most recent call last):")],
            "env_broken",
            ["empty patch: env_error"],
        ),
    ],
)
def test_classify(gold, empty, status, words):  # type: ignore[no-untyped-def]
    got, reason = classify(gold, empty)
    assert got == status, reason
    assert (reason is None) == (status == "valid")
    for word in words:
        assert word in reason


def test_env_error_is_env_broken_with_its_log_line():  # type: ignore[no-untyped-def]
    line = "ImportError while loading conftest '/testbed/conftest.py'."
    broken = GradeReport(resolved=False, reward=0.0, infra_failure=False, env_error=line)  # type: ignore[call-arg]
    assert classify([broken], [EMPTY]) == ("env_broken", f"gold patch: {line}")
    assert summarize([broken]).env_error == line


def test_summarize_and_python_version():  # type: ignore[no-untyped-def]
    from envserver.validation_status import python_version

    runs = [
        grade(False, f2p_failing=tuple(F2P), tail="platform linux -- Python 3.11.2, pytest-8.3.5"),
        grade(False, f2p_failing=tuple(F2P), p2p_failing=tuple(P2P)),
    ]
    summary = summarize(runs)
    assert summary.resolved == [False, False] and summary.failed_tests == [*F2P, *P2P]
    assert summary.durations_s == [1.25, 1.25] and summary.patch_applied is True and summary.infra_reason is None
    assert python_version(runs) == "3.11.2" and python_version(runs[1:]) is None


def _report() -> ValidationReport:
    entries = [
        InstanceValidation(instance_id="a__b-1", repo="a/b", status="valid", image="img:1"),
        InstanceValidation(instance_id="a__b-2", repo="a/b", status="gold_fails", reason="x failing"),
    ]
    return build_report(
        entries, created_at="2025-01-01T00:00:00+00:00", task_files=["t.jsonl"], repeat=1, complete=True
    )


def test_report_round_trip(tmp_path):  # type: ignore[no-untyped-def]
    report = _report()
    assert report.counts == {"valid": 1, "gold_fails": 1}
    write_report(report, tmp_path / "sub" / "v.json")
    assert load_validation(tmp_path / "sub" / "v.json") == report
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["v.json"]  # no temporary file left


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", ["invalid JSON", "line 1"]),
        ("[]", ["no `format_version`"]),
        (json.dumps({"instances": []}), ["no `format_version`"]),
        (json.dumps({"format_version": 99, "created_at": "x"}), ["format_version 99", "reads version 1"]),
        (
            json.dumps(
                {
                    "format_version": 1,
                    "created_at": "x",
                    "instances": [{"instance_id": "a", "repo": "r", "status": "great"}],
                }
            ),
            ["instances.0.status"],
        ),
        (
            json.dumps(
                {
                    "format_version": 1,
                    "created_at": "x",
                    "instances": [
                        {"instance_id": "a", "repo": "r", "status": "valid"},
                        {"instance_id": "a", "repo": "r", "status": "valid"},
                    ],
                }
            ),
            ["'a' appears twice"],
        ),
    ],
)
def test_malformed_validation_files(tmp_path, content, words):  # type: ignore[no-untyped-def]
    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(ValidationFileError) as info:
        load_validation(path)
    for word in [str(path), *words]:
        assert word in str(info.value)
    with pytest.raises(ValidationFileError, match="cannot read"):
        load_validation(tmp_path / "missing.json")


def test_serve_refuses_a_malformed_validation_file(tmp_path):  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.json"
    bad.write_text('{"format_version": 1, "instances": 3}')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "envserver",
            "serve",
            "--tasks",
            str(SAMPLE_TASKS_PATH),
            "--validated",
            str(bad),
            "--port",
            "9",
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"error: --validated {bad}: not a valid validation report" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_gold_patch_that_loses_test_infrastructure_says_so():  # type: ignore[no-untyped-def]
    """A gold patch whose conftest.py change the `strip` policy left out: the reason and the entry name the file."""
    stripped = grade(False, f2p_failing=tuple(F2P)).model_copy(update={"excluded_paths": ["conftest.py"]})
    status, reason = classify([stripped], [EMPTY])
    assert status == "gold_fails" and "left out its change to conftest.py" in reason and "patch_policy: keep" in reason
    assert summarize([stripped, stripped]).excluded_paths == ["conftest.py"]
    assert summarize([GOLD]).excluded_paths == []


def test_a_gold_patch_failing_for_want_of_the_network_says_so():  # type: ignore[no-untyped-def]
    line = "socket.gaierror: [Errno -3] Temporary failure in name resolution"
    offline = grade(False, f2p_failing=tuple(F2P)).model_copy(update={"network_error": line})
    status, reason = classify([offline], [EMPTY])
    assert status == "gold_fails" and "cannot be valid offline" in reason and reason.endswith(line)
    assert "network" not in classify([grade(False, f2p_failing=tuple(F2P))], [EMPTY])[1]
