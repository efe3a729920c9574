"""Sessions: one episode each, in its own container. The registry enforces the concurrency cap, the idle TTL and
the step limit, hands warm containers over, and makes sure every container a session made is removed."""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
import uuid
from dataclasses import dataclass
from typing import Any

from envserver import grading, tools
from envserver.config import ServerConfig
from envserver.grade_cache import GradeCache, grade_key
from envserver.image_names import candidate_images
from envserver.metrics import Metrics
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
from envserver.tasks import TaskInstance
from envserver.wire import GradeReport, ResetInfo, ResetResponse, SessionState, StepInfo, StepResponse, ToolSpec

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


class Session:
    def __init__(self, manager: "SessionManager", session_id: str, task: TaskInstance, image: str,
                 prepared: Prepared, max_steps: int):
        self.manager = manager
        self.id = session_id
        self.task = task
        self.image = image
        self.sandbox: Sandbox | None = prepared.sandbox
        self.runtime: RuntimeClient | None = prepared.runtime
        self.max_steps = max_steps
        self.steps = 0
        self.status = "running"
        self.created_at = time.time()
        self.last_active = time.monotonic()
        self.last_active_wall = self.created_at
        self.grade: GradeReport | None = None
        self.lock = asyncio.Lock()

    def state(self) -> SessionState:
        return SessionState(
            session_id=self.id, task_id=self.task.instance_id, status=self.status, steps=self.steps,
            max_steps=self.max_steps, created_at=self.created_at, last_active_at=self.last_active_wall,
            reward=self.grade.reward if self.grade else None, grade=self.grade,
        )

    def touch(self) -> None:
        self.last_active = time.monotonic()
        self.last_active_wall = time.time()

    async def step(self, name: str, arguments: dict[str, Any]) -> StepResponse:
        if self.lock.locked():
            raise SessionError(409, "session_busy", f"session {self.id} is still running its previous step; "
                               "steps of one session must be sent one at a time")
        async with self.lock:
            if self.status != "running":
                raise SessionError(409, "session_ended", f"session {self.id} has ended ({self.status}); "
                                   "start a new one with POST /v1/sessions")
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
                observation, info = await self._run_tool(tool, args)
                info.step = self.steps
                info.duration_s = time.monotonic() - started
                response = StepResponse(observation=observation, reward=0.0, terminated=False, truncated=False,
                                        info=info)
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
                    "command": args.command, "is_input": args.is_input, "timeout": timeout,
                    "no_output_timeout": config.no_output_timeout_s, "max_output_chars": config.max_output_chars,
                }
                result = await self._runtime_call("bash", request, timeout + config.no_output_timeout_s)
                return tools.format_bash_observation(result), StepInfo(
                    step=0, tool=tool, exit_code=result.get("exit_code"), status=result.get("status"))
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
        assert self.sandbox is not None
        if self.runtime is None:
            why = "could not be restarted after an earlier failure"
        else:
            try:
                return await self.runtime.request(op, args, timeout=timeout + RUNTIME_SLACK_S)
            except RuntimeRequestError as exc:
                raise ToolFailure(f"ERROR: {exc}") from None
            except (RuntimeDied, asyncio.TimeoutError) as exc:
                why = "stopped answering" if isinstance(exc, asyncio.TimeoutError) else f"was killed ({exc})"
            await self.runtime.close()
            self.runtime = None
        try:
            self.runtime = await self.manager.start_runtime(self.sandbox, self.task)
        except Exception as exc:  # noqa: BLE001 - the agent is told; `finish` still grades what is there
            raise ToolFailure(f"ERROR: the sandbox is no longer usable: the tool runtime {why} and could not be "
                              f"restarted ({exc}). Call `finish` to end the episode.") from None
        note = (f"[The tool runtime {why} during this call. A new shell was started in {self.task.workdir}; "
                "environment variables and background jobs of the old shell are gone.]")
        return {"output": note if op == "edit" else "", "error": True, "exit_code": None,
                "status": "shell_restarted", "cwd": self.task.workdir, "note": note}

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
        else:
            observation = "Episode ended. " + ("The hidden tests pass." if report.resolved
                                               else "The hidden tests do not pass.")
        info = StepInfo(step=self.steps, tool=tools.FINISH, status="graded", grade=report,
                        duration_s=time.monotonic() - started)
        return StepResponse(observation=observation, reward=report.reward, terminated=status == "finished",
                            truncated=False, info=info)

    async def extract_patch(self) -> str:
        """`git diff` of everything the agent changed against base_commit, minus the hidden tests' files."""
        assert self.sandbox is not None
        task = self.task
        excludes = " ".join(shlex.quote(f":(exclude){path}") for path in task.test_files())
        script = (f"cd {shlex.quote(task.workdir)} && git add -A >/dev/null 2>&1; "
                  f"git -c core.fileMode=false diff --cached --binary --no-color {task.base_commit} -- . {excludes}")
        argv = ["bash", "-c", script]
        if self.runtime is not None and self.runtime.alive:
            try:
                result = await self.runtime.request("exec", {"argv": argv, "timeout": PATCH_TIMEOUT_S},
                                                    timeout=PATCH_TIMEOUT_S + RUNTIME_SLACK_S)
                if result.get("exit_code") == 0:
                    return result.get("stdout", "")
            except (RuntimeDied, RuntimeRequestError, asyncio.TimeoutError):
                pass
        outcome = await self.sandbox.exec(argv, timeout=PATCH_TIMEOUT_S)
        if outcome.exit_code != 0:
            raise PatchError(f"git diff failed in the episode container (exit {outcome.exit_code}): "
                             f"{outcome.output[-500:]}")
        return outcome.output


