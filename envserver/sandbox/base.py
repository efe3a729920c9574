"""The sandbox backend interface: what the env server needs from a container engine, nothing more.

A backend is one file behind this interface (Docker today; Kubernetes later). Sessions, grading and the warm pool
only ever talk to `SandboxBackend` and `Sandbox`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


class SandboxError(RuntimeError):
    """The container engine failed (not the agent's fault): image missing, engine unreachable, container died."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        """Short machine-readable cause: `image_missing`, `engine_error`, `container_died`, `timeout`."""


@dataclass
class SandboxSpec:
    """What to start: an image plus the limits every sandbox gets."""

    image: str
    """Image to start."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels that tie the container to the server that made it (orphan clean-up relies on them)."""
    cpus: float = 1.0
    """CPU quota in cores."""
    memory: str = "4g"
    """Memory limit (swap is not allowed beyond it)."""
    pids_limit: int = 512
    """Process/thread limit: what stops a fork bomb."""
    network: bool = False
    """Networking is off unless a task set opts in."""
    command: list[str] | None = None
    """Main process; None starts the keep-alive init that reaps zombies and survives `kill -9 -1`."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Files (absolute path → content) copied in before the container starts."""
    max_file_bytes: int | None = None
    """Largest file any process may write (RLIMIT_FSIZE; past it the write fails and the writer gets SIGXFSZ)."""


@dataclass
class ExecResult:
    exit_code: int | None
    output: str
    timed_out: bool = False


class ByteStream(abc.ABC):
    """A bidirectional byte stream to a process inside the sandbox (its stdin and its stdout)."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """Next chunk of the process's stdout; b"" once it has exited or the stream broke."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send bytes to the process's stdin."""

    @abc.abstractmethod
    def stderr_tail(self) -> str:
        """The last few KB the process wrote on stderr (diagnostics when it dies)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the stream; the process sees EOF on stdin."""


class Sandbox(abc.ABC):
    """One started container."""

    id: str
    image: str

    @abc.abstractmethod
    async def open_stream(self, argv: list[str], env: dict[str, str] | None = None) -> ByteStream:
        """Start `argv` inside the sandbox attached to a long-lived stream (one per session, not one per step)."""

    @abc.abstractmethod
    async def exec(self, argv: list[str], timeout: float = 60.0) -> ExecResult:
        """Run a one-shot command and wait for it (slow path: clean-up, diagnostics, patch extraction fallback)."""

    @abc.abstractmethod
    async def wait(self, timeout: float) -> int | None:
        """Wait for the main process to exit; its exit code, or None on timeout."""

    @abc.abstractmethod
    async def logs(self, tail_bytes: int = 200_000) -> str:
        """Main process output (stdout + stderr), decoded with replacement."""

    @abc.abstractmethod
    async def is_running(self) -> bool:
        """Whether the container is still up."""

    @abc.abstractmethod
    async def disk_usage(self) -> int | None:
        """Bytes the sandbox has written to its own filesystem layer (None: unknown)."""

    @abc.abstractmethod
    async def restart(self) -> None:
        """Kill every process in the sandbox and start its main process again; the filesystem is kept. Raises
        SandboxError."""

    @abc.abstractmethod
    async def remove(self) -> None:
        """Kill and delete the container. Idempotent, never raises for an already-gone container."""


class SandboxBackend(abc.ABC):
    """Creates sandboxes and cleans up after crashed predecessors."""

    @abc.abstractmethod
    async def image_exists(self, image: str) -> bool:
        """Whether the image is present locally (never pulls)."""

    @abc.abstractmethod
    async def create(self, spec: SandboxSpec) -> Sandbox:
        """Create, copy `spec.files` in, and start a sandbox. Raises SandboxError."""

    @abc.abstractmethod
    async def remove_labelled(self, labels: dict[str, str]) -> int:
        """Remove every container carrying all these labels; how many were removed."""

    @abc.abstractmethod
    async def count_labelled(self, labels: dict[str, str]) -> int:
        """How many containers carry all these labels."""

    @abc.abstractmethod
    async def host_free_disk_bytes(self) -> int | None:
        """Free space where sandboxes' filesystems live (None: unknown), for the default disk budget."""

    @abc.abstractmethod
    async def host_memory_bytes(self) -> int | None:
        """Memory of the machine the sandboxes run on (None: unknown), for admission (ServerConfig.memory_overcommit)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release engine connections."""
