"""The official-layout image recipes without Docker: Python choice, requirements read offline from real shallow
sources (../shared/data/repos), conda → pip conversion, checkouts that hold no later history."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from envserver.specs import SpecTable
from envserver.tasks import TaskInstance
from images.official_env import ACTIVATE_SHIM, env_recipe
from images.official_instance import instance_script, prepare_checkout
from images.python_base import PythonVersionError, choose_python
from images.requirements import conda_packages_to_pip, environment_yml_to_pip, requirements_text

SHARED = Path(os.environ.get("CONTEXTRL_SHARED", Path(__file__).resolve().parents[3] / "shared"))
REPOS = SHARED / "data" / "repos"
LITE = SHARED / "data" / "tasks" / "swe-bench-lite-test.json"


def _unpack(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    archive = REPOS / f"{name}.git.tar.gz"
    if not archive.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{archive} is missing")
        pytest.skip(f"{archive} is not here")
    dest = tmp_path_factory.mktemp(name)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / f"{name}.git"


@pytest.fixture(scope="module")
def flask_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _unpack(tmp_path_factory, "pallets__flask")


@pytest.fixture(scope="module")
def requests_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _unpack(tmp_path_factory, "psf__requests")


def _row(instance_id: str) -> TaskInstance:
    rows = {row["instance_id"]: row for row in json.loads(LITE.read_text())}
    return TaskInstance.model_validate(rows[instance_id])


def test_python_choice_exact_refused_and_fallback() -> None:
    assert choose_python("3.9").suite == "bullseye"
    assert choose_python("3.11").tag == "envserver/base:python3.11"
    with pytest.raises(PythonVersionError, match=r"Python 3\.10 is not available offline.*--python-fallback"):
        choose_python("3.10")
    fallback = choose_python("3.10", fallback=True)
    assert (fallback.requested, fallback.version, fallback.fallback) == ("3.10", "3.11", True)
    assert choose_python("3.6", fallback=True).version == "3.9"
    assert choose_python("3.12", fallback=True).version == "3.13"


def test_requirements_read_at_the_environment_commit_of_a_shallow_source(flask_source: Path) -> None:
    task = _row("pallets__flask-4045")
    spec = SpecTable.bundled().lookup(task.repo, task.version)
    assert spec is not None and spec.version_spec.packages == "requirements.txt"
    text = requirements_text(flask_source, task.environment_setup_commit or "", spec.repo_spec.requirements_paths)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "requirements/dev.txt is not empty at that commit"
    assert not any(line.strip().startswith(("-e .", "#", "-r")) for line in lines)
    # dev.txt includes other files with -r: their pins come first, as the harness orders them
    assert any(line.startswith("pytest") for line in lines)


def test_env_recipe_for_a_classic_row(flask_source: Path) -> None:
    task = _row("pallets__flask-4045")
    spec = SpecTable.bundled().lookup(task.repo, task.version)
    assert spec is not None
    recipe = env_recipe(task, spec, flask_source, python_fallback=False)
    assert recipe.python.version == "3.9"
    script = recipe.script
    assert "python3 -m venv /opt/miniconda3/envs/testbed" in script
    assert "python -m pip install -r /root/requirements.txt" in script
    assert "python -m pip install setuptools==70.0.0 Werkzeug==2.3.7" in script  # the spec's pip_packages
    # the same row on a Python not available offline is refused unless the fallback is asked for
    other = task.model_copy(update={"version": "2.1"})
    spec21 = SpecTable.bundled().lookup(other.repo, "2.1")
    assert spec21 is not None
    with pytest.raises(PythonVersionError):
        env_recipe(other, spec21, flask_source, python_fallback=False)
    assert env_recipe(other, spec21, flask_source, python_fallback=True).python.version == "3.11"


def test_instance_script_follows_the_harness_setup(requests_source: Path) -> None:
    task = _row("psf__requests-2317")
    spec = SpecTable.bundled().lookup(task.repo, task.version)
    assert spec is not None
    script = instance_script(spec, ["setuptools<75", "wheel"]).splitlines()
    assert script.index("conda activate testbed") < script.index("python -m pip install .")
    assert "git commit --allow-empty -qam SWE-bench" in script
    assert any(line.startswith("printf '[global]\\nno-index = true") for line in script)


def test_checkout_from_a_shallow_source_has_no_later_history(requests_source: Path, tmp_path: Path) -> None:
    early, late = "091991be0da19de9108dbe5e3752917fea3d7fdc", "36453b95b5a5ec0271d1b3fc2bd1fa8fcd8f1e0e"
    dest = tmp_path / "testbed"
    prepare_checkout(requests_source, early, dest)
    head = subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout
    assert head.strip() == early
    for ref in (late, f"base-{late}"):
        probe = subprocess.run(["git", "-C", str(dest), "cat-file", "-e", ref], capture_output=True, check=False)
        assert probe.returncode != 0, f"{ref} must not be reachable in the instance's repository"
    assert (dest / "requests" / "__init__.py").is_file()


def test_checkout_of_a_missing_commit_names_it(requests_source: Path, tmp_path: Path) -> None:
    from images.builder import BuildError

    with pytest.raises(BuildError, match="0123456789abcdef0123456789abcdef01234567"):
        prepare_checkout(requests_source, "0123456789abcdef0123456789abcdef01234567", tmp_path / "x")


def test_conda_specs_become_pip_requirements() -> None:
    out = conda_packages_to_pip("'numpy==1.19.2' 'scipy==1.5.2' pytest 'pandas<2.0.0' setuptools=68 cxx-compiler")
    assert out.requirements == ["numpy==1.19.2", "scipy==1.5.2", "pytest", "pandas<2.0.0", "setuptools==68.*"]
    assert out.skipped == ["cxx-compiler"]
    yml = """
name: test
channels: [conda-forge]
dependencies:
  - python=3.10
  - conda-forge::numpy>=1.21
  - pytables
  - libgdal
  - pip
  - pip:
      - pytest-xdist
      - -e .
"""
    env = environment_yml_to_pip(yml)
    assert env.python == "3.10"
    assert env.requirements == ["numpy>=1.21", "tables", "pytest-xdist"]
    assert env.skipped == ["libgdal"]


def test_activation_shim_activates_the_venv_under_set_u(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    env = root / "envs" / "testbed"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(env)], check=True)
    shim = tmp_path / "activate"
    shim.write_text(ACTIVATE_SHIM.replace("/opt/miniconda3", str(root)))
    script = (
        f"set -uo pipefail; source {shim} && conda activate testbed && echo $CONDA_DEFAULT_ENV $(command -v python)"
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["testbed", str(env / "bin" / "python")]
    # the runtime's init form: `. activate testbed`
    out = subprocess.run(
        ["bash", "-c", f". {shim} testbed; echo $VIRTUAL_ENV"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(env)
    missing = subprocess.run(
        ["bash", "-c", f"source {shim}; conda activate nope"], capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0 and "no environment nope" in missing.stderr
