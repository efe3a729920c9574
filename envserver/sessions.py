"""Sessions: one episode each, in its own container. The registry enforces the concurrency cap, the idle TTL and
the step limit, hands warm containers over, and makes sure every container a session made is removed."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from docker.utils import parse_bytes

from envserver import grading, patch_policy, submission, tools
from envserver.config import ServerConfig
from envserver.grade_cache import GradeCache, grade_key
from envserver.image_names import candidate_images
from envserver.metrics import Metrics
from envserver.patch_policy import FileVersions
from envserver.pool import PoolKey, WarmPool
from envserver.runtime_client import (
    DEFAULT_INIT_SCRIPT,
    RuntimeClient,
    RuntimeDied,
    RuntimeRequestError,
    runtime_argv,
    runtime_files,
)
from envserver.sandbox.base import Sandbox, SandboxBackend, SandboxError, SandboxSpec
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
    SessionPatch,
    SessionState,
    StepInfo,
    StepResponse,
    TaskStatus,
    ToolSpec,
    ValidationReport,
)

log = logging.getLogger(__name__)

LABEL_SERVER = "envserver.server"
LABEL_ROLE = "envserver.role"
LABEL_TASK = "envserver.task"
PATCH_TIMEOUT_S = 120.0
RUNTIME_START_TIMEOUT_S = 30.0
# Host-side slack over the runtime's own limits before a request counts as lost.
RUNTIME_SLACK_S = 30.0


class SessionError(Exception):
    """A request about sessions the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}


@dataclass
class Prepared:
    """A started container with its runtime process: what the warm pool holds and a reset hands over."""

    sandbox: Sandbox
    runtime: RuntimeClient
    head: str | None = None
    """The repository's HEAD when the container started (None: not read), the base the agent's diff is taken from."""


