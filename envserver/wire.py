"""HTTP wire formats of the env server API (`/v1`), shared by the server and its clients.

Version 1. Fields are only ever added; a change of meaning bumps `API_VERSION` and the URL prefix.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from envserver.patch_policy import PatchPolicy

API_VERSION = "v1"


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer carries this: a stable machine-readable `type` and a sentence for people."""

    type: str
    """Stable error kind, e.g. `unknown_task`, `unknown_session`, `invalid_tool_call`, `capacity`."""
    message: str
    """What went wrong and what to do about it."""


class ErrorResponse(BaseModel):
    error: ErrorBody


ValidationStatus = Literal["valid", "gold_fails", "empty_passes", "env_broken", "flaky", "no_image"]
"""Outcome of validating one instance (gold patch and empty patch graded K times each)."""

TaskStatus = Literal["valid", "gold_fails", "empty_passes", "env_broken", "flaky", "no_image", "unvalidated"]
"""A task's status in `GET /v1/tasks`: its validation status, or `unvalidated`."""


class TaskSummary(BaseModel):
    """What `GET /v1/tasks` lists for each task: enough to choose one, nothing that leaks the answer."""

    instance_id: str
    repo: str
    base_commit: str
    version: str | None = None
    image: str | None = None
    """Image the server will start for this task; null when no candidate image exists on the server."""
    status: TaskStatus = "unvalidated"
    """Validation status (`python -m envserver validate`): `valid`, `gold_fails`, `empty_passes`, `env_broken`,
    `flaky`, `no_image`, or `unvalidated` when the server's validation file does not cover the task (or it has none)."""
    reason: str | None = None
    """Why the task is not `valid` (failing tests, the broken environment's log line, ...)."""
    playable: bool = True
    """Whether `POST /v1/sessions` accepts this task: a server started with `--validated` serves only valid tasks."""


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


class PrefetchRequest(BaseModel):
    """`POST /v1/prefetch`: resets that will come soon (an RL step's B × G), so their containers start now."""

    model_config = ConfigDict(extra="forbid")

    tasks: dict[str, Annotated[int, Field(ge=1)]] = Field(min_length=1)
    """task_id → how many resets of it to expect (each ≥ 1; in all at most the server's session cap)."""
    ttl_s: float = Field(default=300.0, gt=0, le=3600)
    """How long the containers are kept for these resets; what is left unused then is removed."""


