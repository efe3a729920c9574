"""Finding why a test run never ran the tests, on the real output of pytest and unittest runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT

from envserver.env_errors import find_env_error, patch_caused


def run_tests(root: Path, *args: str) -> str:
    """The log of a real test run in `root`, between swebench's markers (as an eval script prints it)."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    return f"+ git apply -v -\n{START_TEST_OUTPUT}\n{proc.stdout}\n{END_TEST_OUTPUT}\n"


def project(tmp_path: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


PYTEST = ("-m", "pytest", "-rA", "-p", "no:cacheprovider")


def test_missing_dependency_in_conftest_is_the_environment(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {"tests/conftest.py": "import absent_module_xyz\n", "tests/test_a.py": "def test_a():\n    assert True\n"},
    )
    log = run_tests(root, *PYTEST, "tests/test_a.py")
    error = find_env_error(log, parsed_any=False)
    assert error is not None and error.strong
    assert "ImportError while loading conftest" in error.line
    assert "ModuleNotFoundError: No module named 'absent_module_xyz'" in error.line
    assert not patch_caused(
        error, ["demo/core.py"], "diff --git a/demo/core.py b/demo/core.py\n+x = 1\n", [], str(root)
    )
    # ... unless the patch is what imports it.
    assert patch_caused(error, [], "+import absent_module_xyz\n", [], str(root))


@pytest.mark.slow  # ~4 s CPU: left out of scripts/test.sh --fast
def test_a_test_importing_what_the_fix_adds_is_the_patch(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "demo/__init__.py": "VALUE = 1\n",
            "tests/test_new.py": "from demo import NEW_NAME\n\ndef test_new():\n    assert NEW_NAME\n",
            "tests/test_old.py": "def test_old():\n    assert True\n",
        },
    )
    log = run_tests(root, *PYTEST, "tests/test_new.py", "tests/test_old.py")
    error = find_env_error(log, parsed_any=False)
    assert error is not None and "ImportError while importing test module" in error.line
    assert "cannot import name 'NEW_NAME' from 'demo'" in error.line
    assert patch_caused(error, [], "", ["demo/__init__.py"], str(root))
    # pytest stops at a collection error; with results the line is still reported (never a silent 0).
    log = run_tests(root, *PYTEST, "--continue-on-collection-errors", "tests/test_new.py", "tests/test_old.py")
    assert "PASSED tests/test_old.py::test_old" in log
    assert find_env_error(log, parsed_any=True) is not None


def test_a_module_the_fix_creates_is_the_patch(tmp_path: Path) -> None:
    root = project(tmp_path, {"demo/__init__.py": "", "tests/test_x.py": "from demo.extra import f\n"})
    error = find_env_error(run_tests(root, *PYTEST, "tests/test_x.py"), parsed_any=False)
    assert error is not None and "No module named 'demo.extra'" in error.line
    assert patch_caused(error, [], "", ["demo/extra.py"], str(root))
    assert not patch_caused(error, [], "", ["demo/other.py"], str(root))


def test_a_syntax_error_in_a_patched_file_is_the_patch(tmp_path: Path) -> None:
    root = project(tmp_path, {"demo/__init__.py": "def broken(:\n", "tests/test_x.py": "import demo\n"})
    error = find_env_error(run_tests(root, *PYTEST, "tests/test_x.py"), parsed_any=False)
    assert error is not None and "SyntaxError" in error.context
    assert patch_caused(error, ["demo/__init__.py"], "", [], str(root))
    assert not patch_caused(error, ["demo/other.py"], "", [], str(root))


def test_failing_tests_are_no_env_error(tmp_path: Path) -> None:
    root = project(tmp_path, {"tests/test_a.py": "import json\n\ndef test_a():\n    json.loads('{')\n"})
    log = run_tests(root, *PYTEST, "tests/test_a.py")
    assert "FAILED tests/test_a.py::test_a" in log and "JSONDecodeError" in log
    assert find_env_error(log, parsed_any=True) is None
    # unittest (django's runner) reports an erroring test as "ERROR: test_x (…)": a result, not a usage error.
    root = project(
        tmp_path / "ut",
        {
            "test_u.py": "import unittest\n\nclass T(unittest.TestCase):\n"
            "    def test_x(self):\n        raise KeyError('k')\n"
        },
    )
    log = run_tests(root, "-m", "unittest", "-v", "test_u")
    assert "ERROR: test_x" in log
    assert find_env_error(log, parsed_any=True) is None


@pytest.mark.slow  # ~5 s CPU: left out of scripts/test.sh --fast
def test_usage_errors_and_empty_runs_are_reported(tmp_path: Path) -> None:
    root = project(tmp_path, {"tests/test_a.py": "def test_a():\n    pass\n"})
    error = find_env_error(run_tests(root, *PYTEST, "--no-such-option", "tests/test_a.py"), parsed_any=False)
    assert error is not None and "unrecognized arguments: --no-such-option" in error.line
    error = find_env_error(run_tests(root, *PYTEST, "tests/test_missing.py"), parsed_any=False)
    assert error is not None and "file or directory not found: tests/test_missing.py" in error.line
    error = find_env_error(run_tests(root, *PYTEST, "-k", "nothing_matches", "tests/test_a.py"), parsed_any=False)
    assert error is not None and error.line.startswith("no test results") and "deselected" in error.line
    silent = f"{START_TEST_OUTPUT}\nsomething odd\n{END_TEST_OUTPUT}\n>>>>> Test Exit Code: 1\n"
    error = find_env_error(silent, parsed_any=False)
    assert error is not None and error.line.startswith("no test results") and "exit status 1" in error.line
    assert "something odd" in error.line


def test_pytest_words_printed_by_the_tests_themselves_are_not_an_env_error(tmp_path: Path) -> None:
    """pytest's own suite runs pytest inside its tests (pytester): a failing test prints the inner run's
    `INTERNALERROR>` and `ERROR collecting` lines in its captured output (pytest-dev__pytest-7168 graded with no fix).
    With every wanted test reported the run was complete; with one missing the same words are evidence."""
    root = project(
        tmp_path,
        {
            "tests/test_inner.py": (
                "def test_inner_run_crashes():\n"
                "    print('INTERNALERROR> Traceback (most recent call last):')\n"
                "    print('_____ ERROR collecting test_inner.py _____')\n"
                "    assert False, 'the inner run crashed'\n\n"
                "def test_other():\n    assert True\n"
            )
        },
    )
    log = run_tests(root, *PYTEST, "-s", "tests/test_inner.py")
    assert "INTERNALERROR> Traceback" in log and "FAILED tests/test_inner.py::test_inner_run_crashes" in log
    assert find_env_error(log, parsed_any=True, parsed_all=True) is None
    error = find_env_error(log, parsed_any=True, parsed_all=False)
    assert error is not None and error.strong


def test_a_test_that_wants_the_network_is_named(tmp_path: Path) -> None:
    """The line grading reports as `network_error` (validation's hint for tests that need the internet). The test
    raises what a socket raises in a container with networking off; nothing leaves this machine."""
    from envserver.env_errors import find_network_error

    root = project(
        tmp_path,
        {
            "tests/test_net.py": (
                "def test_fetch():\n"
                "    raise OSError(101, 'Network is unreachable')\n\n"
                "def test_local():\n    assert True\n"
            )
        },
    )
    log = run_tests(root, *PYTEST, "tests/test_net.py")
    assert "FAILED tests/test_net.py::test_fetch" in log
    assert find_network_error(log) == "OSError: [Errno 101] Network is unreachable"
    assert find_network_error(run_tests(root, *PYTEST, "tests/test_net.py::test_local")) is None
