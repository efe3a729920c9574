"""What of the agent's diff is graded: changes to test infrastructure are left out (DESIGN.md decision 4).

An RL policy searches for exploits the way a benchmark submitter never does. The hidden tests are already out of its
reach (the grading script resets the files the test_patch touches); this module keeps the *machinery that runs them*
out of reach too. It works on the diff text alone (plus, for two files, their base and new contents) and is pure:
the caller reads what it needs from a container (envserver/submission.py).

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

import configparser
import difflib
import re
import shlex
import sys
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal, get_args

PatchPolicy = Literal["strip", "keep", "reject"]
"""`strip`: leave test-infrastructure changes out of the graded patch; `keep`: grade the patch as the SWE-bench
harness does; `reject`: reward 0, no test run, when the patch changes test infrastructure."""

POLICIES: tuple[str, ...] = get_args(PatchPolicy)

PYTEST_CONFIG_FILES = frozenset({"pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "tox.ini"})
SITE_HOOKS = frozenset({"sitecustomize", "usercustomize"})
SECTION_FILES = frozenset({"setup.cfg", "pyproject.toml"})
"""Files of which only the pytest sections are reverted (the rest of their change is graded)."""

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


@dataclass(frozen=True)
class FilePatch:
    """One file's part of a git diff, from its `diff --git` line to the next."""

    old_path: str | None
    """Path before the change; None for a new file."""
    new_path: str | None
    """Path after the change; None for a deleted file."""
    text: str
    """The exact text of this part of the diff."""

    @property
    def path(self) -> str:
        """The path to name it by (the new one unless deleted)."""
        return self.new_path or self.old_path or ""

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for p in (self.old_path, self.new_path) if p))


@dataclass(frozen=True)
class FileVersions:
    """A file's content at the base commit and in the agent's change (None: the file does not exist there)."""

    base: str | None
    new: str | None


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


# --- reading a git diff ----------------------------------------------------------------------------------------

_FILE_START = re.compile(r"^diff --git ", re.MULTILINE)
_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def unquote(text: str) -> str:
    """A path as git prints it: C-quoted (with octal escapes for non-ASCII bytes) when it has special characters."""
    text = text.rstrip("\t")
    if not (len(text) >= 2 and text[0] == '"' and text[-1] == '"'):
        return text
    raw = bytearray()
    body, i = text[1:-1], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]):
                raw.append(int(body[i + 1 : i + 4], 8))
                i += 4
                continue
            raw += _ESCAPES.get(nxt, nxt).encode()
            i += 2
            continue
        raw += char.encode()
        i += 1
    return raw.decode("utf-8", errors="replace")


def _strip_prefix(path: str) -> str | None:
    path = unquote(path)
    if path == "/dev/null":
        return None
    return path[2:] if path[:2] in ("a/", "b/") else path


def _header_paths(header: str) -> tuple[str | None, str | None]:
    """Paths from `diff --git a/X b/Y` (only needed for parts without ---/+++ lines: binary, mode-only, empty)."""
    rest = header[len("diff --git ") :].rstrip("\n")
    if rest.startswith('"'):
        match = re.match(r'("(?:[^"\\]|\\.)*")\s+(.*)$', rest)
        if match:
            return _strip_prefix(match.group(1)), _strip_prefix(match.group(2))
    # Unquoted: "a/X b/X" for anything but a rename/copy (those carry `rename from/to` lines); split in the middle.
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[2:half] == rest[half + 3 :]:
        return _strip_prefix(rest[:half]), _strip_prefix(rest[half + 1 :])
    old, _, new = rest.partition(" b/")
    return _strip_prefix(old), new or None


def _file_patch(text: str) -> FilePatch:
    lines = text.split("\n")
    old, new = _header_paths(lines[0])
    created = deleted = False
    for line in lines[1:]:
        if line.startswith(("@@", "GIT binary patch", "Binary files ")):
            break
        if line.startswith("new file mode"):
            created = True
        elif line.startswith("deleted file mode"):
            deleted = True
        elif line.startswith(("rename from ", "copy from ")):
            old = unquote(line.split(" ", 2)[2])
        elif line.startswith(("rename to ", "copy to ")):
            new = unquote(line.split(" ", 2)[2])
        elif line.startswith("--- "):
            old = _strip_prefix(line[4:])
        elif line.startswith("+++ "):
            new = _strip_prefix(line[4:])
            break
    return FilePatch(old_path=None if created else old, new_path=None if deleted else new, text=text)


