"""Which Docker image runs a task instance: the task's own `image`, else the first name from a list of templates.

Templates are `str.format` patterns over the fields of `template_fields`. The defaults cover, in order:

- images this project builds (`python -m images build`): `envserver/sweb.eval.<instance id, lower case>:latest`
- SWE-bench's published images: Docker Hub forbids `__` in names, so swebench spells it `_1776_`
  (`swebench.image_builder.image_spec.ImageSpec.name`, mini-swe-agent's `get_swebench_docker_image_name`)
- SWE-Gym's published images, which spell `__` as `_s_` (OpenHands' `get_instance_docker_image`)

No Docker import here: the env server decides names; the caller says which names exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

LOCAL_TEMPLATE = "envserver/sweb.eval.{instance_id_lower}:latest"
"""Name of the images `python -m images build` tags, one per instance."""

SWEBENCH_TEMPLATE = "swebench/sweb.eval.x86_64.{swebench_id}:latest"
"""SWE-bench's published instance images."""

SWEGYM_TEMPLATE = "xingyaoww/sweb.eval.x86_64.{swegym_id}:latest"
"""SWE-Gym's published instance images."""

DEFAULT_TEMPLATES = [LOCAL_TEMPLATE, SWEBENCH_TEMPLATE, SWEGYM_TEMPLATE]
"""Templates tried in order when a task names no image."""


class _TaskLike(Protocol):
    instance_id: str
    repo: str
    image: str | None


def template_fields(instance_id: str, repo: str = "") -> dict[str, str]:
    """Placeholders a template may use, for one instance."""
    lower = instance_id.lower()
    owner, _, name = repo.partition("/")
    return {
        "instance_id": instance_id,
        "instance_id_lower": lower,
        "swebench_id": lower.replace("__", "_1776_"),
        "swegym_id": lower.replace("__", "_s_"),
        "repo_owner": owner.lower(),
        "repo_name": name.lower(),
    }


def format_template(template: str, instance_id: str, repo: str = "") -> str:
    """Fill one template; an unknown placeholder is a ValueError that names the known ones."""
    fields = template_fields(instance_id, repo)
    try:
        return template.format_map(fields)
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"image template {template!r} uses unknown placeholder {exc}; known: {', '.join(sorted(fields))}"
        ) from None


def local_image_name(instance_id: str) -> str:
    """The tag `python -m images build` gives an instance's image."""
    return format_template(LOCAL_TEMPLATE, instance_id)


def candidate_images(task: _TaskLike, templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """Image names to try for a task, best first: `task.image` when set, then each template (no duplicates)."""
    names: dict[str, None] = {}
    if task.image:
        names[task.image] = None
    for template in templates:
        names.setdefault(format_template(template, task.instance_id, task.repo), None)
    return list(names)


def resolve_image(
    task: _TaskLike,
    templates: Sequence[str],
    image_exists: Callable[[str], bool],
) -> str | None:
    """The first candidate image that `image_exists` accepts, or None when none does."""
    for name in candidate_images(task, templates):
        if image_exists(name):
            return name
    return None
