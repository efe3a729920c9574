"""Shared fixtures: a real Docker engine, the sample images, and real env servers on loopback (subprocesses)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def docker_client():  # type: ignore[no-untyped-def]
    import docker

    return docker.from_env(timeout=60)


def docker_ready() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        docker_client().ping()
    except Exception as exc:  # noqa: BLE001
        return f"no Docker engine answers ({exc})"
    return None


@pytest.fixture(scope="session")
def docker_engine():  # type: ignore[no-untyped-def]
    reason = docker_ready()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs and starts an engine: its absence is a failure there
        pytest.skip(reason)
    return docker_client()


@pytest.fixture(scope="session")
def sample_images(docker_engine):  # type: ignore[no-untyped-def]
    """Builds (or reuses) the base image and one image per sample task."""
    subprocess.run([sys.executable, "-m", "images", "build-samples"], cwd=ROOT, check=True)
    return True


@pytest.fixture(scope="session")
def sample_tasks():  # type: ignore[no-untyped-def]
    from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks

    return load_tasks(SAMPLE_TASKS_PATH)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    name: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def containers(self) -> list:  # type: ignore[type-arg]
        return docker_client().containers.list(all=True, filters={"label": f"envserver.server={self.name}"})


def start_server(tmp_path: Path, *args: str, name: str | None = None, port: int | None = None,
                 wait_s: float = 60.0) -> ServerProcess:
    """Start `python -m envserver serve` in its own process group and wait until /healthz answers."""
    name = name or f"test-{uuid.uuid4().hex[:10]}"
    port = port or free_port()
    log_path = tmp_path / f"server-{name}-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "envserver", "serve", "--port", str(port), "--server-name", name, *args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return ServerProcess(url, name, process, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not answer within {wait_s} s:\n{log_path.read_text()}")


def stop_server(server: ServerProcess, timeout: float = 60.0) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def server(sample_images, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """One env server for a test module, with the sample tasks; on teardown none of its containers may remain."""
    proc = start_server(tmp_path_factory.mktemp("server"), "--max-sessions", "40")
    yield proc
    stop_server(proc)
    leftover = proc.containers()
    for container in leftover:
        container.remove(force=True)
    assert not leftover, f"server {proc.name} left containers behind: {[c.name for c in leftover]}"
