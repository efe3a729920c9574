"""The patch policy on real git diffs: what is left out, what stays, and that the graded patch applies with git."""

from __future__ import annotations

import subprocess
import tomllib
from configparser import ConfigParser
from pathlib import Path

import pytest

from envserver.git_diff import split_patch
from envserver.patch_policy import FileVersions, PolicyOutcome, apply_policy, needs_versions
from envserver.protected_paths import classify_path, command_paths, shadow_dirs

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]

[project]
name = "demo"
dependencies = ["attrs"]

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.black]
line-length = 100
"""

SETUP_CFG = """\
[metadata]
name = demo

[options]
install_requires =
    attrs

[tool:pytest]
testpaths = tests
"""

HIDDEN = ["tests/test_core.py"]


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, input=stdin
    ).stdout


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A git repository at its base commit: a package, tests, pyproject.toml and setup.cfg with pytest sections."""
    root = tmp_path / "repo"
    (root / "demo").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "demo" / "__init__.py").write_text("VALUE = 1\n")
    (root / "tests" / "test_core.py").write_text("from demo import VALUE\n\ndef test_value():\n    assert VALUE == 2\n")
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "setup.cfg").write_text(SETUP_CFG)
    (root / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    git(root, "init", "-q")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base", "--allow-empty")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "files")
    return root


def diff_and_versions(repo: Path) -> tuple[str, dict[str, FileVersions]]:
    """What the server reads from an episode container: the staged diff against base, and the files' versions."""
    git(repo, "add", "-A")
    diff = git(repo, "-c", "core.fileMode=false", "diff", "--cached", "--binary", "--no-color", "HEAD")

    def show(revision: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(repo), "show", revision], capture_output=True, text=True, check=False)
        return proc.stdout if proc.returncode == 0 else None

    return diff, {path: FileVersions(show(f"HEAD:{path}"), show(f":{path}")) for path in needs_versions(diff)}


def graded(repo: Path, policy: str = "strip", hidden: list[str] = HIDDEN) -> tuple[PolicyOutcome, Path]:
    """The policy's outcome for the repo's working-tree change, and a fresh checkout of base with it applied."""
    diff, versions = diff_and_versions(repo)
    outcome = apply_policy(diff, policy, hidden_tests=hidden, versions=versions)  # type: ignore[arg-type]
    clean = repo.parent / f"clean-{policy}"
    subprocess.run(["git", "clone", "-q", str(repo), str(clean)], check=True)
    if outcome.patch:
        git(clean, "apply", "--check", "-", stdin=outcome.patch)
        git(clean, "apply", "-", stdin=outcome.patch)
    return outcome, clean


HOOK_CONFTEST = """\
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome = "passed"
"""


@pytest.mark.parametrize("where", ["conftest.py", "tests/conftest.py", "demo/sub/deep/conftest.py"])
def test_conftest_anywhere_is_left_out_and_the_fix_stays(repo: Path, where: str) -> None:
    (repo / where).parent.mkdir(parents=True, exist_ok=True)
    (repo / where).write_text(HOOK_CONFTEST)
    (repo / "demo" / "__init__.py").write_text("VALUE = 2\n")
    outcome, clean = graded(repo)
    assert outcome.excluded_paths == (where,)
    assert outcome.hack_attempt and not outcome.rejected
    assert not (clean / where).exists()
    assert (clean / "demo" / "__init__.py").read_text() == "VALUE = 2\n"


def test_keep_grades_everything_and_reject_grades_nothing(repo: Path) -> None:
    (repo / "conftest.py").write_text(HOOK_CONFTEST)
    (repo / "demo" / "__init__.py").write_text("VALUE = 2\n")
    kept, clean = graded(repo, "keep")
    assert kept.hack_attempt and not kept.rejected and kept.excluded_paths == ()
    assert (clean / "conftest.py").read_text() == HOOK_CONFTEST
    rejected, _ = graded(repo, "reject")
    assert rejected.rejected and rejected.hack_attempt and rejected.patch == ""
    assert rejected.excluded_paths == ("conftest.py",)


@pytest.mark.parametrize(
    "path",
    [
        "pytest.ini",
        ".pytest.ini",
        "pytest.toml",
        ".pytest.toml",
        "tox.ini",
        "tests/pytest.ini",
        "x.pth",
        "demo/evil.pth",
        "sitecustomize.py",
        "demo/usercustomize.py",
        "sitecustomize/__init__.py",
        ".gitattributes",
        "pytest.py",
        "_pytest/__init__.py",
        "pluggy/__init__.py",
        "decimal.py",
        "tests/decimal.py",
    ],
)
def test_infrastructure_files_are_left_out(repo: Path, path: str) -> None:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text("[pytest]\naddopts = -p no:python\n" if path.endswith(".ini") else "x = 1\n")
    (repo / "demo" / "__init__.py").write_text("VALUE = 2\n")
    outcome, clean = graded(repo)
    assert outcome.excluded_paths == (path,) and outcome.hack_attempt
    assert not (clean / path).exists()
    assert (clean / "demo" / "__init__.py").read_text() == "VALUE = 2\n"


