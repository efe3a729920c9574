"""HTTP wire formats of the env server API (`/v1`), shared by the server and its clients.

Version 1. Fields are only ever added; a change of meaning bumps `API_VERSION` and the URL prefix.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_VERSION = "v1"


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer carries this: a stable machine-readable `type` and a sentence for people."""

    type: str
    """Stable error kind, e.g. `unknown_task`, `unknown_session`, `invalid_tool_call`, `capacity`."""
    message: str
    """What went wrong and what to do about it."""


class ErrorResponse(BaseModel):
    error: ErrorBody


class TaskSummary(BaseModel):
    """What `GET /v1/tasks` lists for each task: enough to choose one, nothing that leaks the answer."""

    instance_id: str
    repo: str
    base_commit: str
    version: str | None = None
    image: str | None = None
    """Image the server will start for this task; null when no candidate image exists on the server."""


class TaskList(BaseModel):
    tasks: list[TaskSummary]


class ResetRequest(BaseModel):
    """`POST /v1/sessions`: start an episode on a task."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(min_length=1)
    """instance_id of the task to play."""
    max_steps: int | None = Field(default=None, ge=1)
    """Episode step limit; the server's default (and its cap) applies when absent."""
    seed: int | None = None
    """Accepted for Gymnasium compatibility; the environment itself is deterministic."""


class ToolSpec(BaseModel):
    """A tool in the OpenAI function-calling schema (`{"type": "function", "function": {...}}`)."""

    type: Literal["function"] = "function"
    function: dict[str, Any]


class ResetInfo(BaseModel):
    task_id: str
    repo: str
    workdir: str
    """Repository directory inside the sandbox."""
    tools: list[ToolSpec]
    """The tools this environment accepts, in OpenAI function-calling schema."""
    max_steps: int
    image: str
    warm_start: bool
    """True when a pre-started container from the warm pool was handed over."""
    reset_s: float


class ResetResponse(BaseModel):
    session_id: str
    observation: str
    """The task prompt: the problem statement and where the repository is."""
    info: ResetInfo


class StepRequest(BaseModel):
    """`POST /v1/sessions/{id}/step`: one tool call. `arguments` may be an object or a JSON-encoded object
    (OpenAI's `tool_calls[].function.arguments` is a string)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    """Tool name: `execute_bash`, `str_replace_editor`, `finish` (alias `submit`)."""
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arguments", mode="before")
    @classmethod
    def _decode_arguments(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"arguments is not valid JSON: {exc.msg} at column {exc.colno}") from None
        if value is None:
            return {}
        return value


TestStatus = dict[str, list[str]]


class GradeReport(BaseModel):
    """Outcome of grading the agent's change with the instance's hidden tests in a fresh container."""

    resolved: bool
    """All FAIL_TO_PASS and PASS_TO_PASS tests passed."""
    reward: float
    """1.0 when resolved, else 0.0 — meaningless (and masked by trainers) when `infra_failure`."""
    infra_failure: bool
    """The grade could not be computed for a reason that is not the agent's fault."""
    infra_reason: str | None = None
    """Why: `image_missing`, `test_timeout`, `container_died`, `test_patch_failed`, `docker_error: …`."""
    patch_applied: bool | None = None
    """Whether the agent's patch applied in the grading container (null when not reached)."""
    model_patch: str = ""
    """The agent's change as a git diff against base_commit, without the files the hidden tests touch."""
    tests: dict[str, TestStatus] = Field(default_factory=dict)
    """`{"FAIL_TO_PASS": {"success": [...], "failure": [...]}, "PASS_TO_PASS": {...}}` (swebench's report)."""
    test_output_tail: str = ""
    """The end of the test run's output, for debugging."""
    duration_s: float = 0.0
    """Wall time of the grading run (of the original run, for a cached grade)."""
    cached: bool = False
    """This grade was computed for an identical patch of the same task earlier (the server's grade cache), not by a
    run of its own."""


class StepInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int
    """1-based index of this step in the episode."""
    tool: str
    exit_code: int | None = None
    """Shell exit status of an `execute_bash` call (null while the command still runs)."""
    status: str | None = None
    """Runtime status: completed, no_output_timeout, hard_timeout, shell_restarted, busy, error."""
    error: str | None = None
    """Set when the tool call failed in a way the agent should know about (message is in the observation too)."""
    duration_s: float = 0.0
    truncation_reason: str | None = None
    """`max_steps` when the episode was truncated."""
    grade: GradeReport | None = None
    """Present on the step that ended the episode with a grade."""


class StepResponse(BaseModel):
    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: StepInfo


SessionStatus = Literal["running", "terminated", "truncated", "closed", "failed"]


class SessionState(BaseModel):
    """`GET /v1/sessions/{id}`."""

    session_id: str
    task_id: str
    status: SessionStatus
    steps: int
    max_steps: int
    created_at: float
    """Unix time."""
    last_active_at: float
    reward: float | None = None
    grade: GradeReport | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    server_name: str
    sessions: int
    max_sessions: int
    tasks: int
    version: str = API_VERSION
