"""Test runs that never got to run the tests: find the log line that says why, and whether the patch caused it.

A missing test dependency makes pytest stop before any test (`ImportError while loading conftest`, exit 4); graded
naively that is a 0 for the gold patch too — a silent zero an RL run would train on. `find_env_error` reads the test
command's output (between swebench's markers) for the line that says why; `envserver.grading` decides what the grade
makes of it (its module docstring).

Two strengths of evidence:
- pytest's own words for a run that failed to collect or start — `ImportError while loading conftest`, `ERROR
  collecting …`, `Interrupted: N errors during collection`, `no tests ran`, `ERROR: usage …` / `ERROR: file or
  directory not found`, `INTERNALERROR>` — are reported whenever they appear and some FAIL_TO_PASS / PASS_TO_PASS
  test has no result (with every one of them reported the run was complete: nothing is);
- generic ones — `ModuleNotFoundError`, `ImportError`, `SyntaxError`, a traceback, `command not found`, django's
  `ImproperlyConfigured` or `Ran 0 tests`, sympy's import failures — only when no test result was parsed at all
  (a failing test's own traceback often shows them). With nothing recognised and nothing parsed, the line says so
  and quotes the output's last line: never a silent 0.

`patch_caused` reads the same lines for signs that the submitted change, not the environment, broke the run: the
traceback passes through a file the patch changed (a syntax error, an import the patch added), a name is missing from
the repository's own code (`cannot import name 'x' from 'pkg.mod' (/testbed/pkg/mod.py)` — the common case of a
test_patch that imports what the fix adds, graded with no fix), or a module the fix creates is missing.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT
from swebench.harness.grading import parse_test_exit_code

MAX_LINE_CHARS = 500
"""An env_error line is cut to this length (a line can be a whole repr)."""
CAUSE_WINDOW = 80
"""Lines after a pytest headline searched for the exception that caused it."""

_STRONG = [
    re.compile(pattern)
    for pattern in (
        # Most specific first: the line that says why beats the one that says that.
        r"ImportError while loading conftest",
        r"ImportError while importing test module",
        r"^_+ ERROR collecting .+ _+$",
        # pytest's UsageError (unittest's "ERROR: test_x (…)" is a test result, not this)
        r"^ERROR: (usage|file or directory not found|not found|module or package not found)\b",
        r"error: unrecognized arguments",
        r"^INTERNALERROR> ",
        r"Interrupted: \d+ errors? during collection",
        r"^=* ?no tests ran( in |$)",
    )
]
_CAUSE = re.compile(
    r"^(E\s+)?([A-Za-z_][\w.]*(Error|Exception|Exit)|SyntaxError|IndentationError|TabError)\b(: .*)?$"
    r"|^[^:]+: error: "  # argparse, after pytest's "ERROR: usage: …"
)
_WEAK = re.compile(
    r"^(E\s+)?(ModuleNotFoundError|ImportError|SyntaxError|IndentationError|TabError): "
    r"|^Traceback \(most recent call last\)"
    r"|: command not found$"
    r"|: No such file or directory$"
    r"|ImproperlyConfigured"
    r"|^Ran 0 tests"
)
NETWORK_SIGNS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "nodename nor servname",
    "[Errno -3]",
    "[Errno 101]",
)
"""Log text of a test that tried to reach the network (grading runs with networking off)."""
_CANNOT_IMPORT = re.compile(r"cannot import name '([^']+)' from '([^']+)' \(([^)]+)\)")
_NO_MODULE = re.compile(r"No module named '([^']+)'")


@dataclass(frozen=True)
class EnvError:
    """Why a test run did not run the tests, as its log says."""

    line: str
    """The log line that says why (a headline and its cause joined by ` — `)."""
    context: str
    """The lines from the headline to the cause (the traceback), for attribution."""
    strong: bool
    """pytest's own report of a failed collection or start (found even when some tests reported results)."""


def test_output(log: str) -> str:
    """The test command's output: between swebench's markers when both are there, else the whole log."""
    if START_TEST_OUTPUT in log:
        log = log.split(START_TEST_OUTPUT, 1)[1]
        if END_TEST_OUTPUT in log:
            log = log.split(END_TEST_OUTPUT, 1)[0]
    return log


def _clean(lines: list[str]) -> list[str]:
    # `set -x` echoes every command of the eval script as "+ …": never evidence.
    return [line.rstrip("\r") for line in lines if not line.startswith("+ ")]


