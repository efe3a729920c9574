"""Task files meet spec tables at load time: a classic row nobody can grade is rejected when its file is read
(naming file, record, repo, version and what to add), not when its first episode finishes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from envserver import grading
from envserver.specs import SpecTable
from envserver.tasks import SAMPLE_TASKS_PATH, TaskFileError, TaskInstance, load_task_sets, load_tasks

ROOT = Path(__file__).resolve().parents[2]
TEST_PATCH = (
    "diff --git a/tests/test_w.py b/tests/test_w.py\n--- a/tests/test_w.py\n+++ b/tests/test_w.py\n"
    "@@ -1 +1,2 @@\n x = 1\n+y = 2\n"
)
CLASSIC = {
    "instance_id": "octo__widgets-7",
    "repo": "octo/widgets",
    "version": "0.7",
    "base_commit": "0123abcd",
    "problem_statement": "p",
    "patch": "",
    "test_patch": TEST_PATCH,
    "FAIL_TO_PASS": '["tests/test_w.py::test_y"]',
    "PASS_TO_PASS": "[]",
    "environment_setup_commit": "0123abcd",
}
USER_SPEC = """\
repos:
  octo/widgets:
    parser: parse_log_pytest_options
    versions:
      "0.7":
        python: "3.11"
        install: python -m pip install -e .
        test_cmd: pytest -rA -p no:cacheprovider
