"""Which changed paths are test infrastructure or generated files, and why: the path rules of the patch policy.

The policy (envserver/patch_policy.py, whose docstring says why each rule exists) leaves these paths out of the
graded patch; setup.cfg and pyproject.toml, of which only the pytest sections count, are envserver/pytest_sections.py.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Collection
from pathlib import PurePosixPath
from typing import Literal

from envserver.git_diff import FilePatch

PYTEST_CONFIG_FILES = frozenset({"pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "tox.ini"})
SITE_HOOKS = frozenset({"sitecustomize", "usercustomize"})

RUNNER_MODULES = frozenset(
    {
        "pytest",
        "_pytest",
        "pluggy",
        "py",
        "iniconfig",
        "packaging",
        "attr",
        "attrs",
        "more_itertools",
        "exceptiongroup",
        "tomli",
        "colorama",
        "six",
        "atomicwrites",
        "wcwidth",
        "importlib_metadata",
        "zipp",
        "typing_extensions",
        "_pytest_plugins",
    }
)
"""The test runner and what it imports at start-up (pytest's dependencies across its versions)."""

SHADOWED_NAMES = frozenset(sys.stdlib_module_names) | RUNNER_MODULES
"""Module names whose shadow in a directory on `sys.path` takes over the test run."""

Category = Literal["infrastructure", "generated"]
"""`infrastructure`: a change to how the tests run (a hack attempt); `generated`: what running Python leaves behind."""


def shadow_dirs(hidden_tests: Collection[str]) -> frozenset[str]:
    """Directories where a module named like the standard library or the test runner is on `sys.path` for the test
    run: the repository root, and the directories holding hidden tests and their ancestors inside a test
    directory (the module docstring says why)."""
    dirs = {""}
    for test in hidden_tests:
        parts = PurePosixPath(test).parts[:-1]
        first_test_dir = next((i for i, part in enumerate(parts) if part.lower().startswith("test")), None)
        if first_test_dir is None:
            continue
        for depth in range(first_test_dir + 1, len(parts) + 1):
            dirs.add("/".join(parts[:depth]))
    return frozenset(dirs)


def classify_path(path: str, shadows: Collection[str] = frozenset({""})) -> tuple[Category, str] | None:
    """Why a changed path is left out of the graded patch (category, reason), or None when it is graded.

    `shadows`: directories where a stdlib- or runner-named module shadows the real one (`shadow_dirs`)."""
    parts = PurePosixPath(path).parts
    if not parts:
        return None
    name = parts[-1]
    if "__pycache__" in parts or name.endswith((".pyc", ".pyo")):
        return "generated", "Python bytecode (imported instead of its source when its header matches)"
    if any(part.endswith((".egg-info", ".dist-info")) for part in parts[:-1]):
        return "generated", "installed package metadata (its entry points register pytest plugins)"
    if name == "conftest.py":
        return "infrastructure", "conftest.py (pytest loads it and obeys its hooks)"
    if name in PYTEST_CONFIG_FILES:
        return "infrastructure", f"{name} (pytest / tox configuration)"
    if name.endswith(".pth"):
        return "infrastructure", ".pth file (run by Python's site module at start-up)"
    if name.removesuffix(".py") in SITE_HOOKS or any(part in SITE_HOOKS for part in parts[:-1]):
        return "infrastructure", "sitecustomize / usercustomize (run by Python at start-up)"
    if name == ".gitattributes":
        return "infrastructure", ".gitattributes (changes how the hidden test files are checked out)"
    parent = "/".join(parts[:-1])
    if name.endswith(".py") and parent in shadows and name[:-3] in SHADOWED_NAMES:
        return "infrastructure", f"{name} shadows the module `{name[:-3]}` for the test run"
    if name == "__init__.py" and len(parts) >= 2 and "/".join(parts[:-2]) in shadows and parts[-2] in SHADOWED_NAMES:
        return "infrastructure", f"package {parts[-2]}/ shadows the module `{parts[-2]}` for the test run"
    return None


def adds_pytest_plugin(file_patch: FilePatch) -> bool:
    """Whether a setup.py change adds a `pytest11` entry point (a plugin pytest loads by itself after a reinstall)."""
    return any(line.startswith("+") and "pytest11" in line for line in file_patch.text.split("\n"))


def command_paths(command: str) -> list[str]:
    """Repository-relative paths a test command names (`./tests/runtests.py --settings=x a.b` → `tests/runtests.py`);
    the caller drops the hidden test files among them, what is left is the program the command runs."""
    paths: dict[str, None] = {}
    for line in command.splitlines():
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        for token in tokens:
            path = token.split("::", 1)[0]
            if path.startswith(("-", "/", "$")) or "=" in path or ("/" not in path and not path.endswith(".py")):
                continue
            paths[path.removeprefix("./")] = None
    return list(paths)