def _cut(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_LINE_CHARS else text[: MAX_LINE_CHARS - 1] + "…"


def _with_cause(lines: list[str], index: int) -> EnvError:
    """The line at `index` and the exception that caused it (the first exception line after it)."""
    headline = lines[index].strip()
    for offset, line in enumerate(lines[index + 1 : index + 1 + CAUSE_WINDOW], start=index + 1):
        if _CAUSE.match(line.strip()) and line.strip() != headline:
            cause = re.sub(r"^E\s+", "", line.strip())
            return EnvError(_cut(f"{headline} — {cause}"), "\n".join(lines[index : offset + 1]), True)
    return EnvError(_cut(headline), "\n".join(lines[index : index + CAUSE_WINDOW]), True)


def find_env_error(log: str, parsed_any: bool, parsed_all: bool = False) -> EnvError | None:
    """The line of the test output that shows the run failed to collect or start, or None.

    `parsed_any`: whether any FAIL_TO_PASS / PASS_TO_PASS test got a status from the log parser; without one, weaker
    evidence counts and the absence of any becomes the reason. `parsed_all`: every one of them got a status — the run
    was complete, and pytest's words in the output belong to the tests themselves (pytest's own suite runs pytest
    inside its tests and prints their `INTERNALERROR>` and `ERROR collecting` lines): None."""
    if parsed_all:
        return None
    lines = _clean(test_output(log).split("\n"))
    for pattern in _STRONG:
        for index, line in enumerate(lines):
            if pattern.search(line.strip()):
                return _with_cause(lines, index)
    if parsed_any:
        return None
    for index, line in enumerate(lines):
        if _WEAK.search(line.strip()):
            found = _with_cause(lines, index)
            if line.startswith("Traceback"):
                # The exception line ends a traceback; the last one (chained tracebacks) is the one that stopped it.
                causes = [other for other in lines[index:] if _CAUSE.match(other.strip())]
                if causes:
                    return EnvError(_cut(causes[-1]), "\n".join(lines[index:]), False)
            return EnvError(found.line, found.context, False)
    exit_code = parse_test_exit_code(log)
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    status = f" (test command exit status {exit_code})" if exit_code is not None else ""
    return EnvError(_cut(f"no test results in the test output{status}; its last line: {last or '(none)'}"), "", False)


def find_network_error(log: str) -> str | None:
    """The first line of the test output that shows a test tried to reach the network, or None."""
    lines = [line for line in _clean(test_output(log).split("\n")) if any(sign in line for sign in NETWORK_SIGNS)]
    # pytest's `E   …` lines are the exceptions; `>   …` lines echo the source that raised them.
    chosen = next((line for line in lines if line.startswith("E ")), None) or next(
        (line for line in lines if not line.lstrip().startswith(">")), None
    )
    return _cut(re.sub(r"^E\s+", "", chosen.strip())) if chosen else None


def _mentions(text: str, path: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(path)}(?![\w-])", text) is not None


def _module_paths(module: str) -> tuple[str, str]:
    stem = module.replace(".", "/")
    return f"{stem}.py", f"{stem}/__init__.py"


def patch_caused(
    error: EnvError, patch_paths: Collection[str], patch: str, fix_paths: Collection[str], workdir: str
) -> bool:
    """Whether the log shows that the graded change (or the lack of the fix) broke the run, not the environment.

    `patch_paths`: files the graded patch changes; `patch`: its text; `fix_paths`: files the task's gold patch
    changes; `workdir`: the repository's directory in the container."""
    text = f"{error.context}\n{error.line}"
    if any(_mentions(text, path) for path in patch_paths):
        return True  # the traceback runs through a file the patch changed
    for match in _CANNOT_IMPORT.finditer(text):
        if match.group(3).startswith(workdir.rstrip("/") + "/"):
            return True  # a name the repository's own code lacks: the fix is missing or incomplete
    for match in _NO_MODULE.finditer(text):
        module = match.group(1)
        if any(path.endswith(candidate) for path in fix_paths for candidate in _module_paths(module)):
            return True  # a module the fix creates
        top = re.escape(module.split(".")[0])
        if re.search(rf"^\+\s*(import|from)\s+{top}\b", patch, re.MULTILINE):
            return True  # an import the patch added
    return False
