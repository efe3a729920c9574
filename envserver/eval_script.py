"""The eval script the SWE-bench harness writes for a classic row, from its spec (envserver/specs).

For every SWE-bench row the text equals swebench 4.x's `make_test_spec(row).eval_script` (checked line for line on
all of SWE-bench Lite by tests/conformance/test_eval_script_oracle.py): activate the `testbed` environment, the
spec's eval commands, the informational git preamble, the spec's install again, reset the test files to the base
commit, apply the test patch, the test command on the test directives between swebench's output markers, reset
again. SWE-Gym rows get the same script with their fork's test command (mypy's `[case NAME]` keys instead of
files); the fork's own script differs only in `set -xo` for `set -uxo`, `git diff` for
`git -c core.fileMode=false diff` and no output markers, which grading needs.
"""

from __future__ import annotations

import re
import shlex

from swebench.harness.constants import END_TEST_OUTPUT, NON_TEST_EXTS, START_TEST_OUTPUT
from unidiff import PatchSet

from envserver.specs import ResolvedSpec
from envserver.tasks import TaskInstance

ENV_NAME = "testbed"
"""The conda environment every harness image (and ours) activates."""
HEREDOC_DELIMITER = "EOF_114329324912"
"""The harness's delimiter for the test patch here-document."""
_DIFF_TARGET = re.compile(r"diff --git a/.* b/(.*)")
_MYPY_CASE = re.compile(r"\[case ([^\]]+)\]")


def modified_files(patch: str) -> list[str]:
    """Files a patch changes that exist before it (the files to reset to the base commit), as the harness finds them."""
    return [
        patched.source_file[2:]
        for patched in PatchSet(patch)
        if patched.source_file != "/dev/null" and patched.source_file.startswith("a/")
    ]


def test_directives(task: TaskInstance, spec: ResolvedSpec) -> list[str]:
    """The arguments appended to the spec's test command for this row."""
    if spec.repo_spec.directives == "mypy_cases":
        # SWE-Gym's fork: every `[case NAME]` of the test patch, as one quoted pytest -k expression.
        return ['"' + " or ".join(_MYPY_CASE.findall(task.test_patch)) + '"']
    files = [path for path in _DIFF_TARGET.findall(task.test_patch) if not path.endswith(tuple(NON_TEST_EXTS))]
    if spec.repo_spec.directives == "django_modules":
        # django's runtests.py takes dotted module names relative to tests/.
        modules = []
        for path in files:
            path = path.removesuffix(".py")
            path = path.removeprefix("tests/")
            modules.append(path.replace("/", "."))
        return modules
    return files


def test_command(task: TaskInstance, spec: ResolvedSpec) -> str:
    """The spec's test command on this row's test directives."""
    return " ".join([spec.version_spec.test_cmd, *test_directives(task, spec)])


def eval_script_lines(task: TaskInstance, spec: ResolvedSpec) -> list[str]:
    """The script's commands, one per entry (the harness's `eval_script_list`)."""
    version = spec.version_spec
    workdir, base = task.workdir, task.base_commit
    reset_tests = f"git checkout {base} {' '.join(modified_files(task.test_patch))}"
    lines = ["source /opt/miniconda3/bin/activate", f"conda activate {ENV_NAME}", f"cd {workdir}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in version.env_vars.items()]
    lines += version.eval_commands
    lines += [
        f"git config --global --add safe.directory {workdir}",
        f"cd {workdir}",
        "git status",
        "git show",
        f"git -c core.fileMode=false diff {base}",
        "source /opt/miniconda3/bin/activate",
        f"conda activate {ENV_NAME}",
    ]
    if version.install is not None:
        lines.append(version.install)
    lines += [
        reset_tests,
        f"git apply -v - <<'{HEREDOC_DELIMITER}'\n{task.test_patch}\n{HEREDOC_DELIMITER}",
        f": '{START_TEST_OUTPUT}'",
        test_command(task, spec),
        f": '{END_TEST_OUTPUT}'",
        reset_tests,
    ]
    return lines


def make_eval_script(task: TaskInstance, spec: ResolvedSpec) -> str:
    """The whole eval script (`#!/bin/bash`, `set -uxo pipefail`, the commands), as the harness writes it."""
    return "\n".join(["#!/bin/bash", "set -uxo pipefail", *eval_script_lines(task, spec)]) + "\n"


def parser_name(spec: ResolvedSpec) -> str:
    """The log parser that reads this repository's test output (a key of swebench's PARSER_REGISTRY)."""
    assert spec.repo_spec.parser is not None, "SpecTable.load rejects repositories without a parser"
    return spec.repo_spec.parser
