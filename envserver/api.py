"""HTTP routes (`/v1`, FastAPI). Routes only: the work is in `sessions`. Every error is a JSON `ErrorResponse`."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from envserver import tools
from envserver.config import ServerConfig
from envserver.idempotency import IdempotencyCache
from envserver.metrics import Metrics
from envserver.sandbox.base import SandboxBackend
from envserver.session import SessionError
from envserver.sessions import SessionManager
from envserver.tasks import TaskInstance
from envserver.validate import load_validation
from envserver.wire import (
    DrainState,
    ErrorResponse,
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
    ValidationReport,
)

log = logging.getLogger(__name__)


def _errors(*defaults: dict[str, str], **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, all with the ErrorResponse body: `_errors(_COMMON, e404="…")`
    (keywords override the defaults)."""
    merged = {key: text for table in defaults for key, text in table.items()} | described
    return {int(key[1:]): {"model": ErrorResponse, "description": text} for key, text in merged.items()}


_COMMON = {
    "e401": "`unauthorized`: a bearer token is required and was missing or wrong",
    "e422": "`invalid_request`: a field is missing or of the wrong type or range",
}
_POST = {**_COMMON, "e400": "`invalid_json`: the body is not JSON", "e413": "`body_too_large`"}
_SESSION = "`unknown_session`: no such session (never existed, deleted, or expired)"

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

