"""Spec tables (envserver/specs): the bundled SWE-bench / SWE-Gym facts, user `--specs` files, and the eval script
and parser they give SWE-Gym rows. SWE-bench's 18 repositories are checked against swebench 4.x itself by
tests/conformance/test_eval_script_oracle.py; SWE-Gym's fork is not installable, so its facts are literals here."""

from __future__ import annotations

import json

import pytest

from envserver import eval_script, grading
from envserver.eval_script import make_eval_script, parser_name
from envserver.log_parsers import parse_log_pytest_pydantic
from envserver.specs import SpecFileError, SpecTable
from envserver.tasks import TaskInstance

SWEBENCH_REPOS = [
    "astropy/astropy",
    "django/django",
    "marshmallow-code/marshmallow",
    "matplotlib/matplotlib",
    "mwaskom/seaborn",
    "pallets/flask",
    "psf/requests",
    "pvlib/pvlib-python",
    "pydata/xarray",
    "pydicom/pydicom",
    "pylint-dev/astroid",
    "pylint-dev/pylint",
    "pytest-dev/pytest",
    "pyvista/pyvista",
    "scikit-learn/scikit-learn",
    "sphinx-doc/sphinx",
    "sqlfluff/sqlfluff",
    "sympy/sympy",
]

DVC_PRE_INSTALL = [
    "apt-get -y update && apt-get -y upgrade && apt-get install -y cmake",
    "[ -f setup.py ] && sed -E -i 's/moto==([0-9]+\\.[0-9]+\\.[0-9]+)\\.dev[0-9]+/moto==\\1/' setup.py",
    # The fork's third entry is two adjacent string literals (a missing comma): one command, kept as it is.
    (
        "[ -f setup.py ] && sed -i 's/pyarrow==0.15.1/pyarrow==0.16/' setup.py[ -f setup.py ] && "
        "sed -i 's/boto3==1.9.115/boto3==1.9.201/' setup.py"
    ),
]
# SWE-Gym's fork of the harness (SWE-Gym/SWE-Bench-Fork, swebench/harness/constants.py and log_parsers.py), copied
# from its tables: at least one version of each of its 11 repositories, two where the fork varies a version group.
SWEGYM_FACTS = {
    ("getmoto/moto", "4.1"): {
        "python": "3.12",
        "install": "make init",
        "test_cmd": "pytest -n0 -rA",
        "parser": "parse_log_pytest",
    },
    ("python/mypy", "1.4"): {
        "python": "3.11",
        "pre_install": ["git submodule update --init mypy/typeshed || true"],
        "install": "python -m pip install -r test-requirements.txt; python -m pip install -e .; hash -r",
        "test_cmd": "pytest -n0 -rA -k",
        "parser": "parse_log_pytest",
    },
    ("python/mypy", "0.920"): {
        "python": "3.9",
        "pre_install": [
            "git submodule update --init mypy/typeshed || true",
            "sed -i '1i types-typing-extensions==3.7.3' test-requirements.txt",
        ],
        "install": "python -m pip install -r test-requirements.txt; python -m pip install -e .; pip install pytest "
        "pytest-xdist; hash -r;",
        "test_cmd": "pytest -n0 -rA -k",
        "parser": "parse_log_pytest",
    },
    ("pandas-dev/pandas", "2.0"): {
        "packages": "environment.yml",
        "pre_install": [
            "git remote add upstream https://github.com/pandas-dev/pandas.git",
            "git fetch upstream --tags",
        ],
        "install": "python -m pip install 'numpy<2'; python -m pip install -ve . --no-build-isolation "
        "-Ceditable-verbose=true; pip uninstall pytest-qt -y;",
        "test_cmd": "pytest -rA --tb=long",
        "parser": "parse_log_pytest",
    },
    ("pandas-dev/pandas", "2.2"): {
        "packages": "environment.yml",
        "pre_install": [
            "git remote add upstream https://github.com/pandas-dev/pandas.git",
            "git fetch upstream --tags",
        ],
        "install": "python -m pip install -ve . --no-build-isolation -Ceditable-verbose=true; pip uninstall pytest-qt -y;",
        "test_cmd": "pytest -rA --tb=long",
        "parser": "parse_log_pytest",
    },
    ("pydantic/pydantic", "2.7"): {
        "python": "3.8",
        "pre_install": [
            "apt-get update && apt-get install -y locales",
            "apt-get install -y pipx",
            "pipx ensurepath",
            "pipx install pdm",
            'export PATH="$HOME/.local/bin:$PATH"',
            "which python",
            "python --version",
        ],
        "install": 'export PATH="$HOME/.local/bin:$PATH"; pdm add pre-commit; make install;',
        "test_cmd": "pytest -rA --tb=short -vv -o console_output_style=classic --no-header",
        "parser": "parse_log_pytest_pydantic",
    },
    ("pydantic/pydantic", "1.10"): {
        "python": "3.7",
        "pre_install": [
            "apt-get update && apt-get install -y locales",
            "apt-get install -y pipx",
            "pipx ensurepath",
            "pipx install pdm  --python python3.7",
            'export PATH="$HOME/.local/bin:$PATH"',
            "which python",
            "python --version",
        ],
        "install": 'export PATH="$HOME/.local/bin:$PATH"; pdm add pre-commit; make install;',
        "test_cmd": "pytest -rA --tb=short -vv -o console_output_style=classic --no-header",
        "parser": "parse_log_pytest_pydantic",
    },
    ("conan-io/conan", "2.0"): {
        "python": "3.10",
        "pre_install": ["apt-get -y update && apt-get -y upgrade && apt-get install -y build-essential cmake"],
        "install": "echo 'cython<3' > /tmp/constraint.txt; export PIP_CONSTRAINT=/tmp/constraint.txt; python -m pip "
        "install -r conans/requirements.txt; python -m pip install -r conans/requirements_server.txt; "
        "python -m pip install -r conans/requirements_dev.txt ",
        "eval_commands": ["export PYTHONPATH=${PYTHONPATH:-}:$(pwd)"],
        "test_cmd": "pytest -n0 -rA",
        "parser": "parse_log_pytest",
    },
    ("conan-io/conan", "1.60"): {
        "python": "3.10",
        "pre_install": ["apt-get -y update && apt-get -y upgrade && apt-get install -y build-essential cmake"],
        "install": "python -m pip install -r conans/requirements.txt; python -m pip install -r "
        "conans/requirements_server.txt; python -m pip install -r conans/requirements_dev.txt ",
        "eval_commands": ["export PYTHONPATH=${PYTHONPATH:-}:$(pwd)"],
        "test_cmd": "pytest -n0 -rA",
        "parser": "parse_log_pytest",
    },
    ("iterative/dvc", "2.0"): {
        "python": "3.9",
        "pre_install": DVC_PRE_INSTALL,
        "install": 'python -m pip install --upgrade pip wheel GitPython; python -m pip install "cython<3.0.0" && '
        "python -m pip install --no-build-isolation pyyaml==5.4.1; python -m pip install "
        "git+https://github.com/iterative/mock-ssh-server.git || true; python -m pip install -r "
        "tests/requirements.txt || true; python -m pip install -r test-requirements.txt || true; python -m "
        'pip install -e ".[tests,dev,all_remotes,all,testing]"; python -m pip install "numpy<=1.20"; '
        'python -m pip install "pytest<8";',
        "test_cmd": "pytest -rA",
        "parser": "parse_log_pytest",
    },
    ("iterative/dvc", "3.10"): {
        "python": "3.10",
        "pre_install": DVC_PRE_INSTALL,
        "install": 'python -m pip install --upgrade pip wheel GitPython; python -m pip install "cython<3.0.0" && '
        "python -m pip install --no-build-isolation pyyaml==5.4.1; python -m pip install "
        "git+https://github.com/iterative/mock-ssh-server.git || true; python -m pip install -r "
        "tests/requirements.txt || true; python -m pip install -r test-requirements.txt || true; python -m "
        'pip install -e ".[tests,dev,all_remotes,all,testing]";',
        "test_cmd": "pytest -rA",
        "parser": "parse_log_pytest",
    },
    ("dask/dask", "2023.1"): {
        "packages": "environment.yml",
        "install": "python -m pip install --no-deps -e .",
        "env_patches": ["sed -i '/- pip:/,/^ *-/d' environment.yml"],
        "test_cmd": "pytest -n0 -rA  --color=no",
        "parser": "parse_log_pytest",
    },
    ("bokeh/bokeh", "3.3"): {
        "python": "3.10",
        "packages": "environment.yml",
        "pre_install": ["cd bokehjs && npm install --location=global npm && npm ci && cd ../"],
        "install": "python -m pip install -e .; python -m pip install bokeh_sampledata;",
        "test_cmd": "pytest -rA -n0",
        "parser": "parse_log_pytest",
    },
    ("modin-project/modin", "0.19"): {
        "python": "3.8",
        "packages": "environment.yml",
        "pre_install": ["apt-get -y update && apt-get -y upgrade && apt-get install -y libpq-dev"],
        "install": "python -m pip install -e .; python -m pip install numpy==1.23.1 protobuf==3.20.1;",
        "test_cmd": "pytest -n0 -rA",
        "parser": "parse_log_pytest",
    },
    ("modin-project/modin", "0.23"): {
        "python": "3.9",
        "packages": "environment.yml",
        "pre_install": ["apt-get -y update && apt-get -y upgrade && apt-get install -y libpq-dev"],
        "install": "python -m pip install -e .;",
        "test_cmd": "pytest -n0 -rA",
        "parser": "parse_log_pytest",
    },
    ("facebookresearch/hydra", "1.1"): {
        "python": "3.8",
        "pre_install": ["apt-get -y update && apt-get -y upgrade && apt-get install -y openjdk-17-jdk openjdk-17-jre"],
        "install": "sed -i 's|isort@git+git://github.com/timothycrosley/isort|isort@git+https://github.com/"
        "timothycrosley/isort|g' requirements/dev.txt; { tail -n1 requirements/requirements.txt | grep -q "
        '"." && echo ""; } >> requirements/requirements.txt; echo "pip==24.0" >> '
        'requirements/requirements.txt;pip install "pip==24.0"; pip install -r requirements/dev.txt; '
        "pip install -e .;",
        "test_cmd": "pytest -rA --tb=long",
        "parser": "parse_log_pytest",
    },
    ("facebookresearch/hydra", "1.3"): {
        "python": "3.8",
        "pre_install": ["apt-get -y update && apt-get -y upgrade && apt-get install -y openjdk-17-jdk openjdk-17-jre"],
        "install": "pip install -r requirements/dev.txt; pip install -e .;",
        "test_cmd": "pytest -rA --tb=long",
        "parser": "parse_log_pytest",
    },
    ("Project-MONAI/MONAI", "1.2"): {
        "python": "3.8",
        "install": "sed -i '/^git+https:\\/\\/github.com\\/Project-MONAI\\//d' requirements-dev.txt; python -m pip "
        "install types-pkg-resources==0.1.3 pytest; pip install -r requirements-dev.txt;python setup.py "
        "develop;",
        "test_cmd": "pytest -rA ",
        "parser": "parse_log_pytest",
    },
}
SWEGYM_REPOS = sorted({repo for repo, _ in SWEGYM_FACTS})
SPEC_KEYS = ("python", "packages", "pre_install", "install", "pip_packages", "eval_commands", "env_patches", "test_cmd")

