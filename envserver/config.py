"""Env server configuration: one typed model, filled from CLI flags, a YAML file or ENVSERVER_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from envserver.image_names import DEFAULT_TEMPLATES
from envserver.patch_policy import PatchPolicy
from envserver.tasks import SAMPLE_TASKS_PATH


class DockerSandboxConfig(BaseModel):
    """Docker backend settings and the limits every episode container gets."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["docker"] = "docker"
    """Backend discriminator (one backend per file in envserver/sandbox/)."""
    docker_url: str | None = None
    """Docker engine address; default: DOCKER_HOST or the local socket."""
    cpus: float = 1.0
    """CPU quota per container, in cores."""
    memory: str = "4g"
    """Memory limit per container (no swap beyond it); an agent allocating more is OOM-killed inside it."""
    pids_limit: int = 512
    """Maximum processes/threads per container: stops fork bombs."""
    network: bool = False
    """Give episode containers a network. Off by default; grading containers never get one."""
    max_disk_gb: float | None = Field(default=None, gt=0)
    """Disk one episode may write (its container's writable layer, GB); past it the episode is stopped, ends as
    `disk_limit`, and its container is removed. It also caps any single file (RLIMIT_FSIZE), so one big write stops
    at once. None: sized from the host at start-up — the Docker root's free space over `max_sessions`, between 1
    and 10 GB (10 when the Docker root is not readable from the server)."""
    max_workers: int = 64
    """Threads for blocking docker SDK calls (bounds concurrent container starts)."""


class ServerConfig(BaseModel):
    """Everything `python -m envserver serve` can be told."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback requires `auth_token`."""
    port: int = 8000
    """TCP port."""
    tasks: list[Path] = Field(default_factory=lambda: [SAMPLE_TASKS_PATH])
    """Task files (JSON, JSONL or parquet) in the SWE-bench / SWE-Gym schema."""
    specs: list[Path] = Field(default_factory=list)
    """Spec files (YAML or JSON, format in envserver/specs/__init__.py) read after the bundled SWE-bench / SWE-Gym
    tables: repositories and versions that classic rows (no `eval`, no `eval_script`) are graded with."""
    validated: Path | None = None
    """Validation file written by `python -m envserver validate --out`: when set, only its `valid` tasks are served
    (the others are listed with their status and refused at reset) and their grades count the environment verified."""
    server_name: str = "envserver"
    """Name written on every container this server starts; at start-up, containers with the same name left by a
    crashed predecessor are removed. Replicas sharing one Docker engine need distinct names."""
    auth_token: str | None = None
    """Bearer token clients must send (`Authorization: Bearer …`); required off loopback."""
    allow_unauthenticated: bool = False
    """Listen off loopback without a token. Only for a server that is reachable from loopback alone anyway (inside
    a container whose port is published on the host's 127.0.0.1, as compose.yaml does)."""
    max_sessions: int = 64
    """Concurrent sessions; past it `POST /v1/sessions` answers 429 with Retry-After."""
    session_ttl_s: float = 1800.0
    """A session idle for this long is closed and its container removed."""
    default_max_steps: int = 100
    """Steps per episode unless the reset asks for fewer; the step past it ends the episode as truncated."""
    max_steps_cap: int = 500
    """Largest `max_steps` a reset may ask for."""
    warm_pool_size: int = 0
    """Started containers kept ready per task image, so reset hands one over instead of starting one."""
    warm_pool_parallel_starts: int = Field(default=8, ge=1)
    """Warm containers (steady pool and announced bursts, `POST /v1/prefetch`) started at once."""
    warm_pool_tasks: list[str] = Field(default_factory=list)
    """Task ids whose images get a warm pool; empty means every task's image (when `warm_pool_size` > 0)."""
    image_templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    """Image-name templates tried in order for tasks without an explicit image."""
    command_timeout_s: float = 120.0
    """Default hard limit of one `execute_bash` call; the agent may ask for up to `max_command_timeout_s`."""
    max_command_timeout_s: float = 600.0
    """Largest `timeout` an agent may ask for in one `execute_bash` call."""
    no_output_timeout_s: float = 30.0
    """An `execute_bash` call that prints nothing for this long returns its partial output (exit code -1)."""
    max_output_chars: int = 30_000
    """Observation budget for one tool call; longer output keeps its head and tail with a note."""
    grade_timeout_s: float = 900.0
    """Upper bound on a grading run (container start + tests); past it the grade is an infra failure."""
    memory_overcommit: float = Field(default=4.0, ge=0)
    """Running sessions' memory limits (`sandbox.memory` each) may add up to this multiple of the Docker host's
    memory; past it a reset answers 429 `memory` with Retry-After, as at the session cap. Limits are caps, not
    reservations, and an episode seldom uses a tenth of its own; 1 never overcommits; 0 turns admission off."""
    idempotency_max_entries: int = Field(default=4096, ge=0)
    """Answers of keyed resets and steps kept for retries (`Idempotency-Key`, envserver/idempotency.py); 0 turns it
    off."""
    idempotency_ttl_s: float = Field(default=600.0, gt=0)
    """How long a kept answer serves retries."""
    drain_grace_s: float = Field(default=300.0, ge=0)
    """On SIGTERM: seconds the server drains (no new resets, running episodes go on) before it shuts down and removes
    its containers; 0 shuts down at once. A second SIGTERM or a SIGINT shuts down at once. (compose.yaml's
    `stop_grace_period` must be longer, or Docker kills the server first.)"""
    keep_alive_s: float = Field(default=75.0, gt=0)
    """Idle seconds an HTTP keep-alive connection stays open: longer than the clients' pool expiry
    (envserver.client.KEEPALIVE_EXPIRY_S), so no client sends on a connection the server is closing."""
    grade_cache_size: int = 4096
    """Grades kept per (task, image, patch) so identical patches are graded once (envserver/grade_cache.py); 0 grades
    every episode afresh (for tasks with flaky tests)."""
    max_body_bytes: int = 10 * 2**20
    """Largest request body accepted (413 beyond)."""
    patch_policy: PatchPolicy = "strip"
    """What grading does with changes to test infrastructure (conftest.py, pytest / tox configuration, sitecustomize,
    .pth; envserver/patch_policy.py): `strip` leaves them out, `keep` grades them as the SWE-bench harness does,
    `reject` grades 0 without a test run. A task row's own `patch_policy` field overrides it."""
    max_patch_bytes: int = Field(default=2 * 2**20, ge=1)
    """Largest diff graded, in bytes, measured in the episode container; a bigger one grades 0 as `patch_too_large`
    and is never read."""
    inline_patch_bytes: int = Field(default=64 * 2**10, ge=0)
    """Largest patch a grade carries whole in `model_patch` (the finish answer); beyond it the head, and the whole
    patch at `GET /v1/sessions/{id}/patch`."""
    sandbox: DockerSandboxConfig = Field(default_factory=DockerSandboxConfig)
    """Sandbox backend and per-container limits."""

    def is_loopback(self) -> bool:
        return self.host in {"127.0.0.1", "localhost", "::1"} or self.host.startswith("127.")