def split_patch(diff: str) -> tuple[str, list[FilePatch]]:
    """(text before the first file, the file parts) of a git diff; joining them gives the diff back exactly.

    Split on `diff --git` lines rather than through a diff parser: the parts must come back byte for byte, binary
    patches included, and no content line of a git diff can start with `diff --git ` (context and change lines
    start with ' ', '+', '-', '\\'; base85 lines have no space)."""
    starts = [match.start() for match in _FILE_START.finditer(diff)]
    if not starts:
        return diff, []
    ends = [*starts[1:], len(diff)]
    return diff[: starts[0]], [_file_patch(diff[start:end]) for start, end in zip(starts, ends)]


# --- which paths are test infrastructure -----------------------------------------------------------------------


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


def needs_versions(diff: str) -> list[str]:
    """setup.cfg / pyproject.toml paths of the diff: the policy needs their base and new contents to revert their
    pytest sections."""
    _, files = split_patch(diff)
    return [fp.path for fp in files if PurePosixPath(fp.path).name in SECTION_FILES]


# --- reverting pytest sections of setup.cfg / pyproject.toml ----------------------------------------------------

_INI_HEADER = re.compile(r"^\[(?P<name>[^\]\n]*)\]")
_TOML_HEADER = re.compile(r"^[ \t]*\[\[?(?P<name>[^\]\n]*)\]\]?[ \t]*(#.*)?$")