# A mypy-shaped test patch: test cases live in test-data/unit/*.test files as `[case NAME]` blocks.
MYPY_TEST_PATCH = """\
diff --git a/test-data/unit/check-dataclasses.test b/test-data/unit/check-dataclasses.test
--- a/test-data/unit/check-dataclasses.test
+++ b/test-data/unit/check-dataclasses.test
@@ -10,3 +10,16 @@ class B(A):
 reveal_type(B)  # N: Revealed type is "def (x: builtins.int) -> __main__.B"
 [builtins fixtures/dataclasses.pyi]

+[case testDataclassFieldKwOnly]
+from dataclasses import dataclass, field
+@dataclass
+class A:
+    x: int = field(kw_only=True)
+A(1)  # E: Too many positional arguments for "A"
+[builtins fixtures/dataclasses.pyi]
+
+[case testDataclassFieldKwOnlyDefault]
+from dataclasses import dataclass, field
+@dataclass
+class A:
+    x: int = field(default=0, kw_only=True)
"""


def _row(repo: str, version: str, test_patch: str, **extra: object) -> TaskInstance:
    return TaskInstance.model_validate(
        {
            "instance_id": f"{repo.replace('/', '__')}-1",
            "repo": repo,
            "version": version,
            "base_commit": "0123abcd",
            "problem_statement": "p",
            "test_patch": test_patch,
            "FAIL_TO_PASS": "[]",
            "PASS_TO_PASS": "[]",
            **extra,
        }
    )


