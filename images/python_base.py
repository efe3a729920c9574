"""Base images for real SWE-bench / SWE-Gym environments: Debian + one Python version + build tools, offline.

SWE-bench's harness installs Python with conda, which cannot be installed on these machines (no registry but PyPI
and Debian's). Debian's own releases carry one Python each and debootstrap reaches them: 3.9 (bullseye),
3.11 (bookworm), 3.13 (trixie). A spec that asks for another version is refused with a message naming it, unless
the caller opts in to the nearest available version (`fallback=True`); the image's labels then say which Python
was asked for and which one it has, so a grade or a validation can report it.

The base holds a C toolchain and the Python headers, because many pinned packages of old SWE-bench versions have no
wheel for the interpreter and build from source.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker

from images.base import DEFAULT_MIRROR, LABEL, Log, bootstrap, registry_answers
from images.docker_util import image_exists

PYTHON_SUITES: dict[str, str] = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
"""Python version → the Debian release whose python3 it is (all reachable by debootstrap here)."""

PACKAGES = (
    "python3",
    "python3-venv",
    "python3-dev",
    "git",
    "patch",
    "procps",
    "ca-certificates",
    "gcc",
    "g++",
    "make",
)
"""Debian packages of a Python base image."""

PYTHON_LABEL = "org.contextrl.python"
"""Label: the Python version (major.minor) the image has."""
PYTHON_REQUESTED_LABEL = "org.contextrl.python-requested"
"""Label: the Python version the task's spec asked for (differs from PYTHON_LABEL only under the fallback)."""


class PythonVersionError(RuntimeError):
    """A spec asks for a Python version no offline base provides, and the fallback was not allowed."""


@dataclass(frozen=True)
class PythonChoice:
    """Which base serves a requested Python version."""

    requested: str
    """The version the spec asks for."""
    version: str
    """The version the image will have."""
    suite: str
    """Debian release of the base."""

    @property
    def tag(self) -> str:
        return f"envserver/base:python{self.version}"

    @property
    def fallback(self) -> bool:
        return self.requested != self.version


def _as_tuple(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor.split(".")[0] or 0)


def choose_python(requested: str, fallback: bool = False) -> PythonChoice:
    """The base for `requested` (e.g. "3.9"); with `fallback`, the nearest available one (ties: the newer)."""
    key = ".".join(str(part) for part in _as_tuple(requested))
    if key in PYTHON_SUITES:
        return PythonChoice(requested, key, PYTHON_SUITES[key])
    if not fallback:
        available = ", ".join(PYTHON_SUITES)
        raise PythonVersionError(
            f"Python {requested} is not available offline (Debian gives {available}); pass --python-fallback to "
            "build with the nearest available version (the image's labels then record both), or bring an image "
            "with that Python"
        )
    wanted = _as_tuple(key)
    nearest = min(PYTHON_SUITES, key=lambda v: (abs(_as_tuple(v)[1] - wanted[1]), -_as_tuple(v)[1]))
    return PythonChoice(requested, nearest, PYTHON_SUITES[nearest])


def ensure_python_base(
    client: docker.DockerClient,
    choice: PythonChoice,
    *,
    mirror: str = DEFAULT_MIRROR,
    registry_timeout_s: float = 20.0,
    log: Log = print,
) -> str:
    """Make sure the base image of `choice` exists (bootstrapped offline when no registry answers); its tag."""
    if image_exists(client, choice.tag):
        return choice.tag
    labels = {PYTHON_LABEL: choice.version}
    if registry_answers(client, registry_timeout_s, log):
        import tempfile
        from pathlib import Path

        from images.docker_util import build_context

        dockerfile = (
            f"FROM debian:{choice.suite}-slim\n"
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            f"{' '.join(PACKAGES)} && apt-get clean && rm -rf /var/lib/apt/lists/*\n"
            "ENV LANG=C.UTF-8\n"
        )
        with tempfile.TemporaryDirectory(prefix="envserver-pybase-") as tmp:
            Path(tmp, "Dockerfile").write_text(dockerfile)
            build_context(client, Path(tmp), choice.tag, labels={LABEL: "base", **labels}, log=log)
    else:
        log(f"bootstrapping {choice.tag} (Debian {choice.suite}, Python {choice.version}) offline from {mirror}")
        bootstrap(client, choice.tag, mirror, log, suite=choice.suite, packages=PACKAGES, labels=labels)
    return choice.tag
