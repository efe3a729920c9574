"""Image-name resolution for prebuilt images (envserver.image_names)."""

from __future__ import annotations

import sys

import pytest

from envserver.image_names import (
    DEFAULT_TEMPLATES,
    candidate_images,
    format_template,
    local_image_name,
    resolve_image,
    template_fields,
)
from envserver.tasks import TaskInstance


def _task(instance_id: str = "django__django-11099", image: str | None = None) -> TaskInstance:
    return TaskInstance(
        instance_id=instance_id, repo="django/django", base_commit="abcd1234", problem_statement="x", image=image
    )


def test_default_templates() -> None:
    assert DEFAULT_TEMPLATES == [
        "envserver/sweb.eval.{instance_id_lower}:latest",
        "swebench/sweb.eval.x86_64.{swebench_id}:latest",
        "xingyaoww/sweb.eval.x86_64.{swegym_id}:latest",
    ]


def test_swebench_and_swegym_conventions() -> None:
    # swebench: ImageSpec.name replaces "__" with "_1776_"; SWE-Gym / OpenHands: "_s_"; both lower case
    assert candidate_images(_task("Project-MONAI__MONAI-3715")) == [
        "envserver/sweb.eval.project-monai__monai-3715:latest",
        "swebench/sweb.eval.x86_64.project-monai_1776_monai-3715:latest",
        "xingyaoww/sweb.eval.x86_64.project-monai_s_monai-3715:latest",
    ]


def test_fields() -> None:
    fields = template_fields("Owner__Repo-1", "Owner/Repo")
    assert fields["instance_id"] == "Owner__Repo-1"
    assert fields["repo_owner"] == "owner" and fields["repo_name"] == "repo"
    assert local_image_name("contextrl-samples__textkit-1") == "envserver/sweb.eval.contextrl-samples__textkit-1:latest"


def test_explicit_image_comes_first_without_duplicates() -> None:
    task = _task(image="swebench/sweb.eval.x86_64.django_1776_django-11099:latest")
    names = candidate_images(task)
    assert names[0] == task.image
    assert len(names) == len(set(names)) == 3


def test_custom_templates_and_unknown_placeholder() -> None:
    assert candidate_images(_task(), ["registry.local/{repo_owner}/{instance_id_lower}:v1"]) == [
        "registry.local/django/django__django-11099:v1"
    ]
    with pytest.raises(ValueError, match="unknown placeholder"):
        format_template("x/{nope}:latest", "a__b-1")


def test_resolve_image_takes_the_first_existing() -> None:
    task = _task()
    present = {"xingyaoww/sweb.eval.x86_64.django_s_django-11099:latest"}
    asked: list[str] = []

    def exists(name: str) -> bool:
        asked.append(name)
        return name in present

    assert resolve_image(task, DEFAULT_TEMPLATES, exists) == next(iter(present))
    assert asked == candidate_images(task)
    assert resolve_image(task, DEFAULT_TEMPLATES, lambda name: False) is None
    assert (
        resolve_image(task, DEFAULT_TEMPLATES, lambda name: True) == "envserver/sweb.eval.django__django-11099:latest"
    )


def test_module_does_not_import_docker() -> None:
    import subprocess

    code = "import sys, envserver.image_names; print('docker' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