@pytest.fixture(scope="module")
def table() -> SpecTable:
    return SpecTable.load()


def test_bundled_tables_hold_swebench_and_swegym_repositories(table):  # type: ignore[no-untyped-def]
    names = set(table.repos())
    assert set(SWEBENCH_REPOS) <= names and set(SWEGYM_REPOS) <= names
    assert len(SWEGYM_REPOS) == 11
    # Every version of every repository resolves, with a parser and a test command.
    for spec in table:
        assert parser_name(spec) and spec.version_spec.test_cmd
    assert table.lookup("django/django", "3.0").version_spec.python == "3.6"
    assert table.lookup("nosuch/repo", "1.0") is None and table.lookup("django/django", "99.9") is None


@pytest.mark.parametrize("repo, version", list(SWEGYM_FACTS))
def test_swegym_version_facts_equal_the_forks(table, repo, version):  # type: ignore[no-untyped-def]
    expected = SWEGYM_FACTS[(repo, version)]
    spec = table.lookup(repo.lower(), version)  # the fork lower-cases repository names
    assert spec is not None and spec.repo == repo
    got = spec.version_spec.model_dump()
    for key in SPEC_KEYS:
        assert got[key] == expected.get(
            key, [] if key in ("pre_install", "pip_packages", "eval_commands", "env_patches") else None
        ), key
    assert parser_name(spec) == expected["parser"]