"""


def _write(tmp_path: Path, *records: dict) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_classic_row_without_spec_is_rejected_at_load(tmp_path):  # type: ignore[no-untyped-def]
    sample = json.loads(SAMPLE_TASKS_PATH.read_text().splitlines()[0])
    path = _write(tmp_path, sample, CLASSIC)
    with pytest.raises(TaskFileError) as excinfo:
        load_tasks(path)
    message = str(excinfo.value)
    for part in (str(path), "line 2", "octo__widgets-7", "repo 'octo/widgets'", "version '0.7'", "--specs", "`eval`"):
        assert part in message, part
    # A known repository at a version its table does not list is just as unknown.
    django = {**CLASSIC, "instance_id": "django__django-1", "repo": "django/django", "version": "0.1"}
    with pytest.raises(TaskFileError, match="repo 'django/django' version '0.1' has no spec"):
        load_tasks(_write(tmp_path, django))


def test_user_spec_file_makes_the_row_gradable(tmp_path):  # type: ignore[no-untyped-def]
    spec_file = tmp_path / "widgets.yaml"
    spec_file.write_text(USER_SPEC)
    [task] = load_tasks(_write(tmp_path, CLASSIC), SpecTable.load([spec_file]))
    test_spec = grading.test_spec_for(task, "img")
    assert test_spec.log_parser == "parse_log_pytest_options"
    lines = test_spec.eval_script.splitlines()
    assert "pytest -rA -p no:cacheprovider tests/test_w.py" in lines
    assert "python -m pip install -e ." in lines and "conda activate testbed" in lines
    assert load_task_sets([_write(tmp_path, CLASSIC)], SpecTable.load([spec_file]))["octo__widgets-7"] is not None


def test_classic_swebench_row_grades_with_the_harness_script_and_parser(tmp_path):  # type: ignore[no-untyped-def]
    row = {
        **CLASSIC,
        "instance_id": "django__django-11099",
        "repo": "django/django",
        "version": "3.0",
        "test_patch": TEST_PATCH.replace("tests/test_w.py", "tests/auth_tests/test_validators.py"),
    }
    [task] = load_tasks(_write(tmp_path, row))  # the bundled tables by default
    test_spec = grading.test_spec_for(task, "img")
    assert test_spec.log_parser == "parse_log_django"
    assert (
        "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 auth_tests.test_validators"
        in test_spec.eval_script
    )


def test_swebench5_rows_need_a_parser_from_the_row_or_the_tables(tmp_path):  # type: ignore[no-untyped-def]
    script = "#!/bin/bash\nset -uxo pipefail\n: '>>>>> Start Test Output'\npytest -rA\n: '>>>>> End Test Output'\n"
    # Known repository, no log_parser: the repository's parser, not pytest's.
    known = {**CLASSIC, "instance_id": "sympy__sympy-1", "repo": "sympy/sympy", "version": "9.9", "eval_script": script}
    [task] = load_tasks(_write(tmp_path, known))
    assert grading.test_spec_for(task, "img").log_parser == "parse_log_sympy"
    # Its own log_parser wins.
    [task] = load_tasks(_write(tmp_path, {**known, "log_parser": "parse_log_pytest"}))
    assert grading.test_spec_for(task, "img").log_parser == "parse_log_pytest"
    # Unknown repository, no log_parser: rejected at load, and a GradingConfigError if it is graded anyway.
    unknown = {**CLASSIC, "eval_script": script}
    with pytest.raises(TaskFileError, match="`eval_script` but no `log_parser`.*octo/widgets"):
        load_tasks(_write(tmp_path, unknown))
    with pytest.raises(grading.GradingConfigError, match="no `log_parser`"):
        grading.test_spec_for(TaskInstance.model_validate(unknown), "img")
    [task] = load_tasks(_write(tmp_path, {**unknown, "log_parser": "parse_log_pytest"}))
    assert grading.test_spec_for(task, "img").log_parser == "parse_log_pytest"


def test_sample_tasks_still_load():  # type: ignore[no-untyped-def]
    tasks = load_tasks(SAMPLE_TASKS_PATH)
    assert tasks and all(task.eval is not None for task in tasks)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    # `serve` reads its task and spec files before it touches Docker: these errors need no engine.
    return subprocess.run(
        [sys.executable, "-m", "envserver", "serve", "--port", "1", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # ~4 s CPU: left out of scripts/test.sh --fast
def test_serve_rejects_unknown_rows_and_bad_spec_files(tmp_path):  # type: ignore[no-untyped-def]
    rows = _write(tmp_path, CLASSIC)
    result = _serve("--tasks", str(rows))
    assert result.returncode == 2 and "repo 'octo/widgets' version '0.7' has no spec" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("repos:\n  octo/widgets:\n    parser: parse_log_pytest\n    versions:\n      '0.7': {python: '3'}\n")
    result = _serve("--tasks", str(rows), "--specs", str(bad))
    assert result.returncode == 2 and str(bad) in result.stderr and "versions.0.7.test_cmd" in result.stderr


@pytest.mark.slow  # ~6 s CPU: left out of scripts/test.sh --fast
def test_serve_checks_the_patch_policy_settings(tmp_path):  # type: ignore[no-untyped-def]
    """A row's `patch_policy` is checked when the task file is loaded, the server's at start-up: exit 2, named."""
    from envserver.tasks import SAMPLE_TASKS_PATH

    row = json.loads(SAMPLE_TASKS_PATH.read_text().splitlines()[0])
    rows = _write(tmp_path, {**row, "patch_policy": "lenient"})
    result = _serve("--tasks", str(rows))
    assert result.returncode == 2 and "line 1" in result.stderr and "field 'patch_policy'" in result.stderr
    result = _serve("--patch-policy", "lenient")
    assert result.returncode == 2 and "patch_policy" in result.stderr
    result = _serve("--max-patch-bytes", "0")
    assert result.returncode == 2 and "max_patch_bytes" in result.stderr


@pytest.mark.slow  # ~11 s CPU: left out of scripts/test.sh --fast
def test_unreadable_task_and_config_files_are_one_line(tmp_path):  # type: ignore[no-untyped-def]
    """A non-UTF-8 task file, a file that is not parquet, a config with an unknown key, broken YAML or no file: exit 2
    with one line naming the file and what is wrong, never a traceback."""
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'\xff\xfe{"instance_id": 1}\n')
    fake = tmp_path / "rows.parquet"
    fake.write_text("not parquet")
    typo = tmp_path / "typo.yaml"
    typo.write_text("max_sesions: 3\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("max_sessions: [\n")
    cases = [
        (("--tasks", str(latin)), "not UTF-8 text"),
        (("--tasks", str(fake)), "not a readable parquet file"),
        (("--config", str(typo)), "max_sesions: Extra inputs are not permitted"),
        (("--config", str(broken)), "not valid YAML (line 2"),
        (("--config", str(tmp_path / "absent.yaml")), "cannot be read"),
        (("--set", "max_sessions"), "--set expects KEY=VALUE"),
        (("--set", "sandbox.memory=[1"), "not valid YAML"),
        (("--set", "max_sessions=many"), "max_sessions: Input should be a valid integer"),
    ]
    for args, words in cases:
        result = _serve(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and words in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
