"""The env server's routes (`/v1`, FastAPI), in three groups: the operator's (health, metrics, drain), the tasks'
(list, prefetch) and the sessions' (reset, step, state, patch, close). Routes only: the work is in `sessions`.

Added to the app itself, not through `APIRouter`s: FastAPI 0.165 mounts an included router lazily, and the 405
handler (envserver/api_errors.py) reads every route of `app.router.routes` to answer `Allow`."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from envserver.api_errors import COMMON_ERRORS, POST_ERRORS, UNKNOWN_SESSION, error_responses
from envserver.config import ServerConfig
from envserver.idempotency import IdempotencyCache
from envserver.metrics import Metrics
from envserver.session import SessionError
from envserver.sessions import SessionManager
from envserver.wire import (
    DrainState,
    Health,
    PrefetchRequest,
    PrefetchResponse,
    ResetRequest,
    ResetResponse,
    SessionPatch,
    SessionState,
    StepRequest,
    StepResponse,
    TaskList,
    TaskSummary,
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Names this request: a retry with "
        "the same key gets the first answer instead of a run of its own (a new key for each reset or step).",
    ),
]


def bearer_auth(config: ServerConfig) -> Callable[[Request], Awaitable[None]]:
    """The dependency that checks `Authorization: Bearer <token>` when the server has a token (401 otherwise)."""

    async def authorize(request: Request) -> None:
        if config.auth_token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, i.e. a 500, for a bad token).
        presented = token.strip().encode("utf-8", "replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, config.auth_token.encode("utf-8")):
            raise SessionError(
                401,
                "unauthorized",
                "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return authorize


def add_operator_routes(
    app: FastAPI, manager: SessionManager, metrics: Metrics, config: ServerConfig, guarded: list[Any]
) -> None:
    """`/healthz` and `/metrics` (open, for probes and scrapers) and the drain switch (guarded)."""
    tasks = manager.tasks

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "Draining: running episodes go on, new resets are refused"}},
    )
    async def healthz(response: Response) -> Health:
        if manager.draining:
            # 503 takes a draining replica out of load balancers and fleet clients; the body still says why.
            response.status_code = 503
        return Health(
            status="draining" if manager.draining else "ok",
            draining=manager.draining,
            server_name=config.server_name,
            sessions=manager.active_count(),
            max_sessions=config.max_sessions,
            tasks=len(tasks),
            memory_committed_bytes=manager.memory_committed(),
            memory_budget_bytes=manager.memory_budget,
            pool_ready=manager.pool.total_ready(),
            pool_starting=manager.pool.total_starting(),
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/drain", response_model=DrainState, dependencies=guarded, responses=error_responses(COMMON_ERRORS))
    async def drain() -> DrainState:
        """Take this server out of rotation (maintenance, shutdown): new resets and prefetches answer 503
        `draining`, `/healthz` answers 503, running episodes go on; poll `sessions` until it is 0. Idempotent."""
        return manager.drain(True)

    @app.delete("/v1/drain", response_model=DrainState, dependencies=guarded, responses=error_responses(COMMON_ERRORS))
    async def undrain() -> DrainState:
        """End a drain: the server takes new resets again. Idempotent."""
        return manager.drain(False)


def add_task_routes(app: FastAPI, manager: SessionManager, guarded: list[Any]) -> None:
    """`GET /v1/tasks` and `POST /v1/prefetch`."""
    tasks = manager.tasks

    @app.get("/v1/tasks", response_model=TaskList, dependencies=guarded, responses=error_responses(COMMON_ERRORS))
    async def list_tasks() -> TaskList:
        summaries = []
        for t in tasks.values():
            status, reason, playable = manager.task_status(t.instance_id)
            summaries.append(
                TaskSummary(
                    instance_id=t.instance_id,
                    repo=t.repo,
                    base_commit=t.base_commit,
                    version=t.version,
                    image=manager.images.get(t.instance_id),
                    status=status,
                    reason=reason,
                    playable=playable,
                )
            )
        return TaskList(tasks=summaries)

    @app.post(
        "/v1/prefetch",
        response_model=PrefetchResponse,
        status_code=202,
        dependencies=guarded,
        responses=error_responses(
            POST_ERRORS,
            e404="`unknown_task`",
            e409="`instance_not_valid`",
            e422="`invalid_request`: a count below 1, or more resets than the session cap",
            e503="`draining`, or `image_missing`",
        ),
    )
    async def prefetch(body: PrefetchRequest) -> PrefetchResponse:
        """Announce resets to come (an RL step's B × G, told while the previous step trains): their containers
        start now, a bounded number at a time, and each reset takes one ready; unused ones go after `ttl_s`."""
        return await manager.prefetch(body)


def add_session_routes(app: FastAPI, manager: SessionManager, guarded: list[Any], idempotent: IdempotencyCache) -> None:
    """Reset, step, state, patch and close of sessions; resets and steps answer a retried Idempotency-Key once."""

    @app.post(
        "/v1/sessions",
        response_model=ResetResponse,
        status_code=201,
        dependencies=guarded,
        responses=error_responses(
            POST_ERRORS,
            e404="`unknown_task`: no such task on this server",
            e409="`instance_not_valid`: the server was started with `--validated` and this task's validation "
            "status is not `valid` (the message names the status and the reason; `GET /v1/tasks` lists them); "
            "`idempotency_key_reused`: the Idempotency-Key came with another request before",
            e429="`capacity` or `memory`: retry after `Retry-After`",
            e503="`draining`: the server takes no new resets (send it to another replica); `image_missing`, or the "
            "sandbox or its runtime did not start",
        ),
    )
    async def reset(body: ResetRequest, idempotency_key: IdempotencyKey = None) -> ResetResponse:
        return await idempotent.run(
            idempotency_key, "/v1/sessions", body, lambda: manager.create(body.task_id, body.max_steps)
        )

    @app.post(
        "/v1/sessions/{session_id}/step",
        response_model=StepResponse,
        dependencies=guarded,
        responses=error_responses(
            POST_ERRORS,
            e404=UNKNOWN_SESSION,
            e409="`session_ended`, `session_busy` (one step at a time), or `idempotency_key_reused`",
            e422="`invalid_tool_call`: arguments the tool does not take (the step "
            "is not counted); `invalid_request`: a malformed body",
        ),
    )
    async def step(session_id: str, body: StepRequest, idempotency_key: IdempotencyKey = None) -> StepResponse:
        async def run() -> StepResponse:
            return await manager.get(session_id).step(body.name, body.arguments)

        return await idempotent.run(idempotency_key, f"/v1/sessions/{session_id}/step", body, run)

    @app.get(
        "/v1/sessions/{session_id}",
        response_model=SessionState,
        dependencies=guarded,
        responses=error_responses(COMMON_ERRORS, e404=UNKNOWN_SESSION),
    )
    async def session_state(session_id: str) -> SessionState:
        return manager.get(session_id).state()

    @app.get(
        "/v1/sessions/{session_id}/patch",
        response_model=SessionPatch,
        dependencies=guarded,
        responses=error_responses(
            COMMON_ERRORS, e404=UNKNOWN_SESSION, e409="`not_graded`: the episode has not ended yet"
        ),
    )
    async def session_patch(session_id: str) -> SessionPatch:
        """The whole graded patch of an ended episode (a grade carries only the head of a large one)."""
        return manager.get(session_id).patch_view()

    @app.delete(
        "/v1/sessions/{session_id}",
        response_model=SessionState,
        dependencies=guarded,
        responses=error_responses(COMMON_ERRORS, e404=UNKNOWN_SESSION),
    )
    async def close(session_id: str) -> SessionState:
        return await manager.delete(session_id)
