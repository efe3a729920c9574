"""The env layer of the official image layout: a repository/version's dependencies in an environment named `testbed`.

conda cannot be installed offline here, so the environment is a venv at `/opt/miniconda3/envs/testbed` behind a small
shim (ACTIVATE_SHIM): `source /opt/miniconda3/bin/activate && conda activate testbed` (the harness's eval scripts)
and `. /opt/miniconda3/bin/activate testbed` (the runtime's init) activate it; the image's PATH starts with it too.
What to install comes from the row's spec: a requirements.txt or environment.yml read from the source at the row's
`environment_setup_commit` (conda entries converted to pip), or the spec's package list. One env image serves every
instance whose script is the same; it carries the label `org.contextrl.env-kind=venv-conda-shim`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from envserver.specs import ResolvedSpec
from envserver.tasks import TaskInstance
from images.base import LABEL
from images.builder import BuildError
from images.docker_util import image_labels, run_and_commit
from images.python_base import (
    PYTHON_LABEL,
    PYTHON_REQUESTED_LABEL,
    PythonChoice,
    choose_python,
    ensure_python_base,
)
from images.requirements import (
    PipRequirements,
    RequirementsError,
    conda_packages_to_pip,
    environment_yml_text,
    environment_yml_to_pip,
    has_commit,
    requirements_text,
)

Log = Callable[[str], None]

CONDA_ROOT = "/opt/miniconda3"
"""Where the harness's images keep conda; here it holds only the activation shim and the envs folder."""
ENV_NAME = "testbed"
"""The environment's name, as the harness names it."""
ENV_PREFIX = f"{CONDA_ROOT}/envs/{ENV_NAME}"
"""The environment's folder (a venv)."""
DEFAULT_PYTHON = "3.9"
"""Python of a spec that names none and whose environment.yml pins none (the harness's default)."""
BUILD_TOOLS = "'setuptools<75' wheel"
"""What the new environment gets before anything else: conda environments come with setuptools and wheel
(releases of the harness's time; newer setuptools dropped APIs that old setup.py files use)."""

ENV_KIND_LABEL = "org.contextrl.env-kind"
"""Label: how the `testbed` environment is made (`venv-conda-shim` here)."""
ENV_KEY_LABEL = "org.contextrl.env-key"
"""Label: digest of an env image's recipe."""
SKIPPED_LABEL = "org.contextrl.env-skipped"
"""Label: conda-only packages the environment left out (JSON list)."""

ACTIVATE_SHIM = f"""\
# envserver: this image has no conda (it cannot be installed offline); its environments are venvs.
# This shim gives the harness's `source {CONDA_ROOT}/bin/activate && conda activate NAME` (and
# `. {CONDA_ROOT}/bin/activate NAME`) their effect: the venv at {CONDA_ROOT}/envs/NAME is activated.
conda() {{
  case "${{1:-}}" in
    activate)
      local name="${{2:-base}}"
      if [ "$name" = base ]; then return 0; fi
      if [ ! -f "{CONDA_ROOT}/envs/$name/bin/activate" ]; then echo "conda: no environment $name" >&2; return 1; fi
      if [ -n "${{VIRTUAL_ENV:-}}" ] && type deactivate >/dev/null 2>&1; then deactivate; fi
      . "{CONDA_ROOT}/envs/$name/bin/activate"
      export CONDA_DEFAULT_ENV="$name" CONDA_PREFIX="{CONDA_ROOT}/envs/$name";;
    deactivate)
      if type deactivate >/dev/null 2>&1; then deactivate; fi
      unset CONDA_DEFAULT_ENV CONDA_PREFIX;;
    *) echo "conda: not available in this image (envserver shim: activate/deactivate only)" >&2; return 1;;
  esac
}}
if [ -n "${{1:-}}" ]; then conda activate "$1"; fi
"""


@dataclass
class EnvRecipe:
    """One environment layer: a Python base and the script that installs a repo/version's dependencies."""

    python: PythonChoice
    script: str
    skipped: list[str] = field(default_factory=list)
    """conda entries the pip conversion left out."""
    instance_ids: list[str] = field(default_factory=list)

    def key(self, base_id: str) -> str:
        return hashlib.sha256(json.dumps([base_id, self.script]).encode()).hexdigest()

    def tag(self, base_id: str) -> str:
        return f"envserver/sweb.env.py.x86_64.{self.key(base_id)[:22]}:latest"


def _pip_install(requirements: Sequence[str], one_by_one_fallback: bool) -> list[str]:
    """Shell lines that pip-install `requirements`; with the fallback, a failing batch is retried one by one and
    each failure is reported (conda names that are not on PyPI), not fatal."""
    if not requirements:
        return []
    quoted = " ".join(shlex.quote(r) for r in requirements)
    if not one_by_one_fallback:
        return [f"python -m pip install {quoted}"]
    return [
        f"python -m pip install {quoted} || for req in {quoted}; do "
        'python -m pip install "$req" || echo "envserver: could not install $req (left out)" '
        ">> /opt/envserver/env-warnings.txt; done"
    ]


