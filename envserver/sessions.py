"""Sessions: one episode each, in its own container. The registry enforces the concurrency cap, the idle TTL and
the step limit, hands warm containers over, and makes sure every container a session made is removed."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from docker.utils import parse_bytes

from envserver import tools
from envserver.config import ServerConfig
from envserver.containers import EpisodeContainers, Prepared
from envserver.episode_grading import SubmissionGrader
from envserver.image_names import candidate_images
from envserver.metrics import Metrics
from envserver.pool import PoolKey, WarmPool
from envserver.runtime_client import (
    RuntimeDied,
    RuntimeRequestError,
)
from envserver.sandbox.base import SandboxBackend, SandboxError
from envserver.session import Session, SessionError
from envserver.submission import Submission
from envserver.tasks import TaskInstance
from envserver.wire import (
    DrainState,
    GradeReport,
    InstanceValidation,
    PrefetchRequest,
    PrefetchResponse,
    ResetInfo,
    ResetResponse,
    SessionState,
    TaskStatus,
    ToolSpec,
    ValidationReport,
)

log = logging.getLogger(__name__)

LABEL_SERVER = "envserver.server"
LABEL_ROLE = "envserver.role"
LABEL_TASK = "envserver.task"
RUNTIME_START_TIMEOUT_S = 30.0


class SessionManager:
    def __init__(
        self,
        config: ServerConfig,
        backend: SandboxBackend,
        tasks: dict[str, TaskInstance],
        metrics: Metrics,
        validation: ValidationReport | None = None,
    ):
        """`validation`: a validation report (`python -m envserver validate`); when given, only its valid tasks are
        served and their grades count the environment verified."""
        self.config = config
        self.backend = backend
        self.tasks = tasks
        self.metrics = metrics
        self.validation: dict[str, InstanceValidation] | None = None
        if validation is not None:
            self.validation = {entry.instance_id: entry for entry in validation.instances}
        self.sessions: dict[str, Session] = {}
        self.images: dict[str, str | None] = {}
        self.session_memory = int(parse_bytes(config.sandbox.memory))
        """One episode container's memory limit, in bytes."""
        self.containers = EpisodeContainers(config, backend, metrics)
        self.memory_budget: int | None = None
        """What the sessions' memory limits may add up to (set at start from the host's memory); None: no limit."""
        self.draining = False
        """Refusing new resets and prefetches (503 `draining`) while running episodes go on (`drain`)."""
        self._starting = 0
        self._cleanup: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.grader = SubmissionGrader(
            config,
            backend,
            metrics,
            self.containers.spec,
            self.containers.labels,
            lambda task_id: self.task_status(task_id)[0] == "valid",
        )
        self.pool: WarmPool[Prepared] = WarmPool(
            config.warm_pool_size,
            self.containers.prepare,
            self.containers.discard,
            on_change=lambda key, ready: metrics.pool_ready.labels(image=key[0]).set(ready),
            max_parallel_starts=config.warm_pool_parallel_starts,
        )

    def task_status(self, task_id: str) -> tuple[TaskStatus, str | None, bool]:
        """(status, reason, playable) of a task: without a validation report every task is `unvalidated` and
        playable; with one, only a task validated `valid` on the image this server runs for it is playable."""
        if self.validation is None:
            return "unvalidated", None, True
        entry = self.validation.get(task_id)
        if entry is None:
            return "unvalidated", "not in the validation file", False
        image = self.images.get(task_id)
        if entry.status == "valid" and entry.image and image and image != entry.image:
            # A grade proves something about one image only; a different image is a different environment.
            return "unvalidated", f"validated on image {entry.image}, but this server runs {image}", False
        return entry.status, entry.reason, entry.status == "valid"

    async def start(self) -> int:
        """Remove a crashed predecessor's containers, resolve task images, fill the warm pool."""
        removed = await self.backend.remove_labelled(self.containers.owner_labels)
        self.containers.disk_budget = await self.containers.measure_disk_budget()
        host_memory = await self.backend.host_memory_bytes() if self.config.memory_overcommit > 0 else None
        if host_memory:
            self.memory_budget = int(host_memory * self.config.memory_overcommit)
            log.info(
                "memory admission: %d sessions of %s (host %.1f GiB × %.1f)",
                self.memory_budget // self.session_memory,
                self.config.sandbox.memory,
                host_memory / 2**30,
                self.config.memory_overcommit,
            )
        if removed:
            log.warning("removed %d container(s) left by an earlier server named %r", removed, self.config.server_name)
        for task in self.tasks.values():
            self.images[task.instance_id] = await self.containers.resolve_image(task)
        if self.validation is not None:
            unknown = sorted(set(self.validation) - set(self.tasks))
            if unknown:
                log.warning(
                    "the validation file names %d instance(s) that are not in the task files: %s%s",
                    len(unknown),
                    ", ".join(unknown[:10]),
                    ", …" if len(unknown) > 10 else "",
                )
            valid = sum(1 for task_id in self.tasks if self.task_status(task_id)[2])
            log.info(
                "serving %d valid task(s) of %d; the others are listed with their status and refused at reset",
                valid,
                len(self.tasks),
            )
        if self.config.warm_pool_size > 0:
            wanted = set(self.config.warm_pool_tasks) or set(self.tasks)
            for task_id in sorted(task_id for task_id in wanted if self.task_status(task_id)[2]):
                served = self.tasks.get(task_id)
                image = self.images.get(task_id)
                if served is not None and image is not None:
                    self.pool.watch((image, served.workdir))
        self._reaper = asyncio.create_task(self._reap_idle())
        return removed

    def drain(self, draining: bool = True) -> DrainState:
        """Take the server out of rotation (`draining`) or put it back: while draining, resets and prefetches answer
        503 `draining` (clients route them to another replica) and every running episode goes on to its end."""
        if draining != self.draining:
            log.warning(
                "%s: %d session(s) running",
                "draining: new resets are refused" if draining else "drain ended: taking new resets",
                self.active_count(),
            )
        self.draining = draining
        self.metrics.draining.set(int(draining))
        return DrainState(draining=draining, sessions=self.active_count())

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise SessionError(
                503,
                "draining",
                f"this server ({self.config.server_name}) is draining: it finishes its {self.active_count()} running "
                "session(s) and takes no new ones; send the reset to another env server",
            )

    async def prefetch(self, request: PrefetchRequest) -> PrefetchResponse:
        """Start containers now for resets announced to come (envserver/pool.py)."""
        self._refuse_if_draining()
        keys: dict[PoolKey, int] = {}
        for task_id, count in request.tasks.items():
            task = self.tasks.get(task_id)
            if task is None:
                raise SessionError(404, "unknown_task", f"no task {task_id!r} on this server")
            status, reason, playable = self.task_status(task_id)
            if not playable:
                raise SessionError(
                    409,
                    "instance_not_valid",
                    f"task {task_id} is not served: its validation "
                    f"status is {status}{f' ({reason})' if reason else ''}",
                )
            image = self.images.get(task_id) or await self.containers.resolve_image(task)
            if image is None:
                raise SessionError(503, "image_missing", f"no image for task {task_id} on this docker host")
            self.images[task_id] = image
            key = (image, task.workdir)
            keys[key] = keys.get(key, 0) + count
        total = sum(request.tasks.values())
        if total > self.config.max_sessions:
            raise SessionError(
                422,
                "invalid_request",
                f"{total} resets announced, more than this server's {self.config.max_sessions} concurrent sessions",
            )
        for key, count in keys.items():
            self.pool.announce(key, count, request.ttl_s)
        return PrefetchResponse(
            announced=dict(request.tasks),
            ready=sum(self.pool.ready(k) for k in keys),
            starting=sum(self.pool.starting(k) for k in keys),
        )

    def memory_committed(self) -> int:
        """Sum of the memory limits of the sessions running or starting."""
        return self.active_count() * self.session_memory

    def active_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.status == "running") + self._starting

    async def create(self, task_id: str, max_steps: int | None) -> ResetResponse:
        task = self._admit(task_id, max_steps)
        image = await self._image_of(task)
        started = time.monotonic()
        self._starting += 1
        try:
            prepared = await self.pool.take_waiting((image, task.workdir), RUNTIME_START_TIMEOUT_S)
            warm = prepared is not None
            if prepared is None:
                prepared = await self._start_container(task, image)
            session_id = uuid.uuid4().hex
            session = Session(self, session_id, task, image, prepared, max_steps or self.config.default_max_steps)
            self.sessions[session_id] = session
        finally:
            self._starting -= 1
        elapsed = time.monotonic() - started
        self.metrics.sessions_created.labels(warm=str(warm).lower()).inc()
        self.metrics.reset_latency.labels(warm=str(warm).lower()).observe(elapsed)
        self.metrics.sessions_active.set(self.active_count())
        info = ResetInfo(
            task_id=task_id,
            repo=task.repo,
            workdir=task.workdir,
            tools=[ToolSpec.model_validate(spec) for spec in tools.TOOL_SCHEMAS],
            max_steps=session.max_steps,
            image=image,
            warm_start=warm,
            reset_s=elapsed,
        )
        return ResetResponse(
            session_id=session_id, observation=tools.task_prompt(task.problem_statement, task.workdir), info=info
        )

    def _admit(self, task_id: str, max_steps: int | None) -> TaskInstance:
        """The task of a reset this server takes now; else the SessionError that says why not (unknown task,
        draining, not a valid task, over the step cap, at the session cap or the memory budget)."""
        task = self.tasks.get(task_id)
        if task is None:
            raise SessionError(
                404,
                "unknown_task",
                f"no task {task_id!r} on this server; GET /v1/tasks lists the {len(self.tasks)} it serves",
            )
        self._refuse_if_draining()
        status, reason, playable = self.task_status(task_id)
        if not playable:
            raise SessionError(
                409,
                "instance_not_valid",
                f"task {task_id} is not served: its validation status is "
                f"{status}{f' ({reason})' if reason else ''}; this server serves only valid tasks "
                "(GET /v1/tasks lists each task's status)",
            )
        if max_steps is not None and max_steps > self.config.max_steps_cap:
            raise SessionError(
                422,
                "invalid_request",
                f"max_steps {max_steps} is above this server's cap of {self.config.max_steps_cap}",
            )
        if self.active_count() >= self.config.max_sessions:
            raise SessionError(
                429,
                "capacity",
                f"the server is at its limit of {self.config.max_sessions} "
                "concurrent sessions; retry later or close finished sessions",
                headers={"Retry-After": "5"},
            )
        if self.memory_budget is not None and self.memory_committed() + self.session_memory > self.memory_budget:
            raise SessionError(
                429,
                "memory",
                f"the running sessions' memory limits ({self.memory_committed()} "
                f"bytes) leave no room for another of {self.config.sandbox.memory} within this "
                f"server's budget of {self.memory_budget} bytes (host memory × memory_overcommit "
                f"{self.config.memory_overcommit}); retry later or close finished sessions",
                headers={"Retry-After": "5"},
            )
        return task

    async def _image_of(self, task: TaskInstance) -> str:
        """The task's image on this docker host (resolved once); 503 `image_missing` when there is none."""
        task_id = task.instance_id
        image = self.images.get(task_id)
        if image is None:
            image = self.images[task_id] = await self.containers.resolve_image(task)
        if image is None:
            self.metrics.infra("image_missing")
            raise SessionError(
                503,
                "image_missing",
                f"no image for task {task_id} on this docker host (tried: "
                f"{', '.join(candidate_images(task, self.config.image_templates))}); build it with "
                "`python -m images build`",
            )
        return image

    async def _start_container(self, task: TaskInstance, image: str) -> Prepared:
        """A new container for the task (no warm one was ready); 503 when it or its runtime does not start."""
        try:
            return await self.containers.prepare((image, task.workdir))
        except SandboxError as exc:
            self.metrics.infra(exc.reason)
            raise SessionError(503, exc.reason, f"could not start a sandbox for {task.instance_id}: {exc}") from None
        except (TimeoutError, RuntimeDied, RuntimeRequestError) as exc:
            self.metrics.infra("runtime_start_failed")
            raise SessionError(
                503,
                "runtime_start_failed",
                f"the tool runtime did not start in the sandbox of {task.instance_id}: {exc}",
            ) from None

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionError(
                404,
                "unknown_session",
                f"no session {session_id!r}: it never existed, was deleted, "
                f"or expired after {self.config.session_ttl_s:.0f} s idle",
            )
        return session

    async def grade_patch(self, task: TaskInstance, image: str | None, patch: str) -> GradeReport:
        """Grade `patch` for `task` on `image` the way every episode is graded (patch policy and size cap, limits,
        labels, grade cache); `python -m envserver validate` grades through here too, with the cache off."""
        return (await self.grader.grade_submission(task, image, Submission.of(patch)))[0]

    async def release(self, session: Session, reason: str) -> None:
        """Remove the session's container (the session's state stays readable until deleted or expired)."""
        runtime, sandbox = session.runtime, session.sandbox
        session.runtime = session.sandbox = None
        self.metrics.sessions_ended.labels(reason=reason).inc()
        self.metrics.sessions_active.set(self.active_count())
        if runtime is not None:
            await runtime.close()
        if sandbox is not None:
            await asyncio.shield(sandbox.remove())

    async def delete(self, session_id: str) -> SessionState:
        session = self.get(session_id)
        self.sessions.pop(session_id, None)
        if session.status == "running":
            session.status = "closed"
        await self.release(session, reason="deleted")
        return session.state()

    async def _reap_idle(self) -> None:
        period = max(0.5, min(30.0, self.config.session_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            await self.pool.trim()  # containers of expired announcements
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if now - session.last_active > self.config.session_ttl_s and not session.lock.locked():
                    log.info("session %s idle for %.0f s: closing", session.id, now - session.last_active)
                    self.sessions.pop(session.id, None)
                    if session.status == "running":
                        session.status = "closed"
                    try:
                        await self.release(session, reason="expired")
                    except Exception as exc:  # noqa: BLE001 - the reaper must keep running
                        log.warning("could not remove the container of session %s: %s", session.id, exc)

    async def shutdown(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        await self.pool.drain()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        await asyncio.gather(*(self.release(s, reason="shutdown") for s in sessions), return_exceptions=True)
        # Anything still labelled as ours (a start that was cancelled mid-flight) goes too.
        await self.backend.remove_labelled(self.containers.owner_labels)
