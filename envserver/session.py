"""One episode: its container and runtime, its steps (one at a time, up to its step limit), its end (graded, or
stopped over its disk budget) and what is readable of it afterwards. The registry around it is `sessions.py`."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from envserver import tools
from envserver.containers import Prepared
from envserver.episode_grading import Episode, end_observation
from envserver.runtime_client import RuntimeClient
from envserver.sandbox.base import Sandbox
from envserver.submission import Submission
from envserver.tasks import TaskInstance
from envserver.tool_runner import ToolRunner
from envserver.wire import GradeReport, SessionPatch, SessionState, SessionStatus, StepInfo, StepResponse

if TYPE_CHECKING:
    from envserver.sessions import SessionManager


class SessionError(Exception):
    """A request about sessions the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}


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
        self.status: SessionStatus = "running"
        self.created_at = time.time()
        self.last_active = time.monotonic()
        self.last_active_wall = self.created_at
        self.grade: GradeReport | None = None
        self.submission: Submission | None = None
        """The agent's change as read at the end of the episode (before the patch policy)."""
        self.graded_patch: str | None = None
        """The patch that was graded, whole (the grade carries only the head of a large one)."""
        self.lock = asyncio.Lock()
        self.tools = ToolRunner(
            manager.config,
            task.workdir,
            lambda sandbox: manager.containers.start_runtime(sandbox, task),
            manager.containers.disk_budget,
        )

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
                observation, info = await self.tools.run(self, tool, args)
                if self.tools.disk_used is not None:
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

    async def _end_over_disk(self, started: float) -> StepResponse:
        """The episode wrote more than its disk budget: ended as `disk_limit`, ungraded, its container removed."""
        budget, used = self.tools.disk_budget, self.tools.disk_used or 0
        self.status = "disk_limit"
        await self.manager.release(self, reason="disk_limit")
        self.manager.metrics.steps.labels(tool=tools.EXECUTE_BASH, status="disk_limit").inc()
        observation = (
            f"[Episode stopped: the sandbox wrote {used / 1e9:.2f} GB, over its disk budget of "
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

    def live_sandbox(self) -> Sandbox:
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
        episode = Episode(self.id, self, self.task, self.image, self.start_head)
        grade = await self.manager.grader.grade_episode(episode)
        report, self.submission, self.graded_patch = grade.report, grade.submission, grade.graded_patch
        self.grade = report
        self.status = "terminated" if status == "finished" else "truncated"
        await self.manager.release(self, reason=status)
        observation = end_observation(report, self.manager.config.max_patch_bytes)
        info = StepInfo(
            step=self.steps, tool=tools.FINISH, status="graded", grade=report, duration_s=time.monotonic() - started
        )
        return StepResponse(
            observation=observation, reward=report.reward, terminated=status == "finished", truncated=False, info=info
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