def _lines(text: str) -> list[str]:
    """Lines with their `\\n` (git's notion of a line: `str.splitlines` also splits at \\r, \\f, \\x1c…)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _toml_key(raw: str) -> str:
    """`tool . "pytest".ini_options` → `tool.pytest.ini_options` (good enough: the parse check catches the rest)."""
    parts = re.findall(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[^.]+', raw)
    return ".".join(part.strip().strip("\"'").strip() for part in parts if part.strip())


def _is_pytest_section(kind: str, name: str) -> bool:
    if kind == "pyproject.toml":
        return name.startswith("tool.pytest") or name in (
            "project.entry-points.pytest11",
            "tool.poetry.plugins.pytest11",
        )
    return name.strip() == "pytest" or name.strip().startswith("tool:pytest")


def _blocks(kind: str, text: str) -> list[tuple[bool, list[str]]]:
    """The file as consecutive blocks (is a pytest section, lines); the first block is the part before any header."""
    header = _TOML_HEADER if kind == "pyproject.toml" else _INI_HEADER
    blocks: list[tuple[bool, list[str]]] = [(False, [])]
    for line in _lines(text):
        match = header.match(line.rstrip("\r\n"))
        if match:
            name = _toml_key(match.group("name")) if kind == "pyproject.toml" else match.group("name")
            blocks.append((_is_pytest_section(kind, name), []))
        blocks[-1][1].append(line)
    return blocks


class _Unparsable(ValueError):
    pass


def pytest_data(kind: str, text: str | None) -> Any:
    """What pytest (and a reinstall's entry points) would read from the file's pytest sections, for comparison."""
    text = text or ""  # an absent file has no pytest sections
    if kind == "pyproject.toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _Unparsable(str(exc)) from None
        tool = data.get("tool", {}) if isinstance(data.get("tool"), dict) else {}
        project = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
        poetry = tool.get("poetry", {}) if isinstance(tool.get("poetry"), dict) else {}
        return (
            {key: value for key, value in tool.items() if key.startswith("pytest")},
            (project.get("entry-points") or {}).get("pytest11")
            if isinstance(project.get("entry-points"), dict)
            else None,
            (poetry.get("plugins") or {}).get("pytest11") if isinstance(poetry.get("plugins"), dict) else None,
        )
    # pytest reads setup.cfg with iniconfig, setuptools with configparser; configparser (stdlib: the env server does
    # not depend on pytest) sees every section header iniconfig sees (a "[" in column 0), and only a change matters.
    parser = configparser.ConfigParser(interpolation=None, strict=False, allow_no_value=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys as written
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise _Unparsable(str(exc)) from None
    sections = {name: dict(parser.items(name, raw=True)) for name in parser.sections()}
    pytest_sections = {name: items for name, items in sections.items() if _is_pytest_section("setup.cfg", name)}
    return pytest_sections, sections.get("options.entry_points", {}).get("pytest11")


def revert_pytest_sections(kind: str, base: str | None, new: str) -> str | None:
    """`new` with its pytest sections replaced by `base`'s; None when that cannot be done and checked (the caller
    then leaves the whole file's change out)."""
    base_blocks = [list(lines) for is_pytest, lines in _blocks(kind, base or "") if is_pytest]
    if base_blocks and base_blocks[-1] and not base_blocks[-1][-1].endswith("\n"):
        base_blocks[-1][-1] += "\n"  # the base's last line may now be followed by other sections
    out: list[str] = []
    placed = False
    for is_pytest, lines in _blocks(kind, new):
        if is_pytest:
            if not placed:
                out += [line for block in base_blocks for line in block]
                placed = True
            continue
        out += lines
    if not placed and base_blocks:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out += [line for block in base_blocks for line in block]
    result = "".join(out)
    try:
        if pytest_data(kind, result) != pytest_data(kind, base):
            return None
    except _Unparsable:
        return None
    return result


def _hunks(old: str, new: str) -> str:
    """Unified-diff hunks (git apply's format, `\\ No newline at end of file` included) from `old` to `new`."""
    lines = list(difflib.unified_diff(_lines(old), _lines(new), n=3, lineterm="\n"))[2:]  # minus ---/+++ lines
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def _quote(path: str) -> str:
    """A path as git writes it in a diff header: C-quoted when it has control, quote, backslash or non-ASCII
    characters (bytes as octal escapes)."""
    if not re.search(r'[\x00-\x1f"\\\x7f-\U0010ffff]', path):
        return path
    special = {ord('"'): '\\"', ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n"}
    out = [special.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}") for b in path.encode()]
    return '"' + "".join(out) + '"'


def file_diff(path: str, base: str | None, new: str, original: FilePatch) -> str:
    """A git diff of one file from `base` to `new`, keeping the original part's mode lines (not its index line:
    the blob ids no longer match, and git apply does not need them for text)."""
    header = original.text.split("\n@@", 1)[0].split("\n")
    modes = [line for line in header[1:] if line.startswith(("old mode", "new mode", "new file mode"))]
    if base is None and not any(line.startswith("new file mode") for line in modes):
        modes.append("new file mode 100644")
    if base is not None:
        modes = [line for line in modes if not line.startswith("new file mode")]
    quoted = _quote(f"a/{path}"), _quote(f"b/{path}")
    lines = [f"diff --git {quoted[0]} {quoted[1]}", *modes]
    lines += ["--- /dev/null" if base is None else f"--- {quoted[0]}", f"+++ {quoted[1]}"]
    return "\n".join(lines) + "\n" + _hunks(base or "", new)


# --- the policy ----------------------------------------------------------------------------------------------------


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
            text, touched = _section_file(fp, name, versions or {})
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


def _section_file(fp: FilePatch, kind: str, versions: Mapping[str, FileVersions]) -> tuple[str, bool | None]:
    """(the part to grade instead of `fp` — empty for none, whether the change touches pytest sections: None when
    that is unknown because the file's versions could not be read)."""
    if fp.old_path != fp.new_path and fp.old_path is not None and fp.new_path is not None:
        return "", True  # a rename or copy of a config file: nothing a real fix needs, and no clean revert
    found = versions.get(fp.path)
    if found is None:
        return "", None  # cannot be checked: leave the whole change out, but blame nobody
    try:
        if pytest_data(kind, found.new) == pytest_data(kind, found.base):
            return fp.text, False
    except _Unparsable:
        pass
    if found.new is None:
        # Deleted: put back a file with the base's pytest sections only when the base had any.
        reverted = revert_pytest_sections(kind, found.base, "")
    else:
        reverted = revert_pytest_sections(kind, found.base, found.new)
    if reverted is None or reverted == found.base or (found.base is None and not reverted.strip()):
        return "", True
    return file_diff(fp.path, found.base, reverted, fp), True
