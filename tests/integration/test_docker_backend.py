"""The Docker backend's label sweeps against a real engine, with a container removed mid-call.

A container another session removes between docker's list and its per-container inspect used to fail the whole
sweep with NotFound (seen as a flaky idle-expiry test in CI). The removal is injected at the inspect call so the
race is hit every time, not one run in a hundred.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from envserver.image_names import local_image_name
from envserver.sandbox.base import SandboxSpec
from envserver.sandbox.docker_backend import DockerBackend

pytestmark = pytest.mark.docker


def test_sweeps_survive_a_container_removed_between_list_and_inspect(sample_images, sample_tasks):  # type: ignore[no-untyped-def]
    labels = {"envserver.server": f"test-backend-{uuid.uuid4().hex[:8]}"}
    image = local_image_name(sample_tasks[0].instance_id)

    async def run() -> tuple[int, int, int]:
        backend = DockerBackend()
        try:
            first = await backend.create(SandboxSpec(image=image, labels=labels))
            await backend.create(SandboxSpec(image=image, labels=labels))
            real_inspect = backend.client.api.inspect_container
            closed_by_another_session: list[str] = []

            def inspect_after_removal(container_id, *args, **kwargs):  # type: ignore[no-untyped-def]
                # another session closes its container just as this sweep first inspects one
                if not closed_by_another_session:
                    backend.client.api.remove_container(first.id, force=True)
                    closed_by_another_session.append(first.id)
                return real_inspect(container_id, *args, **kwargs)

            backend.client.api.inspect_container = inspect_after_removal
            try:
                counted = await backend.count_labelled(labels)
                removed = await backend.remove_labelled(labels)
            finally:
                backend.client.api.inspect_container = real_inspect
            return counted, removed, await backend.count_labelled(labels)
        finally:
            await backend.remove_labelled(labels)
            await backend.close()

    counted, removed, left = asyncio.run(run())
    assert counted == 2, "both containers existed when the sweep listed them"
    assert removed >= 1 and left == 0, f"removed {removed}, {left} left behind"
