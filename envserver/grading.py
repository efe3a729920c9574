"""Grading (DESIGN.md decision 4): the agent's patch and the hidden test_patch are applied in a FRESH container from
the task image, the instance's test command runs there with networking off, and the swebench package's own log
parsers and report functions (`get_logs_eval`, `get_eval_tests_report`, `get_resolution_status`) decide.

Two sources of the test script:
- instances from swebench 5.x datasets carry `eval_script` / `log_parser` / `eval_type`: used as they are, through
  `swebench.harness.utils.make_test_spec`;
- instances with our `eval` field (the sample tasks, any custom set) get a script of the same shape built here:
  reset the test files, apply the test_patch, run the test command on the files it touches between swebench's
  output markers, record the exit status.

A grade that could not be computed for a reason that is not the agent's (image missing, engine error, the test
run timed out or its container died, no test output at all) is an `infra_failure` with its reason, never a 0.
"""

from __future__ import annotations

import asyncio
import shlex
import tempfile
import time
from pathlib import Path

from swebench.harness.constants import (
    APPLY_PATCH_FAIL,
    APPLY_PATCH_PASS,
    END_TEST_OUTPUT,
    FAIL_TO_PASS,
    PASS_TO_PASS,
    START_TEST_OUTPUT,
    ResolvedStatus,
)
from swebench.harness.grading import get_eval_tests_report, get_logs_eval, get_resolution_status
from swebench.harness.log_parsers import PARSER_REGISTRY
from swebench.harness.utils import make_test_spec
from swebench.types import TestSpec

from envserver.sandbox.base import SandboxBackend, SandboxError, SandboxSpec
from envserver.tasks import TaskInstance
from envserver.wire import GradeReport

GRADE_DIR = "/.envserver/grade"
HEREDOC = "EOF_ENVSERVER_114329324912"
TEST_PATCH_FAIL = ">>>>> Test Patch Apply Failed"
OUTPUT_TAIL_CHARS = 4000


class GradingConfigError(ValueError):
    """The task says nothing about how to run its tests."""


def parser_key(name: str) -> str:
    """Accept `pytest` as well as swebench's own `parse_log_pytest`."""
    key = name if name.startswith("parse_log_") else f"parse_log_{name}"
    if key not in PARSER_REGISTRY:
        raise GradingConfigError(f"unknown log parser {name!r}; swebench has: {', '.join(sorted(PARSER_REGISTRY))}")
    return key


def build_eval_script(task: TaskInstance) -> str:
    """The eval script for a task with our `eval` field, in the shape of swebench's own scripts."""
    assert task.eval is not None
    test_files = task.test_files()
    quoted_files = " ".join(shlex.quote(path) for path in test_files)
    lines = [f"cd {shlex.quote(task.workdir)}", *task.eval.pre_test]
    if test_files:
        # Undo anything the agent did to the hidden test files (missing files at base make git complain; harmless).
        lines.append(f"git checkout -q {task.base_commit} -- {quoted_files} 2>/dev/null || true")
        lines.append(f"rm -f -- {quoted_files}")
        lines.append(f"git checkout -q {task.base_commit} -- {quoted_files} 2>/dev/null || true")
    if task.test_patch.strip():
        lines += [
            f"git apply -v - <<'{HEREDOC}' || {{ echo '{TEST_PATCH_FAIL}'; exit 3; }}",
            task.test_patch.rstrip("\n"),
            HEREDOC,
        ]
    lines += [
        f": '{START_TEST_OUTPUT}'",
        f"{task.eval.test_cmd} {quoted_files}".rstrip(),
        f": '{END_TEST_OUTPUT}'",
    ]
    return "\n".join(["#!/bin/bash", "set -uxo pipefail", *lines]) + "\n"


def test_spec_for(task: TaskInstance, image: str) -> TestSpec:
    """swebench's TestSpec for the task (its eval script, parser and F2P/P2P lists)."""
    extra = task.model_extra or {}
    if extra.get("eval_script"):
        instance = task.model_dump()
        instance.update(image=image, version=task.version or "", eval_type=extra.get("eval_type", "pass_and_fail"))
        instance["log_parser"] = parser_key(str(extra.get("log_parser", "parse_log_pytest")))
        return make_test_spec(instance)
    if task.eval is None:
        raise GradingConfigError(
            f"task {task.instance_id} has neither `eval_script` (swebench 5 datasets) nor `eval` (test_cmd + "
            "log_parser): the server cannot know how to run its tests"
        )
    return make_test_spec(
        {
            "instance_id": task.instance_id,
            "image": image,
            "repo": task.repo,
            "version": task.version or "",
            "FAIL_TO_PASS": task.FAIL_TO_PASS,
            "PASS_TO_PASS": task.PASS_TO_PASS,
            "log_parser": parser_key(task.eval.log_parser),
            "eval_type": "pass_and_fail",
            "eval_script": build_eval_script(task),
        }
    )


