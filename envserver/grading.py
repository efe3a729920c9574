"""Grading (DESIGN.md decision 4): the agent's patch and the hidden test_patch are applied in a FRESH container from
the task image, the instance's test command runs there with networking off, and the swebench package's own log
parsers and report functions (`get_logs_eval`, `get_eval_tests_report`, `get_resolution_status`) decide.

Three sources of the test script:
- instances from swebench 5.x datasets carry `eval_script` / `log_parser` / `eval_type`: used as they are, through
  `swebench.harness.utils.make_test_spec` (a row without `log_parser` gets its repository's parser from the spec
  tables, never pytest's by default);
- instances with our `eval` field (the sample tasks, any custom set) get a script of the same shape built here:
  reset the test files, apply the test_patch, run the test command on the files it touches between swebench's
  output markers, record the exit status;
- classic SWE-bench / SWE-Gym rows (neither field) get the harness's own eval script and log parser from the spec
  tables (envserver/specs, envserver/eval_script.py).

A grade that could not be computed for a reason that is not the agent's (image missing, engine error, the test
run timed out or its container died, no test output at all) is an `infra_failure` with its reason, never a 0.

A test run that failed to collect or start (a missing dependency: `ImportError while loading conftest`, pytest exit
4; `ERROR collecting`; `no tests ran`; a usage error; django's and sympy's import failures) carries `env_error`, the
log line that says why (envserver/env_errors.py) — never a silent 0. Who is to blame:
- every FAIL_TO_PASS / PASS_TO_PASS test got a result: the run was complete; a plain grade, no `env_error`;
- some did: the tests ran; a plain grade (`env_error` names, say, the one test file that failed to collect);
- no test got a result, and the log shows the patch did it — the traceback runs through a file the patch changed,
  or the repository's own code lacks a name or module the fix adds (`cannot import name 'x' from 'pkg.mod'
  (/testbed/pkg/mod.py)`: the common case of a test_patch that imports what the fix adds, graded with no fix), or
  the missing module is one the patch imports: reward 0, not an infra failure;
- no test got a result otherwise: `infra_failure`, `infra_reason: "env_error: <line>"` (a trainer masks it; the
  grade cache never keeps it) — unless the task's environment is known to work (`environment_verified`: it passed
  validation, gold 1 / empty 0), in which case the failure is the patch's doing: reward 0, not infra.
With a verified environment the hidden test patch is known to apply too, so a test patch that fails to apply after
the model patch is the patch's doing as well (it rewrote what the test patch needs): reward 0, not infra.
"""

from __future__ import annotations

import asyncio
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from swebench.harness.constants import (
    APPLY_PATCH_FAIL,
    APPLY_PATCH_PASS,
    END_TEST_OUTPUT,
    FAIL_TO_PASS,
    PASS_TO_PASS,
    START_TEST_OUTPUT,
    TEST_EXIT_CODE_VAR,
    ResolvedStatus,
)
from swebench.harness.grading import (
    get_eval_tests_report,
    get_logs_eval,
    get_resolution_status,
)
from swebench.harness.log_parsers import PARSER_REGISTRY
from swebench.harness.utils import make_test_spec
from swebench.types import TestSpec

from envserver import log_parsers  # noqa: F401 - registers our parsers in swebench's PARSER_REGISTRY
from envserver.env_errors import find_env_error, find_network_error, patch_caused
from envserver.eval_script import make_eval_script, parser_name
from envserver.git_diff import split_patch
from envserver.protected_paths import command_paths
from envserver.sandbox.base import SandboxBackend, SandboxError, SandboxSpec
from envserver.tasks import TaskInstance
from envserver.wire import GradeReport

GRADE_DIR = "/.envserver/grade"
HEREDOC = "EOF_ENVSERVER_114329324912"
TEST_PATCH_FAIL = ">>>>> Test Patch Apply Failed"
OUTPUT_TAIL_CHARS = 4000
GRADE_LOG_BYTES = 32 * 2**20
"""How much of a test run's output is read: all of any real one (a verbose suite prints MBs, and a cut that drops
the start marker would turn a run into `no_test_output`)."""


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
        # Undo anything the agent did to the hidden test files. One checkout per file: a single `git checkout` of
        # several paths restores none of them when one (a file the test_patch creates) is missing at base.
        restore = f'for f in {quoted_files}; do git checkout -q {task.base_commit} -- "$f" 2>/dev/null || true; done'
        lines += [restore, f"rm -f -- {quoted_files}", restore]
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
        instance["log_parser"] = parser_key(str(extra["log_parser"]) if extra.get("log_parser") else _repo_parser(task))
        return make_test_spec(instance)
    if task.eval is None:
        return _classic_test_spec(task, image)
    return _script_test_spec(task, image, parser_key(task.eval.log_parser), build_eval_script(task))


def _script_test_spec(task: TaskInstance, image: str, log_parser: str, eval_script: str) -> TestSpec:
    """swebench's TestSpec for a task whose eval script and parser the server wrote or looked up."""
    return make_test_spec(
        {
            "instance_id": task.instance_id,
            "image": image,
            "repo": task.repo,
            "version": task.version or "",
            "FAIL_TO_PASS": task.FAIL_TO_PASS,
            "PASS_TO_PASS": task.PASS_TO_PASS,
            "log_parser": log_parser,
            "eval_type": "pass_and_fail",
            "eval_script": eval_script,
        }
    )