_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def _error(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"type": type_, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class BodyLimit:
    """Answers 413 for a body over the limit, declared or streamed, before any route reads it.

    A plain ASGI middleware: starlette's `BaseHTTPMiddleware` costs milliseconds per request on a 2-core machine,
    which is most of a step's latency."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics):
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(
                scope,
                receive,
                send,
                f"request body of {int(declared)} bytes is over the limit of {self.max_bytes} bytes",
            )
            return
        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # A chunked body has no length to check up front, and a limit hit while a route reads it surfaces as
            # FastAPI's 400 "error parsing the body": read it here (at most the limit) and hand it on.
            body, too_large = await self._read_bounded(receive)
            if too_large:
                await self._reject(scope, receive, send, f"request body is over the limit of {self.max_bytes} bytes")
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            await self._reject(scope, receive, send, f"request body is over the limit of {self.max_bytes} bytes")

    async def _read_bounded(self, receive: Receive) -> tuple[bytes, bool]:
        """The whole body, or (what was read, True) once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def _reject(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        self.metrics.request_errors.labels(type="body_too_large").inc()
        await _error(413, "body_too_large", message)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def create_app(
    config: ServerConfig,
    backend: SandboxBackend,
    tasks: dict[str, TaskInstance],
    validation: ValidationReport | None = None,
) -> FastAPI:
    """`validation`: the report of `python -m envserver validate`; read from `config.validated` when not given
    (a malformed file raises `ValidationFileError`)."""
    if validation is None and config.validated is not None:
        validation = load_validation(config.validated)
    metrics = Metrics()
    manager = SessionManager(config, backend, tasks, metrics, validation)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        try:
            yield
        finally:
            await manager.shutdown()
            await backend.close()

    app = FastAPI(
        title="envserver",
        version="1",
        lifespan=lifespan,
        description="SWE-Gym / SWE-bench tasks as multi-turn tool environments, one container per episode.",
    )
    app.state.manager = manager
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, metrics=metrics)

    @app.exception_handler(SessionError)
    async def session_error(request: Request, exc: SessionError) -> JSONResponse:
        metrics.request_errors.labels(type=exc.type).inc()
        return _error(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            metrics.request_errors.labels(type="invalid_json").inc()
            detail = "; ".join(str(err.get("ctx", {}).get("error", err.get("msg"))) for err in errors)
            return _error(400, "invalid_json", f"the request body is not valid JSON: {detail}")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}" for err in errors
        )
        metrics.request_errors.labels(type="invalid_request").inc()
        return _error(422, "invalid_request", f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _ERRORS.get(exc.status_code, "http_error")
        metrics.request_errors.labels(type=type_).inc()
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        if exc.status_code == 405:
            # Starlette names the methods of the first route whose path matched; a path served by several routes
            # (GET and DELETE /v1/sessions/{id}) allows all of theirs.
            allowed = sorted(
                {
                    method
                    for route in app.router.routes
                    if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE
                    for method in (route.methods or ())
                    if method != "HEAD"
                }
            )
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
        return _error(exc.status_code, type_, message, headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics.request_errors.labels(type="internal").inc()
        # Announce the close: after an unhandled error uvicorn drops the connection, and a client that reuses it
        # would see ECONNRESET on its next request.
        return _error(
            500, "internal", f"internal server error: {type(exc).__name__}: {exc}", headers={"Connection": "close"}
        )

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

    guarded = [Depends(authorize)]
    idempotent = IdempotencyCache(
        config.idempotency_max_entries, config.idempotency_ttl_s, on_replay=metrics.idempotent_replays.inc
    )

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

    @app.get("/v1/tasks", response_model=TaskList, dependencies=guarded, responses=_errors(_COMMON))
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
        "/v1/sessions",
        response_model=ResetResponse,
        status_code=201,
        dependencies=guarded,
        responses=_errors(
            _POST,
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
        responses=_errors(
            _POST,
            e404=_SESSION,
            e409="`session_ended`, `session_busy` (one step at a time), or `idempotency_key_reused`",
            e422="`invalid_tool_call`: arguments the tool does not take (the step "
            "is not counted); `invalid_request`: a malformed body",
        ),
    )
    async def step(session_id: str, body: StepRequest, idempotency_key: IdempotencyKey = None) -> StepResponse:
        async def run() -> StepResponse:
            return await manager.get(session_id).step(body.name, body.arguments)

        return await idempotent.run(idempotency_key, f"/v1/sessions/{session_id}/step", body, run)

    @app.post(
        "/v1/prefetch",
        response_model=PrefetchResponse,
        status_code=202,
        dependencies=guarded,
        responses=_errors(
            _POST,
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

    @app.post("/v1/drain", response_model=DrainState, dependencies=guarded, responses=_errors(_COMMON))
    async def drain() -> DrainState:
        """Take this server out of rotation (maintenance, shutdown): new resets and prefetches answer 503
        `draining`, `/healthz` answers 503, running episodes go on; poll `sessions` until it is 0. Idempotent."""
        return manager.drain(True)

    @app.delete("/v1/drain", response_model=DrainState, dependencies=guarded, responses=_errors(_COMMON))
    async def undrain() -> DrainState:
        """End a drain: the server takes new resets again. Idempotent."""
        return manager.drain(False)

    @app.get(
        "/v1/sessions/{session_id}",
        response_model=SessionState,
        dependencies=guarded,
        responses=_errors(_COMMON, e404=_SESSION),
    )
    async def session_state(session_id: str) -> SessionState:
        return manager.get(session_id).state()

    @app.get(
        "/v1/sessions/{session_id}/patch",
        response_model=SessionPatch,
        dependencies=guarded,
        responses=_errors(_COMMON, e404=_SESSION, e409="`not_graded`: the episode has not ended yet"),
    )
    async def session_patch(session_id: str) -> SessionPatch:
        """The whole graded patch of an ended episode (a grade carries only the head of a large one)."""
        return manager.get(session_id).patch_view()

    @app.delete(
        "/v1/sessions/{session_id}",
        response_model=SessionState,
        dependencies=guarded,
        responses=_errors(_COMMON, e404=_SESSION),
    )
    async def close(session_id: str) -> SessionState:
        return await manager.delete(session_id)

    app.openapi = lambda: _openapi(app, config)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, config: ServerConfig) -> dict[str, Any]:
    """FastAPI's schema, told what this server accepts beyond the models: the tool names a step may call, its
    `max_steps` cap and session cap (the most resets one prefetch may announce of a task), and error bodies in place of FastAPI's default 422 model (every error is an ErrorResponse)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    step = components.get("StepRequest", {}).get("properties", {})
    if "name" in step:
        step["name"]["enum"] = sorted({*tools.TOOL_NAMES, *tools.TOOL_ALIASES})
    prefetch = components.get("PrefetchRequest", {}).get("properties", {})
    if "tasks" in prefetch:
        prefetch["tasks"].setdefault("additionalProperties", {})["maximum"] = config.max_sessions
    reset = components.get("ResetRequest", {}).get("properties", {})
    for option in reset.get("max_steps", {}).get("anyOf", []):
        if option.get("type") == "integer":
            option["maximum"] = config.max_steps_cap
    app.openapi_schema = schema
    return schema