def runner_script(workdir: str) -> str:
    """Applies the model patch the way the swebench harness does (git apply, then patch --fuzz), then the eval."""
    patch = f"{GRADE_DIR}/model.patch"
    return "\n".join(
        [
            "#!/bin/bash",
            "exec 2>&1",
            f"cd {shlex.quote(workdir)} || exit 90",
            f"if [ -s {patch} ]; then",
            f"  if git apply --verbose {patch} || patch --batch --fuzz=5 -p1 -i {patch}; then",
            f"    echo '{APPLY_PATCH_PASS}'",
            "  else",
            f"    echo '{APPLY_PATCH_FAIL}'; exit 0",
            "  fi",
            "else",
            f"  echo '{APPLY_PATCH_PASS} (empty patch)'",
            "fi",
            f"bash {GRADE_DIR}/eval.sh",
        ]
    ) + "\n"


def evaluate_log(test_spec: TestSpec, log: str) -> tuple[dict[str, dict[str, list[str]]], bool, bool]:
    """(per-test report, resolved, the log had usable results) via swebench's own functions."""
    with tempfile.NamedTemporaryFile("w", suffix=".log", encoding="utf-8", delete=False) as handle:
        handle.write(log)
        log_path = handle.name
    try:
        status_map, found = get_logs_eval(test_spec, log_path)
    finally:
        Path(log_path).unlink(missing_ok=True)
    gold = {FAIL_TO_PASS: test_spec.FAIL_TO_PASS, PASS_TO_PASS: test_spec.PASS_TO_PASS}
    report = get_eval_tests_report(status_map, gold)
    tests = {key: report[key] for key in (FAIL_TO_PASS, PASS_TO_PASS)}
    resolved = found and get_resolution_status(report) == ResolvedStatus.FULL.value
    return tests, resolved, found


def _infra(reason: str, started: float, model_patch: str, tail: str = "", applied: bool | None = None) -> GradeReport:
    return GradeReport(
        resolved=False,
        reward=0.0,
        infra_failure=True,
        infra_reason=reason,
        patch_applied=applied,
        model_patch=model_patch,
        test_output_tail=tail[-OUTPUT_TAIL_CHARS:],
        duration_s=time.monotonic() - started,
    )


async def grade(
    backend: SandboxBackend,
    task: TaskInstance,
    image: str | None,
    model_patch: str,
    limits: SandboxSpec,
    timeout_s: float,
    labels: dict[str, str],
) -> GradeReport:
    """Grade `model_patch` for `task` in a fresh container of `image` (networking off, same limits as episodes)."""
    started = time.monotonic()
    if task.eval is not None:
        timeout_s = min(timeout_s, task.eval.timeout_s)
    if image is None:
        return _infra("image_missing: no image for this task on the docker host", started, model_patch)
    try:
        test_spec = test_spec_for(task, image)
    except GradingConfigError as exc:
        return _infra(f"no_eval_spec: {exc}", started, model_patch)
    spec = SandboxSpec(
        image=image,
        labels=labels,
        cpus=limits.cpus,
        memory=limits.memory,
        pids_limit=limits.pids_limit,
        network=False,
        command=["/bin/bash", f"{GRADE_DIR}/run.sh"],
        files={
            f"{GRADE_DIR}/model.patch": model_patch.encode("utf-8"),
            f"{GRADE_DIR}/eval.sh": test_spec.eval_script.encode("utf-8"),
            f"{GRADE_DIR}/run.sh": runner_script(task.workdir).encode("utf-8"),
        },
    )
    try:
        sandbox = await backend.create(spec)
    except SandboxError as exc:
        return _infra(f"{exc.reason}: {exc}", started, model_patch)
    try:
        exit_code = await sandbox.wait(timeout=timeout_s)
        log = await sandbox.logs()
    except SandboxError as exc:
        return _infra(f"{exc.reason}: {exc}", started, model_patch)
    finally:
        await asyncio.shield(sandbox.remove())
    if exit_code is None:
        return _infra(f"test_timeout: the test run exceeded {timeout_s:.0f} s", started, model_patch, log)
    if APPLY_PATCH_FAIL in log:
        return GradeReport(
            resolved=False, reward=0.0, infra_failure=False, patch_applied=False, model_patch=model_patch,
            test_output_tail=log[-OUTPUT_TAIL_CHARS:], duration_s=time.monotonic() - started,
        )
    if TEST_PATCH_FAIL in log:
        return _infra("test_patch_failed: the hidden test patch did not apply", started, model_patch, log, True)
    if exit_code in (137, 139) and END_TEST_OUTPUT not in log:
        return _infra(f"container_died: the test container exited with {exit_code}", started, model_patch, log, True)
    if START_TEST_OUTPUT not in log:
        return _infra(f"no_test_output: the tests never started (exit {exit_code})", started, model_patch, log, True)
    tests, resolved, _ = evaluate_log(test_spec, log)
    return GradeReport(
        resolved=resolved,
        reward=1.0 if resolved else 0.0,
        infra_failure=False,
        patch_applied=True,
        model_patch=model_patch,
        tests=tests,
        test_output_tail=log[-OUTPUT_TAIL_CHARS:],
        duration_s=time.monotonic() - started,
    )