class Session:
    def __init__(
        self,
        manager: SessionManager,
        session_id: str,
        task: TaskInstance,
        image: str,
        prepared: Prepared,
        max_steps: int,
    ):
        self.manager = manager
        self.id = session_id
        self.task = task
        self.image = image
        self.sandbox: Sandbox | None = prepared.sandbox
        self.runtime: RuntimeClient | None = prepared.runtime
        self.start_head = prepared.head
        """The commit the episode started from: the agent's change is the diff against it (submission_script)."""
        self.max_steps = max_steps
        self.steps = 0
        self.status = "running"
        self.created_at = time.time()
        self.last_active = time.monotonic()
        self.last_active_wall = self.created_at
        self.grade: GradeReport | None = None
        self.submission: Submission | None = None
        """The agent's change as read at the end of the episode (before the patch policy)."""
        self.graded_patch: str | None = None
        """The patch that was graded, whole (the grade carries only the head of a large one)."""
        self.lock = asyncio.Lock()
        self._disk_checked_at = 0.0
        self.disk_used: int | None = None
        """Bytes written when the episode went over its disk budget (None: it has not)."""

    def state(self) -> SessionState:
        return SessionState(
            session_id=self.id,
            task_id=self.task.instance_id,
            status=self.status,
            steps=self.steps,
            max_steps=self.max_steps,
            created_at=self.created_at,
            last_active_at=self.last_active_wall,
            reward=self.grade.reward if self.grade else None,
            grade=self.grade,
        )

    def touch(self) -> None:
        self.last_active = time.monotonic()
        self.last_active_wall = time.time()

    async def step(self, name: str, arguments: dict[str, Any]) -> StepResponse:
        if self.lock.locked():
            raise SessionError(
                409,
                "session_busy",
                f"session {self.id} is still running its previous step; "
                "steps of one session must be sent one at a time",
            )
        async with self.lock:
            if self.status != "running":
                raise SessionError(
                    409,
                    "session_ended",
                    f"session {self.id} has ended ({self.status}); start a new one with POST /v1/sessions",
                )
            try:
                tool, args = tools.parse_tool_call(name, arguments)
            except tools.ToolCallError as exc:
                self.manager.metrics.steps.labels(tool="invalid", status="rejected").inc()
                raise SessionError(422, "invalid_tool_call", str(exc)) from None
            self.touch()
            started = time.monotonic()
            self.steps += 1
            if tool == tools.FINISH:
                response = await self._finish("finished", started)
            else:
                observation, info = await self._with_disk_watch(self._run_tool(tool, args))
                if self.disk_used is not None:
                    return await self._end_over_disk(started)
                info.step = self.steps
                info.duration_s = time.monotonic() - started
                response = StepResponse(
                    observation=observation, reward=0.0, terminated=False, truncated=False, info=info
                )
                if self.steps >= self.max_steps:
                    response = await self._truncate(response, started)
            self.manager.metrics.steps.labels(tool=tool, status=response.info.status or "ok").inc()
            self.manager.metrics.step_latency.labels(tool=tool).observe(time.monotonic() - started)
            self.touch()
            return response

    async def _run_tool(self, tool: str, args: Any) -> tuple[str, StepInfo]:
        config = self.manager.config
        try:
            if tool == tools.EXECUTE_BASH:
                timeout = min(args.timeout or config.command_timeout_s, config.max_command_timeout_s)
                request = {
                    "command": args.command,
                    "is_input": args.is_input,
                    "timeout": timeout,
                    "no_output_timeout": config.no_output_timeout_s,
                    "max_output_chars": config.max_output_chars,
                }
                result = await self._runtime_call("bash", request, timeout + config.no_output_timeout_s)
                return tools.format_bash_observation(result), StepInfo(
                    step=0, tool=tool, exit_code=result.get("exit_code"), status=result.get("status")
                )
            result = await self._runtime_call("edit", args.model_dump(exclude_none=True), 120.0)
        except ToolFailure as exc:
            return str(exc), StepInfo(step=0, tool=tool, status="error", error=str(exc))
        output = result.get("output", "")
        if len(output) > config.max_output_chars:
            output = output[: config.max_output_chars] + "\n<response clipped>"
        status = result.get("status") or ("error" if result.get("error") else "completed")
        return output, StepInfo(step=0, tool=tool, status=status)

    async def _runtime_call(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one runtime op. If the agent's command killed the runtime, start a new one and say so in the
        result; raise ToolFailure (its text is the observation) when the runtime refused the op or cannot come back."""
        sandbox, runtime = self._live_sandbox(), self.runtime
        if runtime is None:
            why = "could not be restarted after an earlier failure"
        else:
            try:
                return await runtime.request(op, args, timeout=timeout + RUNTIME_SLACK_S)
            except RuntimeRequestError as exc:
                raise ToolFailure(f"ERROR: {exc}") from None
            except (TimeoutError, RuntimeDied) as exc:
                why = "stopped answering" if isinstance(exc, asyncio.TimeoutError) else f"was killed ({exc})"
            self._live_sandbox()  # closed (DELETE, expiry) while the call ran: its runtime died with it
            await runtime.close()
            self.runtime = None
        try:
            self.runtime = await self.manager.start_runtime(sandbox, self.task)
        except Exception as exc:  # noqa: BLE001 - the agent is told; `finish` still grades what is there
            raise ToolFailure(
                f"ERROR: the sandbox is no longer usable: the tool runtime {why} and could not be "
                f"restarted ({exc}). Call `finish` to end the episode."
            ) from None
        note = (
            f"[The tool runtime {why} during this call. A new shell was started in {self.task.workdir}; "
            "environment variables and background jobs of the old shell are gone.]"
        )
        return {
            "output": note if op == "edit" else "",
            "error": True,
            "exit_code": None,
            "status": "shell_restarted",
            "cwd": self.task.workdir,
            "note": note,
        }

    async def _with_disk_watch(self, call: Awaitable[T]) -> T:
        """`call` while the sandbox's disk use is checked every DISK_CHECK_S: past the budget, the container is
        removed at once (that ends the call; the host loses at most the budget and what one check period wrote)."""
        sandbox = self._live_sandbox()
        budget = self.manager.disk_budget

        async def watch() -> None:
            while True:
                await asyncio.sleep(DISK_CHECK_S)
                used = await sandbox.disk_usage()
                if used is not None and used > budget:
                    self.disk_used = used
                    await sandbox.remove()
                    return

        watcher = asyncio.create_task(watch())
        try:
            result = await call
        finally:
            watcher.cancel()
        if self.disk_used is None and time.monotonic() - self._disk_checked_at >= DISK_CHECK_S:
            # What short commands wrote between checks; at most one check per period, so quick steps stay quick.
            self._disk_checked_at = time.monotonic()
            used = await sandbox.disk_usage()
            if used is not None and used > budget:
                self.disk_used = used
        return result

    async def _end_over_disk(self, started: float) -> StepResponse:
        """The episode wrote more than its disk budget: ended as `disk_limit`, ungraded, its container removed."""
        budget = self.manager.disk_budget
        self.status = "disk_limit"
        await self.manager.release(self, reason="disk_limit")
        self.manager.metrics.steps.labels(tool=tools.EXECUTE_BASH, status="disk_limit").inc()
        observation = (
            f"[Episode stopped: the sandbox wrote {self.disk_used / 1e9:.2f} GB, over its disk budget of "
            f"{budget / 1e9:.2f} GB. Its container was removed; the episode is not graded.]"
        )
        info = StepInfo(
            step=self.steps,
            tool=tools.EXECUTE_BASH,
            status="disk_limit",
            error=observation,
            duration_s=time.monotonic() - started,
        )
        return StepResponse(observation=observation, reward=0.0, terminated=True, truncated=False, info=info)

    def _live_sandbox(self) -> Sandbox:
        """The episode's container; 409 `session_ended` once the session was closed (a DELETE or the idle reaper can
        end it while a step is in flight: steps hold the session's lock, closing does not wait for it)."""
        if self.sandbox is None:
            raise SessionError(
                409,
                "session_ended",
                f"session {self.id} was closed ({self.status}) while this step "
                "ran; start a new one with POST /v1/sessions",
            )
        return self.sandbox

    async def _truncate(self, response: StepResponse, started: float) -> StepResponse:
        ended = await self._finish("truncated", started)
        response.truncated = True
        response.reward = ended.reward
        response.info.truncation_reason = "max_steps"
        response.info.grade = ended.info.grade
        response.observation += f"\n[Episode truncated: the limit of {self.max_steps} steps was reached.]"
        return response

    async def _finish(self, status: str, started: float) -> StepResponse:
        report = await self.manager.grade_session(self)
        self.grade = report
        self.status = "terminated" if status == "finished" else "truncated"
        await self.manager.release(self, reason=status)
        if report.infra_failure:
            observation = f"Episode ended. Grading could not be completed ({report.infra_reason})."
        elif report.no_patch:
            observation = f"Episode ended. The change could not be read from the sandbox: {report.no_patch}"
        elif report.patch_too_large:
            observation = (
                f"Episode ended. The change was not graded: its diff is {report.patch_bytes} bytes, over "
                f"the limit of {self.manager.config.max_patch_bytes}."
            )
        elif report.hack_attempt and report.patch_policy == "reject":
            observation = (
                "Episode ended. The change was not graded: it modifies test infrastructure "
                f"({', '.join(report.excluded_paths)})."
            )
        else:
            observation = "Episode ended. " + (
                "The hidden tests pass." if report.resolved else "The hidden tests do not pass."
            )
        info = StepInfo(
            step=self.steps, tool=tools.FINISH, status="graded", grade=report, duration_s=time.monotonic() - started
        )
        return StepResponse(
            observation=observation, reward=report.reward, terminated=status == "finished", truncated=False, info=info
        )

    async def stop_processes(self) -> None:
        """Before the diff is taken: stop every process the agent left running (background jobs, a fork bomb), so
        nothing changes the files while they are read and the read can start processes of its own. Killed from a
        one-shot exec (the runtime goes too); a container too full of processes for that is restarted (its files
        stay)."""
        sandbox = self._live_sandbox()
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None
        try:
            result = await sandbox.exec(["sh", "-c", STOP_PROCESSES_SCRIPT], timeout=30)
            why = (
                ""
                if result.exit_code == 0 and "stopped" in result.output
                else (result.output.strip()[-200:] or f"exit {result.exit_code}")
            )
        except Exception as exc:  # noqa: BLE001 - the engine refuses an exec in a container at its pids limit
            why = f"{type(exc).__name__}: {exc}"
        if why:
            log.info("session %s: could not stop its processes (%s); restarting its container", self.id, why)
            try:
                await sandbox.restart()
            except SandboxError as exc:
                # e.g. `rm -rf /` took the container's own init: nothing can run in it any more.
                raise PatchError(f"the sandbox could not run a command ({why}) nor be restarted ({exc})") from None

    async def extract_patch(self) -> Submission:
        """`git diff` of everything the agent changed against the commit it started from, minus the hidden tests'
        files, measured in the container first: over the server's `max_patch_bytes` it is not read
        (envserver/submission.py)."""
        self._live_sandbox()
        try:
            return await submission.read_submission(
                self.exec, self.task, self.manager.config.max_patch_bytes, PATCH_TIMEOUT_S, self.start_head
            )
        except submission.SubmissionError as exc:
            raise PatchError(str(exc)) from None

    @property
    def exec(self) -> submission.Exec:
        """Runs a host command in the episode container (the runtime's `exec`, else `docker exec`)."""
        return submission.session_exec(self.runtime, self._live_sandbox(), RUNTIME_SLACK_S)

    async def read_versions(self, paths: list[str]) -> dict[str, FileVersions]:
        """Base and submitted contents of `paths` (the patch policy's setup.cfg / pyproject.toml), while the episode
        container still exists."""
        return await submission.read_file_versions(
            self.exec, self.task, paths, PATCH_TIMEOUT_S, self.manager.config.max_patch_bytes, self.start_head
        )

    def patch_view(self) -> SessionPatch:
        """`GET /v1/sessions/{id}/patch`: the whole graded patch of an ended episode."""
        if self.grade is None or self.submission is None:
            raise SessionError(
                409,
                "not_graded",
                f"session {self.id} has no graded patch yet: the patch is read "
                "when the episode ends (`finish`, or its step limit)",
            )
        submitted = self.submission.patch
        return SessionPatch(
            session_id=self.id,
            task_id=self.task.instance_id,
            patch=self.graded_patch,
            submitted_patch=submitted if submitted != self.graded_patch else None,
            patch_bytes=self.grade.patch_bytes,
            patch_sha256=self.grade.patch_sha256,
            patch_too_large=self.grade.patch_too_large,
            excluded_paths=self.grade.excluded_paths,
            hack_attempt=self.grade.hack_attempt,
        )


class ToolFailure(RuntimeError):
    """A tool call that could not run; the message is the observation the agent gets."""


DISK_CHECK_S = 2.0
"""How often a running step's sandbox disk use is checked against the budget."""
T = TypeVar("T")

STOP_PROCESSES_SCRIPT = (
    'for d in /proc/[0-9]*; do p=${d#/proc/}; case "$p" in 1|$$|$PPID) ;; *) kill -9 "$p" 2>/dev/null;; esac; done;'
    " echo stopped"
)
"""Kills every process of the container but its init (PID 1) and this script (and the `timeout` wrapping it)."""


class PatchError(RuntimeError):
    """The agent's change could not be read out of its container (e.g. it deleted git or the repository)."""


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
        self.session_memory = parse_bytes(config.sandbox.memory)
        """One episode container's memory limit, in bytes."""
        self.disk_budget = int(10e9)
        """Bytes one episode may write (set at start: `_disk_budget`)."""
        self.memory_budget: int | None = None
        """What the sessions' memory limits may add up to (set at start from the host's memory); None: no limit."""
        self.image_heads: dict[str, str | None] = {}
        """Each image's repository HEAD at container start (Prepared.head)."""
        self.draining = False
        """Refusing new resets and prefetches (503 `draining`) while running episodes go on (`drain`)."""
        self._starting = 0
        self._cleanup: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.grade_cache = GradeCache(config.grade_cache_size)
        self.pool: WarmPool[Prepared] = WarmPool(
            config.warm_pool_size,
            self._prepare,
            self._discard,
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

    @property
    def owner_labels(self) -> dict[str, str]:
        return {LABEL_SERVER: self.config.server_name}

    def labels(self, role: str, task_id: str = "") -> dict[str, str]:
        return {**self.owner_labels, LABEL_ROLE: role, LABEL_TASK: task_id[:200]}

    async def start(self) -> int:
        """Remove a crashed predecessor's containers, resolve task images, fill the warm pool."""
        removed = await self.backend.remove_labelled(self.owner_labels)
        self.disk_budget = await self._disk_budget()
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
            self.images[task.instance_id] = await self.resolve_image(task)
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
                task = self.tasks.get(task_id)
                image = self.images.get(task_id)
                if task is not None and image is not None:
                    self.pool.watch((image, task.workdir))
        self._reaper = asyncio.create_task(self._reap_idle())
        return removed

    async def resolve_image(self, task: TaskInstance) -> str | None:
        """The first candidate image (the task's own, then the name templates) present on the docker host."""
        for name in candidate_images(task, self.config.image_templates):
            if await self.backend.image_exists(name):
                return name
        return None

    def _spec(self, image: str, role: str, task_id: str = "") -> SandboxSpec:
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

    async def _prepare(self, key: PoolKey) -> Prepared:
        image, workdir = key
        sandbox = await self.backend.create(self._spec(image, "episode"))
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

    async def _discard(self, prepared: Prepared) -> None:
        await prepared.runtime.close()
        await prepared.sandbox.remove()

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
            image = self.images.get(task_id) or await self.resolve_image(task)
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

    async def _disk_budget(self) -> int:
        """Bytes one episode may write: the configured `max_disk_gb`, else the Docker root's free space over the
        session cap, between 1 and 10 GB."""
        if self.config.sandbox.max_disk_gb is not None:
            budget = int(self.config.sandbox.max_disk_gb * 1e9)
        else:
            free = await self.backend.host_free_disk_bytes()
            budget = int(min(10e9, max(1e9, free / self.config.max_sessions))) if free else int(10e9)
        log.info("disk budget per episode: %.2f GB", budget / 1e9)
        return budget

    def memory_committed(self) -> int:
        """Sum of the memory limits of the sessions running or starting."""
        return self.active_count() * self.session_memory

    def active_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.status == "running") + self._starting

    async def create(self, task_id: str, max_steps: int | None) -> ResetResponse:
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
        image = self.images.get(task_id)
        if image is None:
            image = self.images[task_id] = await self.resolve_image(task)
        if image is None:
            self.metrics.infra("image_missing")
            raise SessionError(
                503,
                "image_missing",
                f"no image for task {task_id} on this docker host (tried: "
                f"{', '.join(candidate_images(task, self.config.image_templates))}); build it with "
                "`python -m images build`",
            )
        started = time.monotonic()
        self._starting += 1
        try:
            prepared = await self.pool.take_waiting((image, task.workdir), RUNTIME_START_TIMEOUT_S)
            warm = prepared is not None
            if prepared is None:
                try:
                    prepared = await self._prepare((image, task.workdir))
                except SandboxError as exc:
                    self.metrics.infra(exc.reason)
                    raise SessionError(503, exc.reason, f"could not start a sandbox for {task_id}: {exc}") from None
                except (TimeoutError, RuntimeDied, RuntimeRequestError) as exc:
                    self.metrics.infra("runtime_start_failed")
                    raise SessionError(
                        503,
                        "runtime_start_failed",
                        f"the tool runtime did not start in the sandbox of {task_id}: {exc}",
                    ) from None
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

    async def grade_session(self, session: Session) -> GradeReport:
        started = time.monotonic()
        try:
            await session.stop_processes()
            session.submission = await session.extract_patch()
        except PatchError as exc:
            report = GradeReport(
                resolved=False,
                reward=0.0,
                infra_failure=False,
                patch_applied=False,
                no_patch=str(exc),
                test_output_tail=str(exc),
            )
            self.metrics.grades.labels(outcome="no_patch").inc()
            return report
        except SandboxError as exc:
            report = GradeReport(resolved=False, reward=0.0, infra_failure=True, infra_reason=f"{exc.reason}: {exc}")
        else:
            report, session.graded_patch = await self.grade_submission(
                session.task, session.image, session.submission, session.read_versions
            )
            if report.cached:
                self.metrics.grade_cache_hits.inc()
        if report.infra_failure:
            self.metrics.infra(report.infra_reason or "unknown")
            outcome = "infra_failure"
        else:
            outcome = "resolved" if report.resolved else "unresolved"
        self.metrics.grades.labels(outcome=outcome).inc()
        self.metrics.grade_latency.observe(time.monotonic() - started)
        return report

    async def grade_patch(self, task: TaskInstance, image: str | None, patch: str) -> GradeReport:
        """Grade `patch` for `task` on `image` the way every episode is graded (patch policy and size cap, limits,
        labels, grade cache); `python -m envserver validate` grades through here too, with the cache off."""
        return (await self.grade_submission(task, image, Submission.of(patch)))[0]

    async def grade_submission(
        self,
        task: TaskInstance,
        image: str | None,
        change: Submission,
        read_versions: Callable[[list[str]], Awaitable[dict[str, FileVersions]]] | None = None,
    ) -> tuple[GradeReport, str | None]:
        """(the grade, the whole graded patch) of a change: the size cap, then the patch policy
        (envserver/patch_policy.py), then the grade cache keyed by the patch that is graded.

        `read_versions`: base and new contents of files, from the episode container; without it (validation) a
        container of the task image is started when the policy needs them."""
        config = self.config
        # A validated task's environment is known to work: a broken test run is then the patch's doing.
        verified = self.task_status(task.instance_id)[0] == "valid"
        policy = task.patch_policy or config.patch_policy  # a row's value was checked when the file was loaded
        if change.patch is None or change.size > config.max_patch_bytes:
            return GradeReport(
                resolved=False,
                reward=0.0,
                infra_failure=False,
                patch_too_large=True,
                patch_bytes=change.size,
                patch_sha256=change.sha256,
                patch_policy=policy,
                environment_verified=verified,
                test_output_tail=f"not graded: the patch is {change.size} bytes, over this server's max_patch_bytes "
                f"of {config.max_patch_bytes}",
            ), None
        raw = change.patch
        versions: dict[str, FileVersions] = {}
        needed = patch_policy.needs_versions(raw)
        if needed:
            try:
                if read_versions is not None:
                    versions = await read_versions(needed)
                elif image is not None:
                    versions = await submission.image_file_versions(
                        self.backend,
                        self._spec(image, "grade", task.instance_id),
                        task,
                        raw,
                        needed,
                        PATCH_TIMEOUT_S,
                        config.max_patch_bytes,
                    )
            except (SandboxError, PatchError) as exc:
                # Unread files lose their whole change (the policy's safe side); the grade goes on.
                log.warning("could not read %s of task %s for the patch policy: %s", needed, task.instance_id, exc)
        outcome = patch_policy.apply_policy(
            raw,
            policy,
            hidden_tests=task.test_files(),
            versions=versions,
            runner_files=grading.runner_files(task, image),
        )
        policy_fields: dict[str, Any] = {
            "excluded_paths": list(dict.fromkeys([*change.hidden_paths, *outcome.excluded_paths])),
            "hack_attempt": outcome.hack_attempt,
            "patch_policy": policy,
        }
        if outcome.rejected:
            return GradeReport(
                resolved=False,
                reward=0.0,
                infra_failure=False,
                environment_verified=verified,
                test_output_tail="not graded: the patch changes test infrastructure "
                f"({', '.join(outcome.excluded_paths)}) and the patch policy is `reject`",
                **policy_fields,
                **submission.patch_fields("", config.inline_patch_bytes),
            ), ""
        graded = outcome.patch

        async def run() -> GradeReport:
            report = await grading.grade(
                self.backend,
                task,
                image,
                graded,
                self._spec(image or "", "grade"),
                config.grade_timeout_s,
                self.labels("grade", task.instance_id),
                environment_verified=verified,
            )
            # What the cache keeps and the finish answer carries: never a multi-MB patch.
            return report.model_copy(update=submission.patch_fields(graded, config.inline_patch_bytes))

        report = await self.grade_cache.get_or_grade(grade_key(task.instance_id, image, graded), run)
        return report.model_copy(update=policy_fields), graded

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
        await self.backend.remove_labelled(self.owner_labels)
