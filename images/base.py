"""The base image every instance image starts from: Debian bookworm with python3, pytest, git and patch.

With a registry in reach it is a two-line Dockerfile on `debian:bookworm-slim`. Without one (the usual case on
our machines) the root filesystem is bootstrapped from Debian's package archive with debootstrap and imported
as a single-layer image — which needs root and the `debootstrap` program on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import docker

from images.docker_util import DockerBuildError, build_context, image_exists

DEFAULT_BASE_TAG = "envserver/base:bookworm"
"""Tag of the base image."""
SUITE = "bookworm"
"""Debian release of the base image."""
REGISTRY_IMAGE = "debian:bookworm-slim"
"""Image the base builds on when a registry answers (or it is already present)."""
PACKAGES = ["python3", "python3-pytest", "git", "patch", "procps", "ca-certificates"]
"""Debian packages in the base image."""
DEFAULT_MIRROR = "http://deb.debian.org/debian"
"""Debian archive debootstrap downloads from."""
LABEL = "org.contextrl.image"
"""Label that marks images this project built."""

Log = Callable[[str], None]


class BaseImageError(RuntimeError):
    """The base image could not be built (no registry and no way to bootstrap, or a failing step)."""


def registry_answers(client: docker.DockerClient, timeout_s: float, log: Log) -> bool:
    """Whether `debian:bookworm-slim` is present or can be pulled within `timeout_s` seconds."""
    if image_exists(client, REGISTRY_IMAGE):
        return True
    log(f"trying docker pull {REGISTRY_IMAGE} (at most {timeout_s:.0f} s)")
    outcome: dict[str, object] = {}

    def pull() -> None:
        try:
            api = docker.from_env(timeout=max(1, int(timeout_s))).api
            api.pull(REGISTRY_IMAGE.split(":")[0], tag=REGISTRY_IMAGE.split(":")[1])
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any failure means "no registry"
            outcome["error"] = exc

    thread = threading.Thread(target=pull, daemon=True)
    thread.start()
    thread.join(timeout_s + 5)
    if outcome.get("ok") and image_exists(client, REGISTRY_IMAGE):
        return True
    log(f"no registry: {outcome.get('error') or 'pull timed out'}")
    return False


REGISTRY_DOCKERFILE = f"""\
FROM {REGISTRY_IMAGE}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {" ".join(PACKAGES)} \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
LABEL {LABEL}=base
"""


_CHATTY = ("I: Retrieving", "I: Validating", "I: Extracting", "I: Unpacking", "I: Installing", "I: Configuring")
"""debootstrap's one-line-per-package messages, left out of the progress output."""


def _stream(cmd: list[str], log: Log, tail: list[str]) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        del tail[:-30]
        if line.startswith(_CHATTY):
            continue
        log(f"  {line}")
    return proc.wait()


def _tar_chunks(rootfs: Path) -> Iterator[bytes]:
    proc = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        while chunk := proc.stdout.read(1 << 20):
            yield chunk
    finally:
        if proc.wait() != 0:
            raise BaseImageError(f"tar of {rootfs} failed with exit status {proc.returncode}")


def bootstrap(
    client: docker.DockerClient,
    tag: str,
    mirror: str,
    log: Log,
    *,
    suite: str = SUITE,
    packages: Sequence[str] = tuple(PACKAGES),
    labels: Mapping[str, str] | None = None,
) -> None:
    """debootstrap a minimal Debian `suite` with `packages`, clean its caches and `docker import` it as `tag`."""
    if os.geteuid() != 0:
        raise BaseImageError("no registry answers, and bootstrapping the base image with debootstrap needs root")
    if shutil.which("debootstrap") is None:
        raise BaseImageError(
            "no registry answers, and the offline bootstrap needs debootstrap: apt-get install -y debootstrap"
        )
    with tempfile.TemporaryDirectory(prefix="envserver-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs), mirror]
        log(f"$ {' '.join(cmd)}")
        tail: list[str] = []
        if _stream(cmd, log, tail) != 0:
            raise BaseImageError("debootstrap failed:\n" + "\n".join(tail))
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file() and entry.name != "lock":
                    entry.unlink()
        log(f"importing the root filesystem as {tag}")
        api = docker.from_env(timeout=900).api  # the import answers only once the whole tar is in
        repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
        api.import_image(
            src=_tar_chunks(rootfs),
            repository=repository,
            tag=version,
            changes=["ENV LANG=C.UTF-8", *(f"LABEL {k}={v}" for k, v in {LABEL: "base", **(labels or {})}.items())],
            stream_src=True,
        )


def ensure_base(
    client: docker.DockerClient,
    tag: str = DEFAULT_BASE_TAG,
    *,
    force: bool = False,
    mirror: str = DEFAULT_MIRROR,
    registry_timeout_s: float = 20.0,
    log: Log = print,
) -> bool:
    """Make sure the base image `tag` exists; return whether it was built now."""
    if not force and image_exists(client, tag):
        log(f"base image {tag} exists (use --force to rebuild)")
        return False
    if registry_answers(client, registry_timeout_s, log):
        log(f"building {tag} on {REGISTRY_IMAGE} with apt")
        with tempfile.TemporaryDirectory(prefix="envserver-base-") as tmp:
            Path(tmp, "Dockerfile").write_text(REGISTRY_DOCKERFILE)
            try:
                build_context(client, Path(tmp), tag, nocache=force, log=log)
            except DockerBuildError as exc:
                raise BaseImageError(str(exc)) from None
    else:
        log(f"bootstrapping {tag} offline from {mirror}")
        bootstrap(client, tag, mirror, log)
    log(f"base image {tag} ready")
    return True