def env_recipe(task: TaskInstance, spec: ResolvedSpec, source: str | Path, python_fallback: bool) -> EnvRecipe:
    """The env layer for a row: which Python, and the script that installs its dependencies."""
    version_spec, repo_spec = spec.version_spec, spec.repo_spec
    commit = task.environment_setup_commit or task.base_commit
    packages = (version_spec.packages or "").strip()
    converted = PipRequirements()
    lines = [
        "set -euxo pipefail",
        "if [ -f /run/envserver-build/ca.crt ]; then export PIP_CERT=/run/envserver-build/ca.crt; fi",
        "export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore",
        f"mkdir -p {CONDA_ROOT}/bin {CONDA_ROOT}/envs /opt/envserver",
        f"cat > {CONDA_ROOT}/bin/activate <<'EOF_ENVSERVER_SHIM'\n{ACTIVATE_SHIM}EOF_ENVSERVER_SHIM",
    ]
    requested = version_spec.python
    install_lines: list[str] = []
    if packages in ("requirements.txt", "environment.yml") and not has_commit(source, commit):
        raise BuildError(
            f"{task.instance_id}: the environment-setup commit {commit[:12]} is not in {source} (its "
            f"{packages} is read there)"
        )
    if packages == "requirements.txt":
        try:
            reqs = requirements_text(source, commit, repo_spec.requirements_paths)
        except RequirementsError as exc:
            raise BuildError(f"{task.instance_id}: {exc}") from None
        install_lines += [
            f"cat > /root/requirements.txt <<'EOF_59812759871'\n{reqs}\nEOF_59812759871",
            "python -m pip install -r /root/requirements.txt",
            "rm /root/requirements.txt",
        ]
    elif packages == "environment.yml":
        try:
            yml = environment_yml_text(source, commit, repo_spec.environment_yml_paths)
        except RequirementsError as exc:
            raise BuildError(f"{task.instance_id}: {exc}") from None
        if version_spec.env_patches:
            yml = _patched_yml(yml, version_spec.env_patches)
        converted = environment_yml_to_pip(yml)
        requested = requested or converted.python
        install_lines += _pip_install(converted.requirements, one_by_one_fallback=True)
    elif packages:
        converted = conda_packages_to_pip(packages)
        install_lines += _pip_install(converted.requirements, one_by_one_fallback=True)
    if version_spec.pip_packages:
        install_lines.append(f"python -m pip install {' '.join(version_spec.pip_packages)}")
    python = choose_python(requested or DEFAULT_PYTHON, python_fallback)
    lines += [
        f"python3 -m venv {ENV_PREFIX}",
        f"source {CONDA_ROOT}/bin/activate",
        f"conda activate {ENV_NAME}",
        f"python -m pip install --upgrade pip {BUILD_TOOLS}",
        *install_lines,
        "python -m pip freeze > /opt/envserver/env-freeze.txt",
    ]
    return EnvRecipe(python=python, script="\n".join(lines) + "\n", skipped=converted.skipped)


def _patched_yml(yml: str, patches: Sequence[str]) -> str:
    """Apply a spec's `env_patches` (shell commands editing ./environment.yml) on the host, in a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="envserver-yml-") as tmp:
        path = Path(tmp, "environment.yml")
        path.write_text(yml)
        for command in patches:
            proc = subprocess.run(["bash", "-c", command], cwd=tmp, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"env_patches command failed ({command!r}): {proc.stderr.strip()}")
        return path.read_text()


def ensure_env(
    client: docker.DockerClient, recipe: EnvRecipe, mounts: dict[str, str], force: bool, verbose: bool, log: Log
) -> tuple[str, str]:
    """The env image of `recipe` (tag, id), built on its Python base unless a current one exists."""
    base_tag = ensure_python_base(client, recipe.python, log=log)
    base_id = client.images.get(base_tag).id
    tag, key = recipe.tag(base_id), recipe.key(base_id)
    labels = image_labels(client, tag)
    if not force and labels is not None and labels.get(ENV_KEY_LABEL) == key:
        log(f"env {tag}: up to date")
        return tag, client.images.get(tag).id
    log(f"env {tag}: building (Python {recipe.python.version}, for {len(recipe.instance_ids)} instances)")
    if recipe.python.fallback:
        log(f"  note: the spec asks for Python {recipe.python.requested}; built with {recipe.python.version}")
    image_id = run_and_commit(
        client,
        base_tag,
        recipe.script,
        tag,
        changes=[
            f"ENV PATH={ENV_PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"ENV VIRTUAL_ENV={ENV_PREFIX}",
            f"ENV CONDA_DEFAULT_ENV={ENV_NAME}",
            'CMD ["/bin/bash"]',
        ],
        labels={
            LABEL: "env",
            ENV_KEY_LABEL: key,
            ENV_KIND_LABEL: "venv-conda-shim",
            PYTHON_LABEL: recipe.python.version,
            PYTHON_REQUESTED_LABEL: recipe.python.requested,
            SKIPPED_LABEL: json.dumps(recipe.skipped),
        },
        mounts=mounts,
        log=log,
        verbose=verbose,
    )
    return tag, image_id
