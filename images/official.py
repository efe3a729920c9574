"""Images for real SWE-bench / SWE-Gym rows, offline, in the official layout: base → env → instance.

A classic row carries no install steps; its repository/version spec (envserver/specs) does. The layers are the
harness's:

- **base**: Debian + the spec's Python (images/python_base.py), shared by every environment of that Python;
- **env**: the repository/version's dependencies in an environment named `testbed` at
  `/opt/miniconda3/envs/testbed`, built once and shared by every instance whose environment script is the same;
- **instance**: the repository at `base_commit` in `/testbed`, the spec's pre-install / install steps run in the
  environment, then committed the harness's way (`git commit --allow-empty -am SWE-bench`), so HEAD holds the
  setup's own edits and the agent's diff against it holds only the agent's.

conda cannot be installed offline here, so the environment is a venv behind a small shim: `source
/opt/miniconda3/bin/activate && conda activate testbed` (the harness's eval scripts) and `. /opt/miniconda3/bin/
activate testbed` (the runtime's init) activate it; the image's PATH starts with it too. The image carries the
label `org.contextrl.env-kind=venv-conda-shim`. An image built here and the published one of the same instance are
interchangeable to the server: the same eval script runs unchanged in both.

Each layer is made by running a bash script in a container of the layer below and committing it (not a
Dockerfile): the CA bundle pip needs behind a TLS-intercepting proxy is bind-mounted read-only for the run only,
so the image never trusts it. Eval scripts reinstall the package (`pip install -e .`) with networking off, so the
instance image keeps a wheelhouse of the project's build requirements and the environment's pip is configured
to use only it (`no-index`): the harness's own script then runs unchanged with no network.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from envserver.image_names import local_image_name
from envserver.specs import ResolvedSpec, SpecTable
from envserver.tasks import TaskInstance
from images.base import LABEL
from images.builder import BuildError, _git, _image_ids, _tag_all
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
WORKDIR = "/testbed"
"""Where the repository lives."""
WHEELHOUSE = "/opt/envserver/wheelhouse"
"""Build requirements kept in the image for offline reinstalls."""
BUILD_CA_PATH = "/run/envserver-build/ca.crt"
"""Where the opt-in CA bundle is mounted during a build run (never part of the image)."""
DEFAULT_PYTHON = "3.9"
"""Python of a spec that names none and whose environment.yml pins none (the harness's default)."""
BUILD_TOOLS = "'setuptools<75' wheel"
"""What the new environment gets before anything else: conda environments come with setuptools and wheel
(releases of the harness's time; newer setuptools dropped APIs that old setup.py files use)."""

ENV_KIND_LABEL = "org.contextrl.env-kind"
"""Label: how the `testbed` environment is made (`venv-conda-shim` here)."""
ENV_KEY_LABEL = "org.contextrl.env-key"
"""Label: digest of an env image's recipe."""
INSTANCE_KEY_LABEL = "org.contextrl.build-key"
"""Label: digest of everything an instance image was built from."""
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


class SpecMissingError(BuildError):
    """A row has no spec for its repo/version, so there is nothing to build its environment from."""


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
            proc = subprocess.run(["bash", "-c", command], cwd=tmp, capture_output=True, text=True)
            if proc.returncode != 0:
                raise BuildError(f"env_patches command failed ({command!r}): {proc.stderr.strip()}")
        return path.read_text()


def build_requirements(repo_dir: Path) -> list[str]:
    """The PEP 518 build requirements of the project in `repo_dir` (setuptools + wheel when it names none)."""
    requires = ["setuptools<75", "wheel"]
    pyproject = repo_dir / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            requires += list(data.get("build-system", {}).get("requires", []))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            pass
    return list(dict.fromkeys(requires))


def instance_script(spec: ResolvedSpec, build_requires: Sequence[str], scm_version: str | None = None) -> str:
    """The instance layer: setup steps in /testbed (the harness's repo script, minus the clone), then the commit."""
    version_spec = spec.version_spec
    lines = [
        *([f"export SETUPTOOLS_SCM_PRETEND_VERSION={shlex.quote(scm_version)}"] if scm_version else []),
        "set -euxo pipefail",
        "if [ -f /run/envserver-build/ca.crt ]; then export PIP_CERT=/run/envserver-build/ca.crt; fi",
        "export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore",
        "git config --system user.email setup@swebench.config",
        "git config --system user.name SWE-bench",
        f"git config --system --add safe.directory {WORKDIR}",
        # The harness's order: chmod, then `git reset --hard` gives tracked files their committed modes back, so the
        # setup commit holds no 424-file mode change (which every agent diff against base_commit would carry).
        f"chmod -R 777 {WORKDIR}",
        f"cd {WORKDIR}",
        "git reset -q --hard HEAD",
        f"source {CONDA_ROOT}/bin/activate",
        f"conda activate {ENV_NAME}",
    ]
    if spec.repo_spec.install:
        lines.append(spec.repo_spec.install)
    lines += list(version_spec.pre_install)
    if version_spec.install:
        lines.append(version_spec.install)
    lines += [
        # Build artefacts of the install (*.egg-info, build/) must not show up as the agent's changes.
        "git status --porcelain --untracked-files=normal | sed -n 's/^?? //p' >> .git/info/exclude",
        "git commit --allow-empty -qam SWE-bench",
        # The eval script reinstalls the package with networking off: keep its build requirements here.
        f"mkdir -p {WHEELHOUSE}",
        f"python -m pip download -q -d {WHEELHOUSE} {' '.join(shlex.quote(r) for r in build_requires)}",
        f"printf '[global]\\nno-index = true\\nfind-links = {WHEELHOUSE}\\n' > {ENV_PREFIX}/pip.conf",
    ]
    return "\n".join(lines) + "\n"


def prepare_checkout(source: str | Path, base_commit: str, dest: Path) -> None:
    """`dest` = a new repository holding `base_commit` checked out, with its history up to that commit only.

    Fetching one commit into an empty repository brings exactly its ancestry (no later commits, branches, or
    tags), works from shallow sources (`--update-shallow`) and full ones alike, and needs no `git gc`, which fails
    on the missing objects of shallow or partial clones. Tags of the source that are ancestors of the commit come
    along when the source is local (version tools such as setuptools_scm read them).
    """
    local = Path(str(source)).expanduser()
    src = str(local.resolve()) if local.exists() else str(source)
    _git(["init", "-q", str(dest)])
    try:
        _git(["fetch", "-q", "--no-tags", "--update-shallow", src, base_commit], dest)
    except BuildError as exc:
        raise BuildError(f"commit {base_commit} could not be fetched from {source}: {exc}") from None
    _git(["reset", "-q", "--hard", base_commit], dest)
    if local.exists():
        # Only version-like tags: others (a mirror's own bookkeeping tags) make `git describe` — and so
        # setuptools_scm's version of the package — unparseable.
        tags = [t for t in _git(["-C", src, "tag", "--merged", base_commit]).split() if VERSION_TAG.match(t)]
        for start in range(0, len(tags), 200):
            refspecs = [f"refs/tags/{t}:refs/tags/{t}" for t in tags[start : start + 200]]
            _git(["fetch", "-q", "--no-tags", "--update-shallow", src, *refspecs], dest)


VERSION_TAG = re.compile(r"^[A-Za-z_-]*v?\d+(\.\d+)+\S*$")
"""Tags kept in an instance's repository: version tags (`1.2.3`, `v1.2`, `pytest-4.4.0`)."""


def pretend_version(repo_dir: Path, version: str | None) -> str | None:
    """A version for setuptools_scm when the checkout has no version tag (shallow sources): the row's version.

    Without a tag setuptools_scm calls the package 0.1.devN, which breaks plugins' and tests' version checks; the
    published images were built from full clones whose tags give the release the row's `version` names.
    """
    probe = subprocess.run(["git", "-C", str(repo_dir), "describe", "--tags", "--abbrev=0"], capture_output=True)
    if probe.returncode == 0 or not version:
        return None
    return version if version.count(".") >= 2 else f"{version}.0"


@dataclass
class InstanceGroup:
    """Instances that share one image: same env, repo, base commit and setup steps."""

    repo: str
    base_commit: str
    env: EnvRecipe
    spec: ResolvedSpec
    instance_ids: list[str] = field(default_factory=list)


@dataclass
class OfficialResult:
    """What happened to one instance group."""

    instance_ids: list[str]
    action: str
    """`built`, `up to date`, or `failed`."""
    image_id: str | None = None
    env_tag: str | None = None
    python: str | None = None
    error: str | None = None


def plan_official(
    tasks: Sequence[TaskInstance],
    specs: SpecTable,
    source_for: Callable[[str], str],
    python_fallback: bool,
) -> tuple[list[InstanceGroup], dict[str, str]]:
    """Group rows into env layers and instance groups; rows that cannot be planned → {instance_id: reason}."""
    envs: dict[str, EnvRecipe] = {}
    groups: dict[tuple[str, str, str], InstanceGroup] = {}
    refused: dict[str, str] = {}
    for task in tasks:
        spec = specs.lookup(task.repo, task.version)
        if spec is None:
            refused[task.instance_id] = (
                f"no spec for {task.repo} version {task.version}: add an entry with --specs (envserver/specs)"
            )
            continue
        try:
            recipe = env_recipe(task, spec, source_for(task.repo), python_fallback)
        except (BuildError, RuntimeError) as exc:
            refused[task.instance_id] = str(exc)
            continue
        env = envs.setdefault(recipe.script + recipe.python.version, recipe)
        env.instance_ids.append(task.instance_id)
        key = (task.repo, task.base_commit, recipe.script + recipe.python.version + spec.model_dump_json())
        group = groups.setdefault(key, InstanceGroup(task.repo, task.base_commit, env, spec))
        group.instance_ids.append(task.instance_id)
    return list(groups.values()), refused


def build_official(
    client: docker.DockerClient,
    tasks: Sequence[TaskInstance],
    specs: SpecTable,
    sources: Mapping[str, str],
    *,
    source_template: str | None = None,
    ca_bundle: Path | None = None,
    python_fallback: bool = False,
    force: bool = False,
    verbose: bool = False,
    log: Log = print,
) -> list[OfficialResult]:
    """Build base, env and instance layers for classic rows; a failing group is reported and the rest go on."""
    from images.builder import resolve_source

    def source_for(repo: str) -> str:
        return resolve_source(repo, sources, source_template)

    groups, refused = plan_official(tasks, specs, source_for, python_fallback)
    results = [OfficialResult([iid], "failed", error=reason) for iid, reason in refused.items()]
    for iid, reason in refused.items():
        log(f"{iid}: cannot build: {reason}")
    mounts = {str(ca_bundle.resolve()): BUILD_CA_PATH} if ca_bundle else {}
    env_ids: dict[int, tuple[str, str]] = {}
    for number, group in enumerate(groups, start=1):
        head = f"[{number}/{len(groups)}] {group.repo}@{group.base_commit[:12]} ({len(group.instance_ids)} instances)"
        result = OfficialResult(list(group.instance_ids), "failed", python=group.env.python.version)
        results.append(result)
        try:
            env_tag, env_id = env_ids.get(id(group.env)) or _ensure_env(client, group.env, mounts, force, verbose, log)
            env_ids[id(group.env)] = (env_tag, env_id)
            result.env_tag = env_tag
            result.image_id, result.action = _ensure_instance(
                client, group, source_for(group.repo), env_id, mounts, force, verbose, log, head
            )
        except (BuildError, RuntimeError, docker.errors.APIError) as exc:
            result.error = str(exc)
            log(f"{head}: FAILED: {exc}")
    return results


def _ensure_env(
    client: docker.DockerClient, recipe: EnvRecipe, mounts: dict[str, str], force: bool, verbose: bool, log: Log
) -> tuple[str, str]:
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


def _ensure_instance(
    client: docker.DockerClient,
    group: InstanceGroup,
    source: str,
    env_id: str,
    mounts: dict[str, str],
    force: bool,
    verbose: bool,
    log: Log,
    head: str,
) -> tuple[str, str]:
    tags = [local_image_name(i) for i in group.instance_ids]
    with tempfile.TemporaryDirectory(prefix="envserver-instance-") as tmp:
        repo_dir = Path(tmp) / "testbed"
        prepare_checkout(source, group.base_commit, repo_dir)
        scm_version = pretend_version(repo_dir, group.spec.version)
        script = instance_script(group.spec, build_requirements(repo_dir), scm_version)
        key = hashlib.sha256(json.dumps([env_id, group.repo, group.base_commit, script]).encode()).hexdigest()[:32]
        current = [(image_labels(client, tag) or {}).get(INSTANCE_KEY_LABEL) == key for tag in tags]
        if not force and all(current):
            log(f"{head}: up to date")
            return client.images.get(tags[0]).id, "up to date"
        log(f"{head}: building")
        previous = _image_ids(client, tags)
        labels = dict(image_labels(client, env_id) or {})
        labels.update(
            {
                LABEL: "instance",
                INSTANCE_KEY_LABEL: key,
                "org.contextrl.repo": group.repo,
                "org.contextrl.base-commit": group.base_commit,
            }
        )
        labels.pop(ENV_KEY_LABEL, None)
        image_id = run_and_commit(
            client,
            env_id,
            script,
            tags[0],
            changes=[
                f"WORKDIR {WORKDIR}",
                'CMD ["/bin/bash"]',
                # the eval script's reinstall must compute the same version as the build did
                *([f"ENV SETUPTOOLS_SCM_PRETEND_VERSION={scm_version}"] if scm_version else []),
            ],
            labels=labels,
            files={WORKDIR: repo_dir},
            mounts=mounts,
            log=log,
            verbose=verbose,
        )
    _tag_all(client, image_id, tags, previous)
    for tag in tags:
        log(f"  tagged {tag}")
    return image_id, "built"