def test_mypy_runs_the_case_keys_of_its_test_patch(table):  # type: ignore[no-untyped-def]
    task = _row("python/mypy", "1.4", MYPY_TEST_PATCH)
    spec = table.lookup(task.repo, task.version)
    # The fork: test_cmd + ' "' + the [case NAME] keys joined with " or " + '"'.
    assert (
        eval_script.test_command(task, spec)
        == 'pytest -n0 -rA -k "testDataclassFieldKwOnly or testDataclassFieldKwOnlyDefault"'
    )
    script = make_eval_script(task, spec)
    lines = script.splitlines()
    assert lines[:2] == ["#!/bin/bash", "set -uxo pipefail"]
    start, end = lines.index(": '>>>>> Start Test Output'"), lines.index(": '>>>>> End Test Output'")
    assert lines[start + 1 : end] == [eval_script.test_command(task, spec)]
    reset = "git checkout 0123abcd test-data/unit/check-dataclasses.test"
    assert lines[end + 1] == reset and reset in lines[:start]
    assert spec.version_spec.install in lines


def test_swegym_rows_grade_with_the_forks_parser_and_command(table):  # type: ignore[no-untyped-def]
    patch = (
        "diff --git a/tests/test_main.py b/tests/test_main.py\n--- a/tests/test_main.py\n"
        "+++ b/tests/test_main.py\n@@ -1 +1,2 @@\n x = 1\n+y = 2\n"
    )
    task = _row("pydantic/pydantic", "2.7", patch, FAIL_TO_PASS='["tests/test_main.py::test_y"]')
    test_spec = grading.test_spec_for(task, "img")
    assert test_spec.log_parser == "parse_log_pytest_pydantic"
    assert (
        "pytest -rA --tb=short -vv -o console_output_style=classic --no-header tests/test_main.py"
        in test_spec.eval_script
    )
    log = (
        ">>>>> Applied Patch\n"
        "+ : '>>>>> Start Test Output'\n"
        "tests/test_main.py::test_y \x1b[32mPASSED\x1b[0m\n"
        "+ : '>>>>> End Test Output'\n"
        ">>>>> Test Exit Code: 0"
    )
    tests, resolved, found = grading.evaluate_log(test_spec, log)
    assert found and resolved and tests["FAIL_TO_PASS"]["success"] == ["tests/test_main.py::test_y"]
    # conan's eval commands run before the git preamble, as the harness writes them.
    conan = _row("conan-io/conan", "2.0", patch)
    lines = make_eval_script(conan, table.lookup(conan.repo, conan.version)).splitlines()
    assert lines[5] == "export PYTHONPATH=${PYTHONPATH:-}:$(pwd)" and lines[6].startswith("git config --global")


