"""Small helpers over the docker SDK: connect, check for an image, classic (non-BuildKit) build with progress."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import docker.types

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


def run_and_commit(
    client: docker.DockerClient,
    image: str,
    script: str,
    tag: str,
    *,
    changes: list[str],
    labels: dict[str, str],
    files: dict[str, Path] | None = None,
    mounts: dict[str, str] | None = None,
    network: bool = True,
    log: Log = print,
    verbose: bool = False,
) -> str:
    """Run `script` (bash) in a container of `image`, commit the result as `tag`; return the image id.

    `files` are copied in before the script runs (container path → host file or directory); `mounts` are read-only
    bind mounts (host path → container path) that exist only during the run, so nothing they hold (a CA bundle)
    ends up in the image. The container is removed whatever happens. A non-zero exit raises DockerBuildError with
    the last lines of the output.
    """
    import io
    import tarfile

    # HostConfig mounts, not `volumes=`: the docker SDK also writes those into the config's Volumes, which a
    # commit would carry into the image (and every later container would get an anonymous volume there).
    bind_mounts = [
        docker.types.Mount(target=inside, source=host, type="bind", read_only=True)
        for host, inside in (mounts or {}).items()
    ]
    container = client.containers.create(
        image,
        command=["/bin/bash", "-c", script],
        mounts=bind_mounts,
        network_mode="bridge" if network else "none",
        labels={"org.contextrl.image-build": tag},
    )
    try:
        for inside, host in (files or {}).items():
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as archive:
                archive.add(str(host), arcname=inside.strip("/").rsplit("/", 1)[-1])
            parent = "/" + inside.strip("/").rsplit("/", 1)[0] if "/" in inside.strip("/") else "/"
            container.put_archive(parent, buffer.getvalue())
        container.start()
        tail: list[str] = []
        pending = b""
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                tail.append(line)
                del tail[:-40]
                if verbose or line.startswith(("+ ", "Successfully installed", "ERROR")):
                    log(f"  {line[:300]}")
        status = container.wait().get("StatusCode", 1)
        if status != 0:
            raise DockerBuildError(f"building {tag} failed (exit {status}):\n" + "\n".join(tail[-25:]))
        repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
        label_changes = [f"LABEL {key}={json_quote(value)}" for key, value in labels.items()]
        image_obj = container.commit(repository=repository, tag=version, changes=[*changes, *label_changes])
        return str(image_obj.id)
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass


def json_quote(value: str) -> str:
    """A label value quoted for a Dockerfile instruction (JSON string syntax, which LABEL accepts)."""
    import json

    return json.dumps(value)
