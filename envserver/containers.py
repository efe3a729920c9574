"""The containers of episodes and of grading: their spec (limits, labels, the runtime's files), starting one with its
tool runtime (what the warm pool holds and a reset takes), the task images present on the docker host, and the disk
budget of an episode."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from envserver.config import ServerConfig
from envserver.image_names import candidate_images
from envserver.metrics import Metrics
from envserver.pool import PoolKey
from envserver.runtime_client import (
    DEFAULT_INIT_SCRIPT,
    RUNTIME_SLACK_S,
    RuntimeClient,
    RuntimeDied,
    RuntimeRequestError,
    runtime_argv,
    runtime_files,
)
from envserver.sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from envserver.tasks import TaskInstance

log = logging.getLogger(__name__)

LABEL_SERVER = "envserver.server"
LABEL_ROLE = "envserver.role"
LABEL_TASK = "envserver.task"
RUNTIME_START_TIMEOUT_S = 30.0


@dataclass
class Prepared:
    """A started container with its runtime process: what the warm pool holds and a reset hands over."""

    sandbox: Sandbox
    runtime: RuntimeClient
    head: str | None = None
    """The repository's HEAD when the container started (None: not read), the base the agent's diff is taken from."""


class EpisodeContainers:
    """Starts the server's containers, all labelled with its name (so a restart removes what a crash left)."""

    def __init__(self, config: ServerConfig, backend: SandboxBackend, metrics: Metrics):
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self.disk_budget = int(10e9)
        """Bytes one episode may write (`measure_disk_budget` at the server's start)."""
        self.image_heads: dict[str, str | None] = {}
        """Each image's repository HEAD at container start (Prepared.head)."""

    @property
    def owner_labels(self) -> dict[str, str]:
        return {LABEL_SERVER: self.config.server_name}

    def labels(self, role: str, task_id: str = "") -> dict[str, str]:
        return {**self.owner_labels, LABEL_ROLE: role, LABEL_TASK: task_id[:200]}

    async def resolve_image(self, task: TaskInstance) -> str | None:
        """The first candidate image (the task's own, then the name templates) present on the docker host."""
        for name in candidate_images(task, self.config.image_templates):
            if await self.backend.image_exists(name):
                return name
        return None

    def spec(self, image: str, role: str, task_id: str = "") -> SandboxSpec:
        sandbox = self.config.sandbox
        return SandboxSpec(
            image=image,
            labels=self.labels(role, task_id),
            cpus=sandbox.cpus,
            memory=sandbox.memory,
            pids_limit=sandbox.pids_limit,
            network=sandbox.network,
            files=runtime_files(),
            max_file_bytes=self.disk_budget,
        )

    async def start_runtime(
        self, sandbox: Sandbox, task: TaskInstance | None, workdir: str | None = None
    ) -> RuntimeClient:
        config = self.config
        argv = runtime_argv(
            workdir or (task.workdir if task else "/"),
            DEFAULT_INIT_SCRIPT,
            config.max_output_chars,
            config.command_timeout_s,
        )
        runtime = await RuntimeClient.start(sandbox, argv, self.metrics.runtime_frames_rejected_by)
        try:
            await runtime.handshake(timeout=RUNTIME_START_TIMEOUT_S)
        except BaseException:
            await runtime.close()
            raise
        return runtime

    async def prepare(self, key: PoolKey) -> Prepared:
        image, workdir = key
        sandbox = await self.backend.create(self.spec(image, "episode"))
        try:
            runtime = await self.start_runtime(sandbox, None, workdir)
        except BaseException:
            await asyncio.shield(sandbox.remove())
            raise
        return Prepared(sandbox, runtime, await self._start_head(image, workdir, runtime))

    async def _start_head(self, image: str, workdir: str, runtime: RuntimeClient) -> str | None:
        """HEAD of the image's repository, read once per image from a fresh container (before any agent acts)."""
        if image not in self.image_heads:
            try:
                result = await runtime.request(
                    "exec",
                    {
                        "argv": ["git", "-C", workdir, "rev-parse", "--verify", "HEAD"],
                        "timeout": 30,
                        "max_output_bytes": 1024,
                    },
                    timeout=30 + RUNTIME_SLACK_S,
                )
            except (TimeoutError, RuntimeDied, RuntimeRequestError):
                return None  # not cached: the next container tries again
            head = str(result.get("stdout", "")).strip()
            # Not a git checkout (or no commit): the diff falls back to base_commit, and says so if that fails.
            self.image_heads[image] = head if result.get("exit_code") == 0 and head else None
        return self.image_heads[image]

    async def discard(self, prepared: Prepared) -> None:
        await prepared.runtime.close()
        await prepared.sandbox.remove()

    async def measure_disk_budget(self) -> int:
        """Bytes one episode may write: the configured `max_disk_gb`, else the Docker root's free space over the
        session cap, between 1 and 10 GB."""
        if self.config.sandbox.max_disk_gb is not None:
            budget = int(self.config.sandbox.max_disk_gb * 1e9)
        else:
            free = await self.backend.host_free_disk_bytes()
            budget = int(min(10e9, max(1e9, free / self.config.max_sessions))) if free else int(10e9)
        log.info("disk budget per episode: %.2f GB", budget / 1e9)
        return budget
