"""One Docker image per task instance: the base image + the repository at base_commit in /testbed.

The repository is cloned on the host (a local git directory or a URL) and copied into the build context; nothing
is fetched inside the container except what an install step asks for. History after base_commit is dropped
(other branches, tags that are not ancestors, reflogs), so the fix cannot be read out of git. Instances that
share repo, base_commit and install steps share one image, tagged once per instance
(`envserver/sweb.eval.<instance id, lower case>:latest`, see `envserver.image_names`).

A task asks for installation with an optional `install` field (kept by `TaskInstance` as an extra field):
`true` → `python3 -m pip install -e .` when the repository has a setup.py or pyproject.toml; a string or a
list of strings → those shell lines, run in /testbed at build time. Builds use the classic builder (the docker
SDK's build endpoint), never BuildKit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import docker
import docker.errors

from envserver.image_names import local_image_name
from envserver.tasks import TaskInstance
from images.base import LABEL
from images.docker_util import build_context, image_labels

Log = Callable[[str], None]

KEY_LABEL = "org.contextrl.build-key"
"""Label holding a digest of everything an instance image was built from; a mismatch means stale."""
REPO_LABEL = "org.contextrl.repo"
"""Label holding the task's `owner/name`."""
COMMIT_LABEL = "org.contextrl.base-commit"
"""Label holding the commit checked out in /testbed."""
WORKDIR = "/testbed"
"""Where the repository lives in the image."""
CA_PATH = "/etc/envserver/ca-bundle.crt"
"""Where an opt-in CA bundle goes in the image (PIP_CERT points at it)."""
GIT_USER = ("envserver", "envserver@localhost")
"""git user.name / user.email set in every image, so commits and stashes work in episodes."""
EDITABLE_INSTALL = "python3 -m pip install -e ."
"""What `install: true` runs, when the repository has a setup.py or pyproject.toml."""


class BuildError(RuntimeError):
    """An instance image could not be built (no source, a commit that is not there, a failing step)."""


def install_steps(task: TaskInstance, default: Sequence[str] = ()) -> tuple[str, ...] | Literal[True]:
    """The task's install request: True (editable install), shell lines, or `default` when it has none."""
    value = (task.model_extra or {}).get("install")
    if value is None or value is False:
        return tuple(default)
    if value is True:
        return True
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise BuildError(f"{task.instance_id}: field 'install' must be true, a string or a list of strings")


@dataclass(frozen=True)
class BuildGroup:
    """Instances that share one image: same repo, base_commit and install steps."""

    repo: str
    base_commit: str
    install: tuple[str, ...] | Literal[True]
    instance_ids: tuple[str, ...]

    @property
    def tags(self) -> list[str]:
        return [local_image_name(i) for i in self.instance_ids]

    def key(self, base_image_id: str, ca_digest: str | None) -> str:
        """Digest of everything the image depends on."""
        spec = {
            "repo": self.repo,
            "base_commit": self.base_commit,
            "install": self.install if self.install is True else list(self.install),
            "base_image": base_image_id,
            "ca": ca_digest,
            # the template itself, so that a change to it makes existing images stale
            "dockerfile": render_dockerfile(
                "BASE", (EDITABLE_INSTALL,) if self.install is True else self.install, True
            ),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def group_tasks(tasks: Sequence[TaskInstance], default_install: Sequence[str] = ()) -> list[BuildGroup]:
    """Group instances by (repo, base_commit, install), keeping the tasks' order."""
    groups: dict[tuple, list[str]] = {}
    for task in tasks:
        install = install_steps(task, default_install)
        groups.setdefault((task.repo, task.base_commit, install), []).append(task.instance_id)
    return [BuildGroup(repo, commit, install, tuple(ids)) for (repo, commit, install), ids in groups.items()]


def parse_repo_sources(values: Sequence[str]) -> dict[str, str]:
    """`owner/name=PATH_OR_URL` strings → {owner/name: source}."""
    sources = {}
    for value in values:
        repo, sep, source = value.partition("=")
        if not sep or "/" not in repo or not source:
            raise BuildError(f"--repo-source must look like owner/name=PATH_OR_URL, got {value!r}")
        sources[repo.strip()] = source.strip()
    return sources


def resolve_source(repo: str, sources: Mapping[str, str], template: str | None) -> str:
    """Where to clone `repo` from: an explicit source, else the template (`{repo}`, `{owner}`, `{name}`)."""
    if repo in sources:
        return sources[repo]
    if template:
        owner, _, name = repo.partition("/")
        return template.format(repo=repo, owner=owner, name=name)
    raise BuildError(f"no source for {repo}: pass --repo-source {repo}=PATH_OR_URL (or --source-template)")


def _git(args: Sequence[str], cwd: Path | None = None) -> str:
    cmd = ["git", "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def prepare_repo(source: str, base_commit: str, dest: Path) -> None:
    """Clone `source` into `dest` at `base_commit`, keeping history up to it and nothing after it."""
    local = Path(source).expanduser()
    if local.exists():
        source = str(local.resolve())
        clone = ["clone", "-q", "--no-checkout", "--no-hardlinks", source, str(dest)]
    else:
        clone = ["clone", "-q", "--no-checkout", source, str(dest)]
    _git(clone)
    try:
        _git(["cat-file", "-e", f"{base_commit}^{{commit}}"], dest)
    except BuildError:
        raise BuildError(f"commit {base_commit} is not in {source}") from None
    _git(["reset", "-q", "--hard", base_commit], dest)
    _git(["remote", "remove", "origin"], dest)
    current = _git(["symbolic-ref", "-q", "--short", "HEAD"], dest).strip() if _has_branch(dest) else ""
    for branch in _git(["for-each-ref", "--format=%(refname:short)", "refs/heads"], dest).split():
        if branch != current:
            _git(["branch", "-q", "-D", branch], dest)
    future_tags = _git(["tag", "--no-merged", "HEAD"], dest).split()
    for start in range(0, len(future_tags), 200):
        _git(["tag", "-d", *future_tags[start : start + 200]], dest)
    _git(["reflog", "expire", "--expire=now", "--all"], dest)
    _git(["gc", "-q", "--prune=now"], dest)


def _has_branch(repo: Path) -> bool:
    proc = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=repo, capture_output=True, check=False)
    return proc.returncode == 0


def render_dockerfile(base_image: str, install: Sequence[str], ca_bundle: bool) -> str:
    """The Dockerfile of an instance image."""
    name, email = GIT_USER
    lines = [
        f"FROM {base_image}",
        f"RUN git config --system user.name {name} && git config --system user.email {email} \\",
        f" && git config --system --add safe.directory {WORKDIR}",
    ]
    if ca_bundle:
        lines += [f"COPY ca-bundle.crt {CA_PATH}", f"ENV PIP_CERT={CA_PATH}"]
    lines += [f"COPY testbed/ {WORKDIR}/", f"WORKDIR {WORKDIR}"]
    if any("pip" in step for step in install):
        lines += [
            "RUN python3 -m pip --version >/dev/null 2>&1 || (apt-get update \\",
            " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip python3-venv \\",
            " && apt-get clean && rm -rf /var/lib/apt/lists/*)",
            "ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1 "
            "PIP_DISABLE_PIP_VERSION_CHECK=1",
        ]
    for step in install:
        lines.append(f"RUN {step}")
    if install:
        # Build artefacts of the install (*.egg-info, build/) must not show up as the agent's changes.
        lines.append("RUN git status --porcelain --untracked-files=normal | sed -n 's/^?? //p' >> .git/info/exclude")
    lines += ["RUN git update-index -q --refresh || true", 'CMD ["/bin/bash"]']
    return "\n".join(lines) + "\n"


def write_context(
    group: BuildGroup, source: str, context: Path, base_image: str, ca_bundle: Path | None, log: Log
) -> None:
    """Fill a build context: testbed/ (the repository), the optional CA bundle and the Dockerfile."""
    prepare_repo(source, group.base_commit, context / "testbed")
    install: Sequence[str]
    if group.install is True:
        has_project = any((context / "testbed" / f).is_file() for f in ("setup.py", "pyproject.toml"))
        install = (EDITABLE_INSTALL,) if has_project else ()
        if not has_project:
            log(f"  {group.repo}: install requested but there is no setup.py or pyproject.toml; nothing to install")
    else:
        install = group.install
    if ca_bundle is not None:
        shutil.copyfile(ca_bundle, context / "ca-bundle.crt")
    (context / "Dockerfile").write_text(render_dockerfile(base_image, install, ca_bundle is not None))


@dataclass
class Plan:
    """What to do for one group: skip (all tags current), tag (an image is current, some tags are missing), build."""

    group: BuildGroup
    action: Literal["skip", "tag", "build"]
    key: str
    image_id: str | None = None


def plan_builds(
    client: docker.DockerClient, groups: Sequence[BuildGroup], base_image_id: str, ca_digest: str | None, force: bool
) -> list[Plan]:
    """Decide per group, from the tags' build-key labels, what needs doing."""
    plans = []
    for group in groups:
        key = group.key(base_image_id, ca_digest)
        current = []
        for tag in group.tags:
            labels = image_labels(client, tag)
            current.append(labels is not None and labels.get(KEY_LABEL) == key)
        if force or not any(current):
            plans.append(Plan(group, "build", key))
        elif all(current):
            plans.append(Plan(group, "skip", key))
        else:
            good = group.tags[current.index(True)]
            plans.append(Plan(group, "tag", key, client.images.get(good).id))
    return plans


def _split_tag(tag: str) -> tuple[str, str]:
    repository, sep, version = tag.rpartition(":")
    if not sep or "/" in version:
        return tag, "latest"
    return repository, version


def _image_ids(client: docker.DockerClient, tags: Sequence[str]) -> set[str]:
    ids = set()
    for tag in tags:
        try:
            ids.add(client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            pass
    return ids


def _tag_all(client: docker.DockerClient, image_id: str, tags: Sequence[str], previous: set[str]) -> None:
    """Point every tag at `image_id`; then drop images of ours in `previous` that are left without any tag."""
    for tag in tags:
        repository, version = _split_tag(tag)
        client.api.tag(image_id, repository, version, force=True)
    for old_id in previous - {image_id}:
        try:
            image = client.images.get(old_id)
            if not image.tags and (image.labels or {}).get(LABEL) == "instance":
                client.images.remove(old_id)
        except docker.errors.APIError:
            pass  # in use by a container, or already gone: leave it


def _digest(path: Path | None) -> str | None:
    return None if path is None else hashlib.sha256(path.read_bytes()).hexdigest()


def build_groups(
    client: docker.DockerClient,
    groups: Sequence[BuildGroup],
    *,
    sources: Mapping[str, str] | Callable[[BuildGroup], str],
    source_template: str | None = None,
    base_image: str,
    ca_bundle: Path | None = None,
    force: bool = False,
    verbose: bool = False,
    log: Log = print,
) -> list[Plan]:
    """Build (or tag, or skip) every group; return the plans carried out.

    `sources` maps `owner/name` to a local git directory or URL, or is a callable that gives a group's source
    (only called for groups that need a build).
    """
    base_id = client.images.get(base_image).id
    plans = plan_builds(client, groups, base_id, _digest(ca_bundle), force)
    for number, plan in enumerate(plans, start=1):
        group = plan.group
        head = f"[{number}/{len(plans)}] {group.repo}@{group.base_commit[:12]} ({len(group.instance_ids)} instances)"
        if plan.action == "skip":
            log(f"{head}: up to date")
            continue
        if plan.action == "tag":
            log(f"{head}: tagging the existing image")
            _tag_all(client, plan.image_id or "", group.tags, _image_ids(client, group.tags))
            continue
        log(f"{head}: building")
        source = sources(group) if callable(sources) else resolve_source(group.repo, sources, source_template)
        previous = _image_ids(client, group.tags)
        with tempfile.TemporaryDirectory(prefix="envserver-build-") as tmp:
            context = Path(tmp)
            write_context(group, source, context, base_image, ca_bundle, log)
            labels = {
                LABEL: "instance",
                KEY_LABEL: plan.key,
                REPO_LABEL: group.repo,
                COMMIT_LABEL: group.base_commit,
            }
            plan.image_id = build_context(
                client, context, group.tags[0], labels=labels, nocache=force, verbose=verbose, log=log
            )
        _tag_all(client, plan.image_id, group.tags, previous)
        for tag in group.tags:
            log(f"  tagged {tag}")
    return plans
