"""Grading in a fresh container, driven directly through the Docker backend: outcomes and infra failures."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from envserver import grading
from envserver.image_names import local_image_name
from envserver.sandbox.base import SandboxSpec
from envserver.sandbox.docker_backend import DockerBackend

pytestmark = pytest.mark.docker


def _grade(task, image, patch, timeout_s=300.0):  # type: ignore[no-untyped-def]
    labels = {"envserver.server": f"test-grading-{uuid.uuid4().hex[:8]}"}

    async def run():  # type: ignore[no-untyped-def]
        backend = DockerBackend()
        try:
            report = await grading.grade(backend, task, image, patch, SandboxSpec(image=image or ""), timeout_s, labels)
            left = await backend.count_labelled(labels)
        finally:
            await backend.close()
        return report, left

    report, left = asyncio.run(run())
    assert left == 0, "the grading container must be removed"
    return report


def test_gold_and_empty_patch(sample_images, sample_tasks):  # type: ignore[no-untyped-def]
    task = sample_tasks[-1]
    image = local_image_name(task.instance_id)
    gold = _grade(task, image, task.patch)
    assert gold.resolved and gold.reward == 1.0 and gold.patch_applied and not gold.infra_failure
    empty = _grade(task, image, "")
    assert not empty.resolved and empty.reward == 0.0 and not empty.infra_failure
    assert set(empty.tests["FAIL_TO_PASS"]["failure"]) == set(task.FAIL_TO_PASS)


def test_patch_that_does_not_apply_is_a_zero_not_an_infra_failure(sample_images, sample_tasks):  # type: ignore[no-untyped-def]
    task = sample_tasks[0]
    bogus = "diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n@@ -1,1 +1,1 @@\n-x = 1\n+x = 2\n"
    report = _grade(task, local_image_name(task.instance_id), bogus)
    assert report.patch_applied is False and report.reward == 0.0 and not report.infra_failure


def test_missing_image_is_an_infra_failure(sample_tasks):  # type: ignore[no-untyped-def]
    report = _grade(sample_tasks[0], None, "")
    assert report.infra_failure and report.infra_reason.startswith("image_missing")
    report = _grade(sample_tasks[0], "envserver/does-not-exist:latest", "")
    assert report.infra_failure and report.infra_reason.startswith("image_missing")


def test_test_timeout_is_an_infra_failure(sample_images, sample_tasks):  # type: ignore[no-untyped-def]
    task = sample_tasks[0]
    slow = task.model_copy(
        update={"eval": task.eval.model_copy(update={"test_cmd": "sleep 600; true", "timeout_s": 3})}
    )
    report = _grade(slow, local_image_name(task.instance_id), task.patch)
    assert report.infra_failure and report.infra_reason.startswith("test_timeout")
    assert report.reward == 0.0 and not report.resolved
