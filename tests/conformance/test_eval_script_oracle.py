"""Oracle: for every row of SWE-bench Lite (300 classic rows, as published), our eval script equals, line for line,
the one swebench 4.x's `make_test_spec(row)` writes, and our log parser is its `MAP_REPO_TO_PARSER` choice.

swebench 4.1.0 (the last release with the spec tables) lives in its own venv, built by setup_swebench4_venv.sh
(scripts/test.sh runs it); eval_script_driver.py runs there and prints the reference scripts and parser names.
The test skips only when that venv cannot be built, never under CI. The rows come from
`shared/data/tasks/swe-bench-lite-test.json` (or $SWEBENCH_LITE_TASKS).

The grading path is checked too: `grading.test_spec_for` on the loaded row carries the same script (as swebench 5's
`make_test_spec` turns it into a command list, adding its two exit-status lines) and the same parser.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
from pathlib import Path

import pytest

from envserver import grading
from envserver.eval_script import make_eval_script, parser_name
from envserver.specs import SpecTable
from envserver.tasks import load_tasks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SETUP_SCRIPT = HERE / "setup_swebench4_venv.sh"
DRIVER = HERE / "eval_script_driver.py"
LITE = "data/tasks/swe-bench-lite-test.json"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI builds the reference venv and has the shared data: a missing one is a failure
    pytest.skip(reason)


@pytest.fixture(scope="module")
def rows_path() -> Path:
    candidates = [os.environ.get("SWEBENCH_LITE_TASKS", ""), ROOT / "shared" / LITE, ROOT.parent / "shared" / LITE]
    found = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        _unavailable(f"SWE-bench Lite rows not found (shared/{LITE}; or set SWEBENCH_LITE_TASKS)")
    return found


@pytest.fixture(scope="module")
def reference(rows_path: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("SWEBENCH4_VENV", str(ROOT / ".venv-swebench4"))
    try:
        built = subprocess.run(
            ["bash", str(SETUP_SCRIPT)], check=False, capture_output=True, text=True, env=env, timeout=1800
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"the swebench 4.1.0 reference venv could not be built: {exc}")
    if built.returncode != 0:
        _unavailable(
            f"the swebench 4.1.0 reference venv could not be built (setup_swebench4_venv.sh exited "
            f"{built.returncode}): {built.stderr.strip()[-2000:]}"
        )
    python = built.stdout.strip().splitlines()[-1]
    run = subprocess.run(
        [python, str(DRIVER), str(rows_path)], check=False, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"the reference driver failed:\n{run.stderr[-4000:]}"
    out = json.loads(run.stdout)
    assert out["swebench"].startswith("4."), out["swebench"]
    return out["rows"]


@pytest.fixture(scope="module")
def tasks(rows_path: Path) -> list:
    loaded = load_tasks(rows_path)  # the rows unmodified: none is rejected
    assert len(loaded) == 300
    return loaded


def test_eval_scripts_equal_the_harness_line_for_line(tasks, reference):  # type: ignore[no-untyped-def]
    table = SpecTable.load()
    mismatches = []
    for task in tasks:
        spec = table.lookup(task.repo, task.version)
        assert spec is not None, f"{task.instance_id}: no spec for {task.repo} {task.version}"
        expected = reference[task.instance_id]["eval_script"]
        ours = make_eval_script(task, spec)
        if ours.splitlines() != expected.splitlines() or ours != expected:
            diff = "".join(difflib.unified_diff(expected.splitlines(True), ours.splitlines(True), "swebench-4", "ours"))
            mismatches.append(f"{task.instance_id}:\n{diff[:3000]}")
    assert not mismatches, f"{len(mismatches)} of {len(tasks)} eval scripts differ:\n" + "\n".join(mismatches[:3])
    assert {task.repo for task in tasks} >= {"django/django", "sympy/sympy", "matplotlib/matplotlib"}


def test_parsers_equal_the_harness(tasks, reference):  # type: ignore[no-untyped-def]
    table = SpecTable.load()
    got = {task.instance_id: parser_name(table.lookup(task.repo, task.version)) for task in tasks}
    expected = {task.instance_id: reference[task.instance_id]["parser"] for task in tasks}
    assert got == expected


def test_grading_uses_the_harness_script_and_parser(tasks, reference):  # type: ignore[no-untyped-def]
    from swebench.harness.utils import parse_eval_script, record_test_exit_code

    for task in tasks:
        test_spec = grading.test_spec_for(task, "img")
        assert test_spec.log_parser == reference[task.instance_id]["parser"], task.instance_id
        # What swebench 5 makes of the reference script: the same commands, plus its exit-status lines.
        expected = record_test_exit_code(parse_eval_script(reference[task.instance_id]["eval_script"]))
        assert test_spec.eval_script_list == expected, task.instance_id