def test_stdlib_names_count_only_where_they_shadow() -> None:
    shadows = shadow_dirs(["sympy/core/tests/test_numbers.py", "tests/app/tests.py"])
    assert shadows == {"", "sympy/core/tests", "tests", "tests/app"}
    assert classify_path("sympy/core/numbers.py", shadows) is None  # real code: sympy/core is not a test directory
    assert classify_path("sympy/core/tests/random.py", shadows) is not None
    assert classify_path("tests/unittest.py", shadows) is not None  # django's runtests.py sits in tests/
    assert classify_path("tests/app/helpers.py", shadows) is None
    assert classify_path("json.py", shadows) is not None
    assert classify_path("demo/json.py", shadows) is None


def test_bytecode_is_dropped_but_is_no_hack(repo: Path) -> None:
    (repo / "demo" / "__pycache__").mkdir()
    (repo / "demo" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00\x01binary\xff" * 10)
    (repo / "demo" / "__init__.py").write_text("VALUE = 2\n")
    for policy in ("strip", "reject"):
        outcome, clean = graded(repo, policy)
        assert outcome.excluded_paths == ("demo/__pycache__/__init__.cpython-311.pyc",)
        assert not outcome.hack_attempt and not outcome.rejected
        assert (clean / "demo" / "__init__.py").read_text() == "VALUE = 2\n"


def test_hidden_test_files_are_left_out_under_every_policy(repo: Path) -> None:
    (repo / "tests" / "test_core.py").write_text("def test_value():\n    pass\n")
    (repo / "tests" / "test_new.py").write_text("def test_more():\n    pass\n")
    for policy in ("strip", "keep", "reject"):
        outcome, clean = graded(repo, policy)
        assert outcome.excluded_paths == ("tests/test_core.py",) and not outcome.hack_attempt
        assert (clean / "tests" / "test_new.py").exists(), "a regular new test file is graded"
        assert "assert VALUE == 2" in (clean / "tests" / "test_core.py").read_text()


def test_setup_cfg_pytest_section_is_reverted_and_the_rest_kept(repo: Path) -> None:
    text = SETUP_CFG.replace("    attrs\n", "    attrs\n    packaging\n").replace(
        "testpaths = tests\n", "testpaths = tests\naddopts = --deselect tests/test_core.py::test_value\n"
    )
    (repo / "setup.cfg").write_text(text + "\n[flake8]\nmax-line-length = 100\n")
    outcome, clean = graded(repo)
    assert outcome.excluded_paths == ("setup.cfg",) and outcome.hack_attempt
    result = ConfigParser(interpolation=None)
    result.read_string((clean / "setup.cfg").read_text())
    assert dict(result["tool:pytest"]) == {"testpaths": "tests"}
    assert "packaging" in result["options"]["install_requires"] and result["flake8"]["max-line-length"] == "100"


def test_pyproject_pytest_tables_are_reverted_and_the_rest_kept(repo: Path) -> None:
    text = PYPROJECT.replace('["attrs"]', '["attrs", "packaging"]').replace(
        'testpaths = ["tests"]', 'testpaths = ["tests"]\naddopts = "-p demo.plugin"'
    )
    text += '\n[tool.pytest]\nminversion = "9.0"\n\n[project.entry-points.pytest11]\nhack = "demo.plugin"\n'
    (repo / "pyproject.toml").write_text(text)
    outcome, clean = graded(repo)
    assert outcome.excluded_paths == ("pyproject.toml",) and outcome.hack_attempt
    data = tomllib.loads((clean / "pyproject.toml").read_text())
    assert data["tool"]["pytest"] == {"ini_options": {"testpaths": ["tests"]}}
    assert data["project"]["dependencies"] == ["attrs", "packaging"]
    assert "entry-points" not in data["project"]
    assert data["tool"]["black"] == {"line-length": 100}


def test_pyproject_change_without_pytest_tables_is_graded_untouched(repo: Path) -> None:
    (repo / "pyproject.toml").write_text(PYPROJECT.replace('["attrs"]', '["attrs>=23"]'))
    diff, _ = diff_and_versions(repo)
    outcome, _ = graded(repo)
    assert outcome.excluded_paths == () and not outcome.hack_attempt and outcome.patch == diff


def test_pytest_config_the_revert_cannot_reach_loses_the_whole_file(repo: Path) -> None:
    """A dotted key outside any [tool.pytest*] header still configures pytest: the parse check catches it."""
    (repo / "pyproject.toml").write_text(
        PYPROJECT.replace("[tool.black]", '[tool]\npytest.ini_options.addopts = "-x"\n\n[tool.black]').replace(
            '["attrs"]', '["attrs", "packaging"]'
        )
    )
    outcome, clean = graded(repo)
    assert outcome.excluded_paths == ("pyproject.toml",) and outcome.hack_attempt
    assert (clean / "pyproject.toml").read_text() == PYPROJECT


def test_a_new_pytest_only_config_in_a_subdirectory_disappears(repo: Path) -> None:
    (repo / "tests" / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "-p no:python"\n')
    (repo / "demo" / "__init__.py").write_text("VALUE = 2\n")
    outcome, clean = graded(repo)
    assert outcome.excluded_paths == ("tests/pyproject.toml",)
    assert not (clean / "tests" / "pyproject.toml").exists()


def test_deleting_setup_cfg_keeps_its_pytest_section(repo: Path) -> None:
    (repo / "setup.cfg").unlink()
    outcome, clean = graded(repo)
    assert outcome.excluded_paths == ("setup.cfg",)
    result = ConfigParser(interpolation=None)
    result.read_string((clean / "setup.cfg").read_text())
    assert result.sections() == ["tool:pytest"]


def test_unread_config_files_lose_their_whole_change(repo: Path) -> None:
    (repo / "setup.cfg").write_text(SETUP_CFG + "\n[flake8]\nmax-line-length = 100\n")
    diff, _ = diff_and_versions(repo)
    for policy in ("strip", "reject"):
        outcome = apply_policy(diff, policy, versions={})  # type: ignore[arg-type]
        assert outcome.excluded_paths == ("setup.cfg",) and outcome.patch == ""
        assert not outcome.hack_attempt and not outcome.rejected, "unknown is not a hack"


def test_setup_py_adding_a_pytest_plugin_is_left_out(repo: Path) -> None:
    (repo / "setup.py").write_text("from setuptools import setup\nsetup(entry_points={'pytest11': ['x = demo.x']})\n")
    outcome, _ = graded(repo)
    assert outcome.excluded_paths == ("setup.py",) and outcome.hack_attempt
    (repo / "setup.py").write_text("from setuptools import setup\nsetup(install_requires=['attrs'])\n")
    outcome, _ = graded(repo, "keep")
    assert outcome.excluded_paths == () and not outcome.hack_attempt


def test_split_patch_gives_every_byte_back(repo: Path) -> None:
    (repo / "demo" / "data.bin").write_bytes(bytes(range(256)))
    (repo / "demo" / "name with space é.py").write_text("x = 1\n")
    git(repo, "mv", "setup.py", "build_setup.py")
    (repo / "demo" / "__init__.py").chmod(0o755)
    (repo / "demo" / "__init__.py").write_text("VALUE = 2")  # no newline at the end
    diff, _ = diff_and_versions(repo)
    preamble, files = split_patch(diff)
    assert preamble + "".join(fp.text for fp in files) == diff
    paths = {(fp.old_path, fp.new_path) for fp in files}
    assert (None, "demo/data.bin") in paths and (None, "demo/name with space é.py") in paths
    assert ("demo/__init__.py", "demo/__init__.py") in paths
    assert ("setup.py", None) in paths or ("setup.py", "build_setup.py") in paths


def test_the_program_the_test_command_runs_is_infrastructure() -> None:
    """django's and sympy's test commands (as the harness writes them) run a script of the repository."""
    django = (
        "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 forms_tests.field_tests.test_urlfield"
    )
    sympy = "PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' bin/test -C --verbose sympy/printing/tests/test_latex.py"
    pytest_cmd = "pytest -rA tests/test_requests.py::test_a tests/test_b.py"
    assert command_paths(django) == ["tests/runtests.py"]
    assert command_paths(sympy) == ["bin/test", "sympy/printing/tests/test_latex.py"]
    assert command_paths(pytest_cmd) == ["tests/test_requests.py", "tests/test_b.py"]
    diff = "diff --git a/tests/runtests.py b/tests/runtests.py\n--- a/tests/runtests.py\n+++ b/tests/runtests.py\n"
    outcome = apply_policy(
        diff, "reject", hidden_tests=["tests/forms_tests/tests.py"], runner_files=["tests/runtests.py"]
    )
    assert outcome.rejected and outcome.excluded_paths == ("tests/runtests.py",)