def test_pydantic_parser_reads_summary_and_verbose_lines():  # type: ignore[no-untyped-def]
    log = (
        "tests/test_a.py::test_one PASSED\n"
        "tests/test_a.py::test_two FAILED [ 50%]\n"
        "\x1b[31mFAILED\x1b[0m tests/test_a.py::test_three - AssertionError: boom\n"
        "SKIPPED tests/test_a.py::test_four\n"
        "PASSED\n"  # a lone status is no test
        "collected 4 items"
    )
    assert parse_log_pytest_pydantic(log, None) == {  # type: ignore[arg-type]
        "tests/test_a.py::test_one": "PASSED",
        "tests/test_a.py::test_two": "FAILED",
        "tests/test_a.py::test_three": "FAILED",
        "tests/test_a.py::test_four": "SKIPPED",
    }
    assert grading.parser_key("parse_log_pytest_pydantic") == "parse_log_pytest_pydantic"


def test_directive_styles(table):  # type: ignore[no-untyped-def]
    patch = "".join(
        f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-a\n+b\n"
        for path in ("tests/forms_tests/tests/test_forms.py", "tests/fixtures/data.json", "docs/releases/4.1.txt")
    )
    django = _row("django/django", "4.1", patch)
    assert eval_script.test_directives(django, table.lookup("django/django", "4.1")) == ["forms_tests.tests.test_forms"]
    flask = _row("pallets/flask", "2.3", patch)
    assert eval_script.test_directives(flask, table.lookup("pallets/flask", "2.3")) == [
        "tests/forms_tests/tests/test_forms.py"
    ]


USER_SPEC = {
    "repos": {
        "octo/widgets": {
            "parser": "parse_log_pytest",
            "versions": {"*": {"python": "3.11", "install": "python -m pip install -e .", "test_cmd": "pytest -rA"}},
        },
        # Overrides one django version whole and keeps the others.
        "Django/Django": {"versions": {"3.0": {"python": "3.11", "test_cmd": "./tests/runtests.py -v 3"}}},
    }
}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_user_spec_file_adds_and_overrides(tmp_path, suffix):  # type: ignore[no-untyped-def]
    import yaml

    path = tmp_path / f"mine{suffix}"
    path.write_text(json.dumps(USER_SPEC) if suffix == ".json" else yaml.safe_dump(USER_SPEC))
    table = SpecTable.load([path])
    spec = table.lookup("Octo/Widgets", "0.7")  # any version, through "*"
    assert spec is not None and spec.repo == "octo/widgets" and spec.version == "*"
    task = _row("octo/widgets", "0.7", "diff --git a/t/test_w.py b/t/test_w.py\n")
    assert eval_script.test_command(task, spec) == "pytest -rA t/test_w.py"
    django = table.lookup("django/django", "3.0")
    assert django.version_spec.test_cmd == "./tests/runtests.py -v 3" and django.version_spec.install is None
    assert django.repo == "django/django" and parser_name(django) == "parse_log_django"  # repo fields kept
    assert table.lookup("django/django", "3.1").version_spec.python == "3.6"  # other versions untouched
    assert SpecTable.load().lookup("octo/widgets", "0.7") is None


@pytest.mark.parametrize(
    "content, where",
    [
        (
            {"repos": {"octo/widgets": {"parser": "parse_log_pytest", "versions": {"1.0": {"python": "3.11"}}}}},
            "key 'repos.octo/widgets.versions.1.0.test_cmd'",
        ),
        (
            {
                "repos": {
                    "octo/widgets": {
                        "parser": "parse_log_pytest",
                        "versions": {"1.0": {"test_cmd": "t", "pyhton": "3"}},
                    }
                }
            },
            "key 'repos.octo/widgets.versions.1.0.pyhton'",
        ),
        (
            {"repos": {"octo/widgets": {"parser": "parse_log_nosuch", "versions": {"1.0": {"test_cmd": "t"}}}}},
            "key 'repos.octo/widgets.parser': unknown log parser 'parse_log_nosuch'",
        ),
        (
            {"repos": {"octo/widgets": {"versions": {"1.0": {"test_cmd": "t"}}}}},
            "key 'repos.octo/widgets.parser': the repository has no log parser",
        ),
        ({"repositories": {}}, "key 'repos'"),
        ("repos: [unclosed", "invalid YAML"),
    ],
)
def test_bad_spec_file_names_file_and_key(tmp_path, content, where):  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.yaml"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SpecFileError) as excinfo:
        SpecTable.load([path])
    assert str(path) in str(excinfo.value) and where in str(excinfo.value)
    with pytest.raises(SpecFileError, match="cannot read spec file"):
        SpecTable.load([tmp_path / "missing.yaml"])
