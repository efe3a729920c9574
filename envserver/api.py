"""The env server's FastAPI app: its lifespan (the session manager's start and shutdown), the body limit, the error
handlers (envserver/api_errors.py), the routes (envserver/routes.py) and the OpenAPI document. Every error is a
JSON `ErrorResponse`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI

from envserver import tools
from envserver.api_errors import BodyLimit, install_error_handlers
from envserver.config import ServerConfig
from envserver.idempotency import IdempotencyCache
from envserver.metrics import Metrics
from envserver.routes import add_operator_routes, add_session_routes, add_task_routes, bearer_auth
from envserver.sandbox.base import SandboxBackend
from envserver.sessions import SessionManager
from envserver.tasks import TaskInstance
from envserver.validate import load_validation
from envserver.wire import ValidationReport

log = logging.getLogger(__name__)


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

    install_error_handlers(app, metrics)
    guarded = [Depends(bearer_auth(config))]
    idempotent = IdempotencyCache(
        config.idempotency_max_entries, config.idempotency_ttl_s, on_replay=metrics.idempotent_replays.inc
    )
    add_operator_routes(app, manager, metrics, config, guarded)
    add_task_routes(app, manager, guarded)
    add_session_routes(app, manager, guarded, idempotent)
    app.openapi = lambda: _openapi(app, config)  # type: ignore[method-assign]  # why: FastAPI documents replacing it
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
