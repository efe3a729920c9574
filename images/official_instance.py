"""The instance layer of the official image layout: the repository at `base_commit` in `/testbed`, set up.

The repository is fetched on the host with its history up to `base_commit` only (plus the version tags among its
ancestors) and copied in; the spec's pre-install / install steps run in the `testbed` environment, then the result is
committed the harness's way (`git commit --allow-empty -am SWE-bench`), so HEAD holds the setup's own edits and the
agent's diff against it holds only the agent's. Eval scripts reinstall the package (`pip install -e .`) with
networking off, so the image keeps a wheelhouse of the project's build requirements and the environment's pip is
configured to use only it (`no-index`): the harness's own script then runs unchanged with no network.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from envserver.image_names import local_image_name
from envserver.specs import ResolvedSpec
from images.base import LABEL
from images.builder import BuildError, _git, _image_ids, _tag_all
from images.docker_util import image_labels, run_and_commit
from images.official_env import CONDA_ROOT, ENV_KEY_LABEL, ENV_NAME, ENV_PREFIX, EnvRecipe

Log = Callable[[str], None]

WORKDIR = "/testbed"
"""Where the repository lives."""
WHEELHOUSE = "/opt/envserver/wheelhouse"
"""Build requirements kept in the image for offline reinstalls."""
INSTANCE_KEY_LABEL = "org.contextrl.build-key"
"""Label: digest of everything an instance image was built from."""


@dataclass
class InstanceGroup:
    """Instances that share one image: same env, repo, base commit and setup steps."""

    repo: str
    base_commit: str
    env: EnvRecipe
    spec: ResolvedSpec
    instance_ids: list[str] = field(default_factory=list)


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
    probe = subprocess.run(
        ["git", "-C", str(repo_dir), "describe", "--tags", "--abbrev=0"], capture_output=True, check=False
    )
    if probe.returncode == 0 or not version:
        return None
    return version if version.count(".") >= 2 else f"{version}.0"


def ensure_instance(
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
    """The image of `group` (id, `built` or `up to date`) on the env image `env_id`, tagged for every instance."""
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
