"""Docker sandbox backend (docker SDK).

Every container: labels tying it to its server, CPU / memory / pids limits, no swap beyond the memory limit,
networking off unless asked, never privileged, `no-new-privileges`, no host path mounted. Its PID 1 is a tiny
keep-alive init (run by the image's own python3) that reaps zombies and, being the namespace's init, cannot be
killed from inside — so `kill -9 -1` in an episode kills the agent's processes but not the container.

The docker SDK is synchronous; its calls run on a dedicated thread pool sized for many concurrent sessions
(asyncio's default pool has only cores + 4 threads). The long-lived runtime stream is the exec's raw socket,
driven by asyncio directly, with Docker's 8-byte stdout/stderr frame headers parsed here.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import os
import struct
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from envserver.sandbox.base import ByteStream, ExecResult, Sandbox, SandboxBackend, SandboxError, SandboxSpec

T = TypeVar("T")

INIT_PATH = "/.envserver/init.py"
# PID 1 of every sandbox. No signal handlers on purpose: the kernel drops signals sent to a namespace's init from
# inside the namespace unless it installed a handler, so nothing the agent runs can stop the container.
INIT_SOURCE = b"""import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
    except OSError:
        time.sleep(0.5)
"""
# The image's own python3; SWE-bench images without one on PATH still have conda's.
FIND_PYTHON = 'exec "$(command -v python3 || echo /opt/miniconda3/bin/python3)"'


def _tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of absolute-path files, rooted at /, world-readable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        dirs: set[str] = set()
        for path, content in sorted(files.items()):
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in dirs:
                    dirs.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    archive.addfile(info)
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode = len(content), 0o755 if path.endswith((".py", ".sh")) else 0o644
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class DockerExecStream(ByteStream):
    """The raw socket of an attached `docker exec` (stdin + multiplexed stdout/stderr)."""

    STDERR_TAIL_BYTES = 8192

    def __init__(self, raw_socket: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._raw_socket = raw_socket
        self._reader = reader
        self._writer = writer
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0

    @classmethod
    async def open(cls, raw_socket: Any) -> DockerExecStream:
        reader, writer = await asyncio.open_connection(sock=raw_socket, limit=2**20)
        return cls(raw_socket, reader, writer)

    async def read(self) -> bytes:
        while True:
            try:
                header = await self._reader.readexactly(8)
                stream_type, size = header[0], struct.unpack(">I", header[4:])[0]
                payload = await self._reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                return b""
            if stream_type == 2:
                self._keep_stderr(payload)
                continue
            if payload:
                return payload

    def _keep_stderr(self, payload: bytes) -> None:
        self._stderr.append(payload)
        self._stderr_size += len(payload)
        while self._stderr_size > self.STDERR_TAIL_BYTES and len(self._stderr) > 1:
            self._stderr_size -= len(self._stderr.popleft())

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def stderr_tail(self) -> str:
        return b"".join(self._stderr)[-self.STDERR_TAIL_BYTES :].decode("utf-8", errors="replace")

    async def close(self) -> None:
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), timeout=2)
        except (TimeoutError, OSError, ConnectionError):
            pass


class DockerSandbox(Sandbox):
    def __init__(self, backend: DockerBackend, container: Any, image: str):
        self._backend = backend
        self._container = container
        self.id = container.id
        self.image = image

    async def open_stream(self, argv: list[str], env: dict[str, str] | None = None) -> ByteStream:
        api = self._backend.client.api

        def start() -> Any:
            exec_id = api.exec_create(
                self.id, argv, stdin=True, stdout=True, stderr=True, tty=False, environment=env or None
            )["Id"]
            stream = api.exec_start(exec_id, socket=True)
            return stream._sock  # type: ignore[union-attr]  # why: a SocketIO over unix/tcp; its raw socket is _sock

        raw_socket = await self._backend.call(start)
        return await DockerExecStream.open(raw_socket)

    async def exec(self, argv: list[str], timeout: float = 60.0) -> ExecResult:
        # coreutils `timeout` inside the container bounds the command even if the engine call hangs on.
        wrapped = ["timeout", "-s", "KILL", str(max(1, int(timeout))), *argv]
        try:
            code, output = await asyncio.wait_for(
                self._backend.call(self._container.exec_run, wrapped, demux=False), timeout=timeout + 15
            )
        except TimeoutError:
            return ExecResult(None, "", timed_out=True)
        text = (output or b"").decode("utf-8", errors="replace")
        return ExecResult(code, text, timed_out=code == 137)

    async def wait(self, timeout: float) -> int | None:
        try:
            result = await self._backend.call(self._container.wait, timeout=timeout)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            return None
        return int(result.get("StatusCode", -1))

    async def logs(self, tail_bytes: int = 200_000) -> str:
        data = await self._backend.call(self._container.logs, stdout=True, stderr=True)
        return data[-tail_bytes:].decode("utf-8", errors="replace")

    async def disk_usage(self) -> int | None:
        # The engine sizes the container's writable layer (SizeRw) when asked: a walk of what it changed, cheap
        # next to a step.
        try:
            rows = await self._backend.call(
                self._backend.client.api.containers, all=True, size=True, filters={"id": self.id}
            )
        except docker.errors.APIError:
            return None
        return int(rows[0].get("SizeRw") or 0) if rows else None

    async def restart(self) -> None:
        try:
            await self._backend.call(self._container.restart, timeout=0)  # SIGKILL at once: nothing to save
        except docker.errors.APIError as exc:
            raise SandboxError("engine_error", f"could not restart container {self.id[:12]}: {exc}") from exc

    async def is_running(self) -> bool:
        try:
            await self._backend.call(self._container.reload)
        except docker.errors.NotFound:
            return False
        return self._container.status == "running"

    async def remove(self) -> None:
        try:
            await self._backend.call(self._container.remove, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc) and "No such container" not in str(exc):
                raise


class DockerBackend(SandboxBackend):
    """Docker engine reached through the docker SDK (DOCKER_HOST honoured)."""

    def __init__(self, base_url: str | None = None, max_workers: int = 64, timeout_s: float = 120.0):
        kwargs: dict[str, Any] = {"timeout": int(timeout_s), "max_pool_size": max_workers}
        self.client = docker.DockerClient(base_url=base_url, **kwargs) if base_url else docker.from_env(**kwargs)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="docker")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def host_free_disk_bytes(self) -> int | None:
        try:
            root = (await self.call(self.client.info)).get("DockerRootDir")
            stats = os.statvfs(root) if root else None
        except (docker.errors.APIError, OSError):
            return None  # e.g. a server in a container that sees the socket, not the engine's disk
        return stats.f_bavail * stats.f_frsize if stats else None

    async def host_memory_bytes(self) -> int | None:
        try:
            info = await self.call(self.client.info)
        except docker.errors.APIError:
            return None
        total = info.get("MemTotal")
        return int(total) if total else None

    async def image_exists(self, image: str) -> bool:
        try:
            await self.call(self.client.images.get, image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            raise SandboxError("engine_error", f"docker engine error looking up image {image}: {exc}") from exc

    async def create(self, spec: SandboxSpec) -> DockerSandbox:
        files = dict(spec.files)
        command = spec.command
        if command is None:
            files[INIT_PATH] = INIT_SOURCE
            command = ["/bin/sh", "-c", f"{FIND_PYTHON} {INIT_PATH}"]

        def create_and_start() -> Any:
            container = self.client.containers.create(
                spec.image,
                command=command,
                entrypoint=[],
                labels=spec.labels,
                detach=True,
                network_mode="bridge" if spec.network else "none",
                nano_cpus=int(spec.cpus * 1e9),
                mem_limit=spec.memory,
                memswap_limit=spec.memory,
                pids_limit=spec.pids_limit,
                ulimits=[docker.types.Ulimit(name="fsize", soft=spec.max_file_bytes, hard=spec.max_file_bytes)]
                if spec.max_file_bytes
                else None,
                privileged=False,
                security_opt=["no-new-privileges"],
                init=False,
            )
            try:
                if files:
                    container.put_archive("/", _tar(files))
                container.start()
            except BaseException:
                container.remove(force=True)
                raise
            return container

        try:
            container = await self.call(create_and_start)
        except docker.errors.ImageNotFound as exc:
            raise SandboxError("image_missing", f"image {spec.image} is not present on this docker host") from exc
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise SandboxError("engine_error", f"could not start a container from {spec.image}: {exc}") from exc
        return DockerSandbox(self, container, spec.image)

    def _label_filter(self, labels: dict[str, str]) -> dict[str, Any]:
        return {"label": [f"{key}={value}" for key, value in labels.items()]}

    def _list_labelled(self, labels: dict[str, str]) -> list[Any]:
        # sparse: no per-container inspect, so a container removed between the list and the inspect (another session
        # closing) cannot fail the call with NotFound; the id is all remove() needs.
        return self.client.containers.list(all=True, sparse=True, filters=self._label_filter(labels))

    async def remove_labelled(self, labels: dict[str, str]) -> int:
        containers = await self.call(self._list_labelled, labels)
        removed = 0
        for container in containers:
            try:
                await self.call(container.remove, force=True)
                removed += 1
            except docker.errors.NotFound:
                pass
        return removed

    async def count_labelled(self, labels: dict[str, str]) -> int:
        return len(await self.call(self._list_labelled, labels))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
