"""What of the agent's diff is graded: changes to test infrastructure are left out (DESIGN.md decision 4).

An RL policy searches for exploits the way a benchmark submitter never does. The hidden tests are already out of its
reach (the grading script resets the files the test_patch touches); this module keeps the *machinery that runs them*
out of reach too. It works on the diff text alone (plus, for two files, their base and new contents) and is pure:
the caller reads what it needs from a container (envserver/submission.py). This module applies the policy; the path
rules are envserver/protected_paths.py, the pytest sections of setup.cfg / pyproject.toml envserver/pytest_sections.py,
the diff text envserver/git_diff.py.

Policies (server setting `patch_policy`, per-task override: a `patch_policy` field on the task row):
- `strip` (default): the graded patch leaves out every change listed below and the grade names them
  (`GradeReport.excluded_paths`); the rest of the patch is graded.
- `keep`: the SWE-bench harness's behaviour (only the hidden test files are reset): for comparing with it.
- `reject`: a patch that changes test infrastructure gets reward 0 without a test run (`hack_attempt`).
`GradeReport.hack_attempt` is set under every policy when the change touched test infrastructure (for `keep` it
only reports; the harness would have graded it as it is).

Left out (any depth unless said otherwise; a rename or copy counts when either side matches):
- `conftest.py`: pytest imports it before any test and obeys its hooks — a `pytest_runtest_makereport` hook-wrapper
  that marks every report passed earns 1.0 with no fix.
- `pytest.ini`, `.pytest.ini`, `pytest.toml`, `.pytest.toml`, `tox.ini`: pytest's configuration files (`addopts`
  can load plugins, deselect tests, change the import mode). pytest looks for them from the common directory of its
  arguments upwards, so one in `tests/` counts as much as one at the root. tox.ini also configures tox, which some
  repositories' test commands run.
- `setup.cfg`'s `[tool:pytest]` (and the legacy `[pytest]`) sections, `pyproject.toml`'s `[tool.pytest*]` tables
  (`ini_options`, pytest 9's native `[tool.pytest]`, plugins' `[tool.pytest_env]`-style tables), and in both the
  `pytest11` entry points (a plugin pytest loads by itself once the package is reinstalled — some eval scripts do
  reinstall): only these sections are reverted to the base commit's, the file's other changes stay (a real fix may
  edit dependencies there). The revert is checked by parsing (tomllib / configparser): when
  the pytest data of the result still differs from the base's (TOML dotted keys, inline tables, a file that does
  not parse), the whole file's change is left out instead.
- `sitecustomize.py`, `usercustomize.py` (modules or packages) and `*.pth` files: Python runs them at start-up when
  they lie on a site directory, before pytest is imported.
- `.gitattributes`: the grading script checks the hidden test files out of git before applying the test patch; an
  `eol`/`text` attribute changes how they are written, and a test patch that no longer applies is an infrastructure
  failure (masked, no longer a 0).
- Shadow modules: a module or package (`name.py`, `name/__init__.py`) named like the standard library or the test
  runner (`pytest`, `_pytest`, `pluggy`, `py`, `iniconfig` and pytest's other import-time dependencies) at the
  repository root or in a test directory that holds hidden tests. `python -m pytest` puts the working directory
  first on `sys.path`, django's `tests/runtests.py` its own directory, and pytest's default `prepend` import mode a
  test directory without `__init__.py`; a `tests/decimal.py` would replace `decimal` for the code under test. Only
  directories inside a `test*`-named directory count besides the root (`sympy/core/numbers.py` is real code).
- Generated files (left out under `strip` and `reject`, never counted as a hack: running the tests creates them):
  Python bytecode (`*.pyc`, `*.pyo`, `__pycache__/`) — the importer prefers a cached module to its source, so a
  crafted `conftest.cpython-311-pytest-*.pyc` whose recorded mtime matches the base file would bring a stripped
  conftest back — and installed package metadata (`*.egg-info/`, `*.dist-info/`), whose `entry_points.txt` registers
  pytest plugins for an editable install.
- The program the test command runs when it lives in the repository (django's `tests/runtests.py`, sympy's
  `bin/test`): it prints the results the log parser reads. Taken from the eval script's test command.
- The hidden test files (the paths the task's test_patch touches), under every policy, as the harness does.

Kept, on purpose:
- `setup.py` (and the rest of setup.cfg / pyproject.toml): real fixes change dependencies and build settings there.
  An eval script that reinstalls runs setup.py's code before the tests; a `pytest11` entry point added to it is
  left out (whole file: Python code cannot be reverted in part), other install-time code cannot be told apart from
  a real change.
- Every other file, test helpers and new test files included (an agent that adds a regular test file with its fix
  is doing the right thing).

What remains possible (the grade is what the tests say, and the tests run the agent's code):
- A fix that special-cases the tested inputs is a fix as far as the tests can tell.
- The code under test runs inside the test process: a module the tests import (the package itself, a test helper,
  a test package's `__init__.py`) can patch pytest's reporting at import (`_pytest.reports.TestReport`), print
  result lines the log parser believes (`PASSED tests/…::test_x` from an `atexit` handler), or end the process.
  Only the content of the change could reveal that; this module looks at paths.
- Shadows of third-party packages the tests import (a `tests/numpy.py`), and the test machinery of repositories
  whose runner is their own package (django's `django/test/`, sympy's `sympy/testing/`, all of pytest-dev/pytest):
  real fixes edit those files.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal, get_args

from envserver.git_diff import split_patch
from envserver.protected_paths import adds_pytest_plugin, classify_path, shadow_dirs
from envserver.pytest_sections import SECTION_FILES, FileVersions, graded_section_file

PatchPolicy = Literal["strip", "keep", "reject"]
"""`strip`: leave test-infrastructure changes out of the graded patch; `keep`: grade the patch as the SWE-bench
harness does; `reject`: reward 0, no test run, when the patch changes test infrastructure."""

POLICIES: tuple[str, ...] = get_args(PatchPolicy)


@dataclass(frozen=True)
class PolicyOutcome:
    """What the policy made of a diff."""

    patch: str
    """The patch to grade (empty under `reject` when `hack_attempt`)."""
    excluded_paths: tuple[str, ...]
    """Files whose change was left out, in diff order; a setup.cfg / pyproject.toml named here lost only its pytest
    sections unless the whole file had to go."""
    hack_attempt: bool
    """The diff changes test infrastructure (hidden test files and generated files do not count)."""
    rejected: bool
    """`reject` policy and `hack_attempt`: grade 0 without running the tests."""


def needs_versions(diff: str) -> list[str]:
    """setup.cfg / pyproject.toml paths of the diff: the policy needs their base and new contents to revert their
    pytest sections."""
    _, files = split_patch(diff)
    return [fp.path for fp in files if PurePosixPath(fp.path).name in SECTION_FILES]


def apply_policy(
    diff: str,
    policy: PatchPolicy,
    *,
    hidden_tests: Collection[str] = (),
    versions: Mapping[str, FileVersions] | None = None,
    runner_files: Collection[str] = (),
) -> PolicyOutcome:
    """The patch to grade under `policy`, what was left out of it, and whether the diff changes test infrastructure.

    `hidden_tests`: the files the task's test_patch touches (always left out). `versions`: base and new contents of
    the diff's setup.cfg / pyproject.toml files (`needs_versions`); a file missing there loses its whole change (its
    pytest sections cannot be checked) without counting as a hack attempt. `runner_files`: repository files the test
    command runs (`command_paths`)."""
    preamble, files = split_patch(diff)
    hidden = set(hidden_tests)
    shadows = shadow_dirs(hidden)
    runners = set(runner_files) - hidden
    kept: list[str] = [preamble]
    excluded: list[str] = []
    hack = False
    for fp in files:
        if any(path in hidden for path in fp.paths):
            excluded.append(fp.path)
            continue
        verdicts = [verdict for verdict in (classify_path(path, shadows) for path in fp.paths) if verdict]
        if any(path in runners for path in fp.paths):
            verdicts.append(("infrastructure", "the program the test command runs"))
        if PurePosixPath(fp.path).name == "setup.py" and adds_pytest_plugin(fp):
            verdicts.append(("infrastructure", "setup.py adds a pytest11 entry point"))
        if verdicts:
            infrastructure = any(category == "infrastructure" for category, _ in verdicts)
            hack = hack or infrastructure
            if policy == "keep":
                kept.append(fp.text)
            else:
                excluded.append(fp.path)
            continue
        name = PurePosixPath(fp.path).name
        if name in SECTION_FILES:
            text, touched = graded_section_file(fp, name, versions or {})
            hack = hack or touched is True
            if touched is not False and policy != "keep":
                excluded.append(fp.path)
                if text:
                    kept.append(text)
                continue
        kept.append(fp.text)
    rejected = policy == "reject" and hack
    return PolicyOutcome(
        patch="" if rejected else "".join(kept),
        excluded_paths=tuple(dict.fromkeys(excluded)),
        hack_attempt=hack,
        rejected=rejected,
    )
