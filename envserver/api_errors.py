"""The env server's HTTP errors: every one a JSON `ErrorResponse` (`{"error": {"type", "message"}}`), the OpenAPI
descriptions of them, the handlers that turn FastAPI's and Starlette's own errors into that form, and the request
body limit (413 before any route reads the body)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from envserver.metrics import Metrics
from envserver.session import SessionError
from envserver.wire import ErrorResponse

log = logging.getLogger(__name__)


def error_responses(*defaults: dict[str, str], **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, all with the ErrorResponse body: `error_responses(COMMON_ERRORS, e404="…")`
    (keywords override the defaults)."""
    merged = {key: text for table in defaults for key, text in table.items()} | described
    return {int(key[1:]): {"model": ErrorResponse, "description": text} for key, text in merged.items()}


COMMON_ERRORS = {
    "e401": "`unauthorized`: a bearer token is required and was missing or wrong",
    "e422": "`invalid_request`: a field is missing or of the wrong type or range",
}
POST_ERRORS = {**COMMON_ERRORS, "e400": "`invalid_json`: the body is not JSON", "e413": "`body_too_large`"}
UNKNOWN_SESSION = "`unknown_session`: no such session (never existed, deleted, or expired)"

_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"type": type_, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error the app answers as an `ErrorResponse`, counted by type."""

    @app.exception_handler(SessionError)
    async def session_error(request: Request, exc: SessionError) -> JSONResponse:
        metrics.request_errors.labels(type=exc.type).inc()
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            metrics.request_errors.labels(type="invalid_json").inc()
            detail = "; ".join(str(err.get("ctx", {}).get("error", err.get("msg"))) for err in errors)
            return error_response(400, "invalid_json", f"the request body is not valid JSON: {detail}")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}" for err in errors
        )
        metrics.request_errors.labels(type="invalid_request").inc()
        return error_response(422, "invalid_request", f"invalid request: {problems}")

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
        return error_response(exc.status_code, type_, message, headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics.request_errors.labels(type="internal").inc()
        # Announce the close: after an unhandled error uvicorn drops the connection, and a client that reuses it
        # would see ECONNRESET on its next request.
        return error_response(
            500, "internal", f"internal server error: {type(exc).__name__}: {exc}", headers={"Connection": "close"}
        )


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
        await error_response(413, "body_too_large", message)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass
