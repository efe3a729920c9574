"""Images for real SWE-bench / SWE-Gym rows, offline, in the official layout: base → env → instance.

A classic row carries no install steps; its repository/version spec (envserver/specs) does. The layers are the
harness's, one module each:

- **base** (images/python_base.py): Debian + the spec's Python, shared by every environment of that Python;
- **env** (images/official_env.py): the repository/version's dependencies in an environment named `testbed` at
  `/opt/miniconda3/envs/testbed` (a venv behind a `conda activate` shim), built once and shared by every instance
  whose environment script is the same;
- **instance** (images/official_instance.py): the repository at `base_commit` in `/testbed`, the spec's pre-install
  / install steps run in the environment, then committed the harness's way (`git commit --allow-empty -am
  SWE-bench`), so HEAD holds the setup's own edits and the agent's diff against it holds only the agent's.

This module plans the rows into env layers and instance groups and builds them, a failing group reported and the
rest going on. An image built here and the published one of the same instance are interchangeable to the server:
the same eval script runs unchanged in both.

Each layer is made by running a bash script in a container of the layer below and committing it (not a
Dockerfile): the CA bundle pip needs behind a TLS-intercepting proxy is bind-mounted read-only for the run only,
so the image never trusts it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from envserver.specs import SpecTable
from envserver.tasks import TaskInstance
from images.builder import BuildError, resolve_source
from images.official_env import EnvRecipe, ensure_env, env_recipe
from images.official_instance import InstanceGroup, ensure_instance

Log = Callable[[str], None]

BUILD_CA_PATH = "/run/envserver-build/ca.crt"
"""Where the opt-in CA bundle is mounted during a build run (never part of the image)."""


class SpecMissingError(BuildError):
    """A row has no spec for its repo/version, so there is nothing to build its environment from."""


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
            env_tag, env_id = env_ids.get(id(group.env)) or ensure_env(client, group.env, mounts, force, verbose, log)
            env_ids[id(group.env)] = (env_tag, env_id)
            result.env_tag = env_tag
            result.image_id, result.action = ensure_instance(
                client, group, source_for(group.repo), env_id, mounts, force, verbose, log, head
            )
        except (BuildError, RuntimeError, docker.errors.APIError) as exc:
            result.error = str(exc)
            log(f"{head}: FAILED: {exc}")
    return results