class PrefetchResponse(BaseModel):
    """What the warm pool does for the announced resets."""

    announced: dict[str, int]
    """Resets announced per task (as asked)."""
    ready: int
    """Containers ready now for those tasks' images."""
    starting: int
    """Containers starting for them (at most the server's parallel-start bound run at once)."""


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
            except RecursionError:
                raise ValueError("arguments nests arrays or objects too deeply to be a tool call") from None
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
    no_patch: str | None = None
    """Why the agent's change could not be read from its container (it destroyed git or the repository): a 0 of the
    agent's own making, not an infra failure."""
    model_patch: str = ""
    """The graded patch: the agent's change as a git diff against base_commit, without the files the hidden tests
    touch and what the patch policy left out (`excluded_paths`); only its head when `model_patch_truncated`."""
    tests: dict[str, TestStatus] = Field(default_factory=dict)
    """`{"FAIL_TO_PASS": {"success": [...], "failure": [...]}, "PASS_TO_PASS": {...}}` (swebench's report)."""
    test_output_tail: str = ""
    """The end of the test run's output, for debugging."""
    duration_s: float = 0.0
    """Wall time of the grading run (of the original run, for a cached grade)."""
    cached: bool = False
    """This grade was computed for an identical patch of the same task earlier (the server's grade cache), not by a
    run of its own."""
    network_error: str | None = None
    """A line of the test output that shows a test tried to reach the network, which grading turns off (`[Errno -3]
    Temporary failure in name resolution`, `Network is unreachable`, …): a test that needs the internet cannot pass
    here, fix or no fix."""
    env_error: str | None = None
    """The log line that shows the test run failed to collect or start (`ImportError while loading conftest … —
    ModuleNotFoundError: …`, `ERROR collecting …`, `no tests ran`, a pytest usage error; when no test got a result at
    all, also weaker evidence, or the output's last line). Set whoever caused it: `infra_failure` says whether the
    grade blames the environment (envserver/grading.py explains the rule)."""
    environment_verified: bool = False
    """The task's environment was known to work when graded (validated): a run broken by anything but the
    infrastructure is then the patch's doing, never an infra failure."""
    patch_policy: PatchPolicy | None = None
    """How changes to test infrastructure were treated (envserver/patch_policy.py): `strip`, `keep` or `reject`."""
    excluded_paths: list[str] = Field(default_factory=list)
    """Files whose change the graded patch leaves out: hidden test files, test infrastructure (conftest.py, pytest /
    tox configuration, sitecustomize, .pth, …) and generated files (bytecode). A setup.cfg / pyproject.toml listed
    here lost only its pytest sections unless its whole change had to go."""
    hack_attempt: bool = False
    """The change touched test infrastructure. Under `reject` the grade is 0 with no test run; under `strip` those
    changes were left out and the rest graded; under `keep` it was graded as it is."""
    patch_too_large: bool = False
    """The diff was over the server's `max_patch_bytes` (`patch_bytes` says by how much): reward 0, not an infra
    failure, not graded — never a truncated patch."""
    patch_bytes: int | None = None
    """Size in bytes of the whole graded patch (of the submitted diff when `patch_too_large`)."""
    patch_sha256: str | None = None
    """sha256 of the whole graded patch (of the submitted diff when `patch_too_large`, as its container computed it)."""
    model_patch_truncated: bool = False
    """`model_patch` is only the head of the graded patch (it is over the server's `inline_patch_bytes`); the whole
    patch: `GET /v1/sessions/{id}/patch`."""


class StepInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int
    """1-based index of this step in the episode."""
    tool: str
    exit_code: int | None = None
    """Shell exit status of an `execute_bash` call (null while the command still runs)."""
    status: str | None = None
    """Runtime status: completed, no_output_timeout, hard_timeout, shell_restarted, busy, error; `disk_limit` when
    the episode was stopped for writing more than its disk budget."""
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


SessionStatus = Literal["running", "terminated", "truncated", "closed", "failed", "disk_limit"]
"""`disk_limit`: stopped for writing more than its disk budget (`sandbox.max_disk_gb`), ungraded."""


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


class SessionPatch(BaseModel):
    """`GET /v1/sessions/{id}/patch`: the whole patch of a graded episode (the finish answer carries only the head of
    a large one)."""

    session_id: str
    task_id: str
    patch: str | None = None
    """The graded patch, whole; null when nothing was graded (`patch_too_large`)."""
    submitted_patch: str | None = None
    """The agent's diff as read from its container, before the patch policy; null when it is the same as `patch`
    or was not read (`patch_too_large`)."""
    patch_bytes: int | None = None
    """Size in bytes of `patch` (of the submitted diff when `patch_too_large`)."""
    patch_sha256: str | None = None
    """sha256 of `patch` (of the submitted diff when `patch_too_large`)."""
    patch_too_large: bool = False
    """The diff was over the server's `max_patch_bytes` and was never read."""
    excluded_paths: list[str] = Field(default_factory=list)
    """Files whose change `patch` leaves out (as in the grade)."""
    hack_attempt: bool = False
    """The change touched test infrastructure (as in the grade)."""