def _repo_parser(task: TaskInstance) -> str:
    """The log parser the spec tables name for the task's repository (for swebench-5 rows without `log_parser`)."""
    repo_spec = task.spec_table.repo(task.repo)
    if repo_spec is None or repo_spec.parser is None:
        raise GradingConfigError(
            f"task {task.instance_id} has an `eval_script` but no `log_parser`, and no spec table knows repo "
            f"{task.repo!r}: the server cannot know how to read its test output"
        )
    return repo_spec.parser


def _classic_test_spec(task: TaskInstance, image: str) -> TestSpec:
    """A classic row: the harness's eval script and parser from the task's spec table."""
    spec = task.spec()
    if spec is None:
        raise GradingConfigError(
            f"task {task.instance_id} has neither `eval_script` (swebench 5 datasets) nor `eval` (test_cmd + "
            f"log_parser), and no spec table knows repo {task.repo!r} version {task.version!r}: the server cannot "
            "know how to run its tests"
        )
    return _script_test_spec(task, image, parser_key(parser_name(spec)), make_eval_script(task, spec))


def test_command(eval_script: str) -> str:
    """The lines of an eval script between swebench's output markers: the test command."""
    lines = eval_script.split("\n")
    start = next((i for i, line in enumerate(lines) if START_TEST_OUTPUT in line), None)
    end = next((i for i, line in enumerate(lines) if END_TEST_OUTPUT in line), None)
    if start is None or end is None:
        return ""
    return "\n".join(line for line in lines[start + 1 : end] if not line.startswith(TEST_EXIT_CODE_VAR))


def runner_files(task: TaskInstance, image: str | None) -> list[str]:
    """Repository files the task's test command runs as its program (django's tests/runtests.py, sympy's bin/test):
    test infrastructure for the patch policy. [] when the task has no eval script."""
    try:
        script = test_spec_for(task, image or "").eval_script
    except GradingConfigError:
        return []
    hidden = set(task.test_files())
    return [path for path in command_paths(test_command(script)) if path not in hidden]


def runner_script(workdir: str) -> str:
    """Applies the model patch the way the swebench harness does (git apply, then patch --fuzz), then the eval."""
    patch = f"{GRADE_DIR}/model.patch"
    return (
        "\n".join(
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
        )
        + "\n"
    )


def evaluate_log(test_spec: TestSpec, log: str) -> tuple[dict[str, dict[str, list[str]]], bool, bool]:
    """(per-test report, resolved, the log had usable results) via swebench's own functions."""
    tests, resolved, found, _ = _evaluate(test_spec, log)
    return tests, resolved, found


def _evaluate(test_spec: TestSpec, log: str) -> tuple[dict[str, dict[str, list[str]]], bool, bool, dict[str, str]]:
    """`evaluate_log` and the parser's status map (test → status) it was computed from."""
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
    return tests, resolved, found, status_map


def parsed_tests(test_spec: TestSpec, log: str) -> set[str]:
    """FAIL_TO_PASS / PASS_TO_PASS tests the log parser finds a status for, whatever swebench then makes of the log
    (it drops every result of a run whose exit status contradicts them)."""
    parser = PARSER_REGISTRY[test_spec.log_parser]
    output = log.split(START_TEST_OUTPUT, 1)[-1].split(END_TEST_OUTPUT, 1)[0]
    # Like get_logs_eval: some runners print their results outside the markers.
    status_map = parser(output, test_spec) or parser(log, test_spec) or {}
    return set(status_map) & {*test_spec.FAIL_TO_PASS, *test_spec.PASS_TO_PASS}


@dataclass(frozen=True)
class _GradeRun:
    """One grade in progress: what each of its possible reports carries."""

    model_patch: str
    environment_verified: bool
    started: float
    """time.monotonic() when grading began (for `duration_s`)."""

    def infra(self, reason: str, log: str = "", applied: bool | None = None, **fields: object) -> GradeReport:
        """An infrastructure failure: not a grade of the patch (masked by the trainer, never cached)."""
        return GradeReport.model_validate(
            dict(
                resolved=False,
                reward=0.0,
                infra_failure=True,
                infra_reason=reason,
                patch_applied=applied,
                model_patch=self.model_patch,
                test_output_tail=log[-OUTPUT_TAIL_CHARS:],
                duration_s=time.monotonic() - self.started,
                environment_verified=self.environment_verified,
                **fields,
            )
        )

    def counted(self, log: str, **fields: object) -> GradeReport:
        """A grade that counts (not an infra failure)."""
        values: dict[str, object] = {
            "resolved": False,
            "reward": 0.0,
            "infra_failure": False,
            "patch_applied": True,
            "model_patch": self.model_patch,
            "test_output_tail": log[-OUTPUT_TAIL_CHARS:],
            "duration_s": time.monotonic() - self.started,
            "environment_verified": self.environment_verified,
        }
        return GradeReport.model_validate({**values, **fields})


