"""Small helpers over the docker SDK: connect, check for an image, classic (non-BuildKit) build with progress."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

Log = Callable[[str], None]


class DockerBuildError(RuntimeError):
    """`docker build` failed; the message carries the last lines of the build log."""


def connect(timeout_s: int = 600) -> docker.DockerClient:
    """A client for the engine named by the environment (DOCKER_HOST, default socket), or a clear error."""
    try:
        client = docker.from_env(timeout=timeout_s)
        client.ping()
    except docker.errors.DockerException as exc:
        raise SystemExit(f"cannot reach the Docker engine ({exc}); is dockerd running?") from None
    return client


def image_exists(client: docker.DockerClient, name: str) -> bool:
    """Whether the engine has an image with this name or id."""
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def image_labels(client: docker.DockerClient, name: str) -> dict[str, str] | None:
    """Labels of an image, or None when there is no such image."""
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    return dict(image.labels or {})


def build_context(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    *,
    labels: dict[str, str] | None = None,
    nocache: bool = False,
    verbose: bool = False,
    log: Log = print,
) -> str:
    """Build `context`/Dockerfile with the classic builder and tag it; return the image id.

    Progress: the `Step n/m` lines (every line with `verbose`). A failed step raises DockerBuildError.
    """
    image_id = None
    tail: list[str] = []
    stream = client.api.build(
        path=str(context),
        tag=tag,
        labels=labels or {},
        rm=True,
        forcerm=True,
        pull=False,
        nocache=nocache,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            raise DockerBuildError(f"building {tag} failed: {detail.strip()}\n" + "".join(tail[-20:]))
        text = chunk.get("stream")
        if text:
            tail.append(text)
            del tail[:-40]
            for line in text.splitlines():
                if verbose or line.startswith("Step "):
                    log(f"  {line}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = aux["ID"]
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id
