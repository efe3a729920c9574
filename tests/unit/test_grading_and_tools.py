"""Grading script shape and log evaluation through swebench's own functions; tool-call validation."""

from __future__ import annotations

import pytest

from envserver import grading, tools
from envserver.tasks import TaskInstance

TASK = TaskInstance(
    instance_id="o__r-1",
    repo="o/r",
    base_commit="abc1234",
    problem_statement="p",
    test_patch="diff --git a/tests/test_a.py b/tests/test_a.py\n--- a/tests/test_a.py\n+++ b/tests/test_a.py\n",
    FAIL_TO_PASS=["tests/test_a.py::test_new"],
    PASS_TO_PASS=["tests/test_a.py::test_old"],
    eval={"test_cmd": "python3 -m pytest -rA", "log_parser": "pytest"},
)


def _log(lines: list[str], exit_code: int) -> str:
    return "\n".join(
        [
            ">>>>> Applied Patch",
            "+ : '>>>>> Start Test Output'",
            *lines,
            "+ : '>>>>> End Test Output'",
            f">>>>> Test Exit Code: {exit_code}",
        ]
    )


def test_eval_script_runs_the_test_files_between_markers():  # type: ignore[no-untyped-def]
    script = grading.test_spec_for(TASK, "img").eval_script
    assert "python3 -m pytest -rA tests/test_a.py" in script
    assert (
        script.index(">>>>> Start Test Output")
        < script.index("pytest -rA tests/")
        < script.index(">>>>> End Test Output")
    )
    assert "git apply -v -" in script and TASK.test_patch.strip() in script
    assert "SWEBENCH_TEST_EXIT_CODE=$?" in script  # swebench's exit-status cross-check is in place


def test_evaluate_log_resolved_and_not():  # type: ignore[no-untyped-def]
    spec = grading.test_spec_for(TASK, "img")
    tests, resolved, found = grading.evaluate_log(
        spec, _log(["PASSED tests/test_a.py::test_new", "PASSED tests/test_a.py::test_old"], 0)
    )
    assert resolved and found and tests["FAIL_TO_PASS"]["success"] == ["tests/test_a.py::test_new"]
    tests, resolved, _ = grading.evaluate_log(
        spec, _log(["FAILED tests/test_a.py::test_new - assert 1 == 2", "PASSED tests/test_a.py::test_old"], 1)
    )
    assert not resolved and tests["FAIL_TO_PASS"]["failure"] == ["tests/test_a.py::test_new"]
    # A log claiming success while the test command failed is not believed (swebench's cross-check).
    _, resolved, found = grading.evaluate_log(
        spec, _log(["PASSED tests/test_a.py::test_new", "PASSED tests/test_a.py::test_old"], 2)
    )
    assert not resolved and not found


def test_task_without_eval_spec_is_a_clear_config_error():  # type: ignore[no-untyped-def]
    bare = TASK.model_copy(update={"eval": None})
    with pytest.raises(grading.GradingConfigError, match="neither `eval_script`"):
        grading.test_spec_for(bare, "img")
    with pytest.raises(grading.GradingConfigError, match="unknown log parser"):
        grading.parser_key("nosuchparser")


def test_tool_calls_validated():  # type: ignore[no-untyped-def]
    name, args = tools.parse_tool_call("execute_bash", {"command": "ls", "is_input": "true"})
    assert name == "execute_bash" and args.is_input is True
    assert tools.parse_tool_call("submit", {})[0] == "finish"
    with pytest.raises(tools.ToolCallError, match="unknown tool 'bash'"):
        tools.parse_tool_call("bash", {"command": "ls"})
    with pytest.raises(tools.ToolCallError, match="'command'"):
        tools.parse_tool_call("execute_bash", {})
    with pytest.raises(tools.ToolCallError, match="timeout"):
        tools.parse_tool_call("execute_bash", {"command": "ls", "timeout": -3})


def test_schemas_are_openai_function_tools():  # type: ignore[no-untyped-def]
    names = [schema["function"]["name"] for schema in tools.TOOL_SCHEMAS]
    assert names == ["execute_bash", "str_replace_editor", "finish"]
    for schema in tools.TOOL_SCHEMAS:
        assert schema["type"] == "function" and schema["function"]["parameters"]["type"] == "object"