class Health(BaseModel):
    """`GET /healthz`: 200 while the server takes new resets; 503 with `status: draining` while it drains."""

    status: Literal["ok", "draining"] = "ok"
    """`ok`: in rotation; `draining`: finishing its running episodes, refusing new resets (`POST /v1/drain`, or
    SIGTERM with a drain grace period)."""
    draining: bool = False
    """True while the server drains (same as `status == "draining"`, for clients that read a flag)."""
    server_name: str
    sessions: int
    max_sessions: int
    tasks: int
    version: str = API_VERSION
    memory_committed_bytes: int | None = None
    """Sum of the running sessions' memory limits."""
    memory_budget_bytes: int | None = None
    """What they may add up to (host memory × `memory_overcommit`); null: no memory admission."""
    pool_ready: int = 0
    """Warm containers ready for a reset (steady pool and announced bursts)."""
    pool_starting: int = 0
    """Warm containers starting."""


class DrainState(BaseModel):
    """`POST /v1/drain` and `DELETE /v1/drain`: whether the server now refuses new resets, and what still runs."""

    draining: bool
    """True: new resets and prefetches answer 503 `draining`, `/healthz` answers 503; running episodes go on."""
    sessions: int
    """Sessions running or starting on the server now; a drain is complete when this reaches 0."""


VALIDATION_FORMAT_VERSION = 1
"""Version of the validation file format (`ValidationReport`). Fields are only ever added; a change of meaning bumps
it, and a reader refuses a version it does not know."""


class PatchValidation(BaseModel):
    """The K grading runs of one patch (the instance's gold patch, or the empty patch) during validation."""

    resolved: list[bool]
    """Whether each run resolved the instance, in run order (fewer than K when validation stopped early)."""
    failed_tests: list[str] = Field(default_factory=list)
    """FAIL_TO_PASS and PASS_TO_PASS tests that did not pass in at least one run."""
    durations_s: list[float] = Field(default_factory=list)
    """Wall time of each grading run."""
    patch_applied: bool | None = None
    """Whether the patch applied in every run that got that far (null when none did)."""
    env_error: str | None = None
    """The log line that shows the environment is broken (collection error, ImportError, …), from the first run that
    reported one."""
    infra_reason: str | None = None
    """The first infrastructure failure of these runs (`test_timeout: …`, `no_test_output: …`)."""
    excluded_paths: list[str] = Field(default_factory=list)
    """Files the patch policy left out of this patch (test infrastructure): a gold patch that needs them cannot
    resolve under `strip`; validate such a task with `patch_policy: keep` on its row."""


class InstanceValidation(BaseModel):
    """One instance's validation outcome."""

    instance_id: str
    repo: str
    version: str | None = None
    image: str | None = None
    """The image that was graded; null when no candidate image exists on the docker host."""
    status: ValidationStatus
    """`valid`: the gold patch resolved in every run and the empty patch in none. Otherwise why not."""
    reason: str | None = None
    """Why the status is not `valid`, for people: the failing tests, the log line, the infrastructure failure."""
    gold: PatchValidation | None = None
    """Runs of the gold patch (the row's `patch`); null when never graded (`no_image`)."""
    empty: PatchValidation | None = None
    """Runs of the empty patch; null when never graded."""
    python_version: str | None = None
    """Python version the tests ran with, when the test log says (pytest's `platform … -- Python X.Y.Z` header)."""


class ValidationReport(BaseModel):
    """What `python -m envserver validate --out FILE` writes and `serve --validated FILE` reads (a contract: see
    `VALIDATION_FORMAT_VERSION`)."""

    format_version: Literal[1] = 1
    """Version of this format."""
    created_at: str
    """When validation started (ISO 8601, UTC)."""
    task_files: list[str] = Field(default_factory=list)
    """The task files validated."""
    repeat: int = 1
    """Grading runs per patch (K)."""
    complete: bool = True
    """False while validation is still running (the file is rewritten as instances finish) or was interrupted."""
    counts: dict[str, int] = Field(default_factory=dict)
    """Instances per status."""
    instances: list[InstanceValidation] = Field(default_factory=list)
    """One entry per validated instance, in task-file order."""