class ToolFailure(RuntimeError):
    """A tool call that could not run; the message is the observation the agent gets."""


class PatchError(RuntimeError):
    """The agent's change could not be read out of its container (e.g. it deleted git or the repository)."""


class SessionManager:
    def __init__(self, config: ServerConfig, backend: SandboxBackend, tasks: dict[str, TaskInstance],
                 metrics: Metrics):
        self.config = config
        self.backend = backend
        self.tasks = tasks
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self.images: dict[str, str | None] = {}
        self._starting = 0
        self._cleanup: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.grade_cache = GradeCache(config.grade_cache_size)
        self.pool: WarmPool[Prepared] = WarmPool(
            config.warm_pool_size, self._prepare, self._discard,
            on_change=lambda key, ready: metrics.pool_ready.labels(image=key[0]).set(ready),
        )

    @property
    def owner_labels(self) -> dict[str, str]:
        return {LABEL_SERVER: self.config.server_name}

    def labels(self, role: str, task_id: str = "") -> dict[str, str]:
        return {**self.owner_labels, LABEL_ROLE: role, LABEL_TASK: task_id[:200]}

    async def start(self) -> int:
        """Remove a crashed predecessor's containers, resolve task images, fill the warm pool."""
        removed = await self.backend.remove_labelled(self.owner_labels)
        if removed:
            log.warning("removed %d container(s) left by an earlier server named %r", removed,
                        self.config.server_name)
        for task in self.tasks.values():
            self.images[task.instance_id] = await self.resolve_image(task)
        if self.config.warm_pool_size > 0:
            wanted = set(self.config.warm_pool_tasks) or set(self.tasks)
            for task_id in sorted(wanted):
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
        return SandboxSpec(image=image, labels=self.labels(role, task_id), cpus=sandbox.cpus, memory=sandbox.memory,
                           pids_limit=sandbox.pids_limit, network=sandbox.network, files=runtime_files())

    async def start_runtime(self, sandbox: Sandbox, task: TaskInstance | None, workdir: str | None = None
                            ) -> RuntimeClient:
        config = self.config
        argv = runtime_argv(workdir or (task.workdir if task else "/"), DEFAULT_INIT_SCRIPT,
                            config.max_output_chars, config.command_timeout_s)
        runtime = await RuntimeClient.start(sandbox, argv)
        try:
            await runtime.request("ping", timeout=RUNTIME_START_TIMEOUT_S)
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
        return Prepared(sandbox, runtime)

    async def _discard(self, prepared: Prepared) -> None:
        await prepared.runtime.close()
        await prepared.sandbox.remove()

    def active_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.status == "running") + self._starting

    async def create(self, task_id: str, max_steps: int | None) -> ResetResponse:
        task = self.tasks.get(task_id)
        if task is None:
            raise SessionError(404, "unknown_task", f"no task {task_id!r} on this server; GET /v1/tasks lists "
                               f"the {len(self.tasks)} it serves")
        if max_steps is not None and max_steps > self.config.max_steps_cap:
            raise SessionError(422, "invalid_request", f"max_steps {max_steps} is above this server's cap of "
                               f"{self.config.max_steps_cap}")
        if self.active_count() >= self.config.max_sessions:
            raise SessionError(429, "capacity", f"the server is at its limit of {self.config.max_sessions} "
                               "concurrent sessions; retry later or close finished sessions",
                               headers={"Retry-After": "5"})
        image = self.images.get(task_id)
        if image is None:
            image = self.images[task_id] = await self.resolve_image(task)
        if image is None:
            self.metrics.infra("image_missing")
            raise SessionError(503, "image_missing", f"no image for task {task_id} on this docker host (tried: "
                               f"{', '.join(candidate_images(task, self.config.image_templates))}); build it with "
                               "`python -m images build`")
        started = time.monotonic()
        self._starting += 1
        try:
            prepared = self.pool.take((image, task.workdir))
            warm = prepared is not None
            if prepared is None:
                try:
                    prepared = await self._prepare((image, task.workdir))
                except SandboxError as exc:
                    self.metrics.infra(exc.reason)
                    raise SessionError(503, exc.reason, f"could not start a sandbox for {task_id}: {exc}") from None
                except (RuntimeDied, RuntimeRequestError, asyncio.TimeoutError) as exc:
                    self.metrics.infra("runtime_start_failed")
                    raise SessionError(503, "runtime_start_failed", f"the tool runtime did not start in the "
                                       f"sandbox of {task_id}: {exc}") from None
            session_id = uuid.uuid4().hex
            session = Session(self, session_id, task, image, prepared,
                              max_steps or self.config.default_max_steps)
            self.sessions[session_id] = session
        finally:
            self._starting -= 1
        elapsed = time.monotonic() - started
        self.metrics.sessions_created.labels(warm=str(warm).lower()).inc()
        self.metrics.reset_latency.labels(warm=str(warm).lower()).observe(elapsed)
        self.metrics.sessions_active.set(self.active_count())
        info = ResetInfo(task_id=task_id, repo=task.repo, workdir=task.workdir,
                         tools=[ToolSpec.model_validate(spec) for spec in tools.TOOL_SCHEMAS],
                         max_steps=session.max_steps, image=image, warm_start=warm, reset_s=elapsed)
        return ResetResponse(session_id=session_id, observation=tools.task_prompt(task.problem_statement,
                                                                                    task.workdir), info=info)

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionError(404, "unknown_session", f"no session {session_id!r}: it never existed, was deleted, "
                               f"or expired after {self.config.session_ttl_s:.0f} s idle")
        return session

    async def grade_session(self, session: Session) -> GradeReport:
        started = time.monotonic()
        try:
            patch = await session.extract_patch()
        except PatchError as exc:
            report = GradeReport(resolved=False, reward=0.0, infra_failure=False, patch_applied=False,
                                 test_output_tail=str(exc))
            self.metrics.grades.labels(outcome="no_patch").inc()
            return report
        except SandboxError as exc:
            report = GradeReport(resolved=False, reward=0.0, infra_failure=True, infra_reason=f"{exc.reason}: {exc}")
        else:
            task, image = session.task, session.image
            report = await self.grade_cache.get_or_grade(
                grade_key(task.instance_id, image, patch),
                lambda: grading.grade(self.backend, task, image, patch, self._spec(image, "grade"),
                                      self.config.grade_timeout_s, self.labels("grade", task.instance_id)))
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