async def grade(
    backend: SandboxBackend,
    task: TaskInstance,
    image: str | None,
    model_patch: str,
    limits: SandboxSpec,
    timeout_s: float,
    labels: dict[str, str],
    *,
    environment_verified: bool = False,
) -> GradeReport:
    """Grade `model_patch` for `task` in a fresh container of `image` (networking off, same limits as episodes).

    `environment_verified`: the task's environment is known to work (it passed validation): a run that fails to
    collect or start is then the patch's doing, never an infra failure (module docstring)."""
    run = _GradeRun(model_patch=model_patch, environment_verified=environment_verified, started=time.monotonic())
    if task.eval is not None:
        timeout_s = min(timeout_s, task.eval.timeout_s)
    if image is None:
        return run.infra("image_missing: no image for this task on the docker host")
    try:
        test_spec = test_spec_for(task, image)
    except GradingConfigError as exc:
        return run.infra(f"no_eval_spec: {exc}")
    container = grading_container(task, image, test_spec.eval_script, model_patch, limits, labels)
    try:
        exit_code, log = await run_to_end(backend, container, timeout_s)
    except SandboxError as exc:
        return run.infra(f"{exc.reason}: {exc}")
    if exit_code is None:
        return run.infra(f"test_timeout: the test run exceeded {timeout_s:.0f} s", log)
    unfinished = _unfinished_run_report(run, exit_code, log)
    return unfinished if unfinished is not None else _tests_report(run, task, test_spec, log)


def grading_container(
    task: TaskInstance, image: str, eval_script: str, model_patch: str, limits: SandboxSpec, labels: dict[str, str]
) -> SandboxSpec:
    """The grading container: the task image with networking off and the episodes' limits, holding the model patch,
    the eval script and the runner that applies the one and runs the other."""
    return SandboxSpec(
        image=image,
        labels=labels,
        cpus=limits.cpus,
        memory=limits.memory,
        pids_limit=limits.pids_limit,
        network=False,
        command=["/bin/bash", f"{GRADE_DIR}/run.sh"],
        files={
            f"{GRADE_DIR}/model.patch": model_patch.encode("utf-8"),
            f"{GRADE_DIR}/eval.sh": eval_script.encode("utf-8"),
            f"{GRADE_DIR}/run.sh": runner_script(task.workdir).encode("utf-8"),
        },
    )


async def run_to_end(backend: SandboxBackend, spec: SandboxSpec, timeout_s: float) -> tuple[int | None, str]:
    """Start the container and wait for its command to end: (exit status, None past `timeout_s`; its output). The
    container is removed whatever happens; SandboxError when the engine fails."""
    sandbox = await backend.create(spec)
    try:
        exit_code = await sandbox.wait(timeout=timeout_s)
        log = await sandbox.logs(tail_bytes=GRADE_LOG_BYTES)
    finally:
        await asyncio.shield(sandbox.remove())
    return exit_code, log


def _unfinished_run_report(run: _GradeRun, exit_code: int, log: str) -> GradeReport | None:
    """The report of a run whose log shows the tests did not run: a patch that did not apply, a dead container,
    tests that never started. None when they ran."""
    if APPLY_PATCH_FAIL in log:
        return run.counted(log, patch_applied=False)
    if TEST_PATCH_FAIL in log:
        if run.environment_verified:
            return run.counted(log)
        return run.infra("test_patch_failed: the hidden test patch did not apply", log, True)
    if exit_code in (137, 139) and END_TEST_OUTPUT not in log:
        return run.infra(f"container_died: the test container exited with {exit_code}", log, True)
    if START_TEST_OUTPUT not in log:
        return run.infra(f"no_test_output: the tests never started (exit {exit_code})", log, True)
    return None


def _tests_report(run: _GradeRun, task: TaskInstance, test_spec: TestSpec, log: str) -> GradeReport:
    """The grade of a run whose tests ran: swebench's verdict on the log, with the `env_error` of a run that failed
    to collect, an infra failure when no test got a result and the patch is not to blame (module docstring)."""
    tests, resolved, _, _ = _evaluate(test_spec, log)
    wanted = [*test_spec.FAIL_TO_PASS, *test_spec.PASS_TO_PASS]
    parsed = parsed_tests(test_spec, log)
    ran = bool(parsed) or not wanted
    error = find_env_error(log, parsed_any=ran, parsed_all=bool(wanted) and parsed >= set(wanted))
    env_error = error.line if error else None
    if error is not None and not ran and not run.environment_verified:
        patch_paths = [path for file_patch in split_patch(run.model_patch)[1] for path in file_patch.paths]
        fix_paths = [path for file_patch in split_patch(task.patch)[1] for path in file_patch.paths]
        if not patch_caused(error, patch_paths, run.model_patch, fix_paths, task.workdir):
            return run.infra(f"env_error: {error.line}", log, True, env_error=env_error, tests=tests)
    network_error = None if resolved else find_network_error(log)
    return run.counted(
        log,
        resolved=resolved,
        reward=1.0 if resolved else 0.0,
        tests=tests,
        env_error=env_error,
        network_error=network_error,
    )
