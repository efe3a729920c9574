"""HTTP clients for the env server: `AsyncEnvClient` (asyncio) and `EnvClient` (blocking), same methods.

Every call is retried on connection errors and 502/503/504: GET and DELETE are idempotent, and each reset and step
carries an `Idempotency-Key` header, so the server answers a retry with the first answer and never runs a step
twice (envserver/idempotency.py) — an idle keep-alive race or a dropped connection costs a retry, not a step. A reset
answered 429 is retried after the server's Retry-After (nothing was created).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, Self

import httpx
from pydantic import BaseModel

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
)

RETRY_STATUSES = {502, 503, 504}


class EnvServerError(RuntimeError):
    """The server answered an error; `type` is the stable kind (`unknown_task`, `capacity`, …)."""

    def __init__(self, status: int, type_: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {type_}: {message}")
        self.status = status
        self.type = type_
        self.message = message
        self.retry_after = retry_after


def _retryable(response: httpx.Response) -> bool:
    """A 502/503/504 that may pass: not a draining server's refusal (it holds until the drain ends; another replica
    is the retry)."""
    if response.status_code not in RETRY_STATUSES:
        return False
    try:
        return response.json()["error"]["type"] != "draining"
    except Exception:  # noqa: BLE001 - a proxy's error page: retry
        return True


def _health(response: httpx.Response) -> Health:
    if response.status_code == 503:
        # Draining: still a health report. Anything else (a proxy's 503 page) is raised as the error it is.
        with contextlib.suppress(ValueError):
            return Health.model_validate(response.json())
    _raise_for(response)
    return Health.model_validate(response.json())


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = ErrorResponse.model_validate(response.json()).error
        type_, message = body.type, body.message
    except Exception:  # noqa: BLE001 - not our error format (a proxy, say)
        type_, message = "http_error", response.text[:500]
    retry_after = response.headers.get("retry-after")
    raise EnvServerError(
        response.status_code,
        type_,
        message,
        float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None,
    )


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Header naming one logical POST: the server answers a retry of it with the first answer (envserver/idempotency.py)."""
KEEPALIVE_EXPIRY_S = 4.0
"""Idle seconds before the clients drop a pooled connection: below the server's `keep_alive_s`, so a request never
goes out on a connection the server is closing."""


def _key() -> dict[str, str]:
    return {IDEMPOTENCY_HEADER: uuid.uuid4().hex}


def _backoff(attempt: int) -> float:
    return min(8.0, 0.5 * 2**attempt)


class _Calls:
    """What a call is, independent of how it is sent."""

    @staticmethod
    def reset(task_id: str, max_steps: int | None) -> dict[str, Any]:
        return ResetRequest(task_id=task_id, max_steps=max_steps).model_dump(exclude_none=True)

    @staticmethod
    def step(name: str, arguments: dict[str, Any] | str | None) -> dict[str, Any]:
        # A JSON string is decoded by StepRequest's own validator (the server's), so both forms are checked alike.
        return StepRequest.model_validate({"name": name, "arguments": arguments or {}}).model_dump()


class AsyncEnvClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 1200.0,
        retries: int = 3,
        max_capacity_wait_s: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        """`timeout_s` bounds one request (a step may run a command for minutes, `finish` grades);
        `max_capacity_wait_s` bounds how long a reset waits out 429s."""
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=_headers(token),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            transport=transport,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )
        self.retries = retries
        self.max_capacity_wait_s = max_capacity_wait_s

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _idempotent(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """Send, and again on a connection error or 502/503/504: GET and DELETE are idempotent, and a POST carries an
        idempotency key (`headers`), so a retry never runs a step twice."""
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, path, json=body, headers=headers)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
            else:
                if not _retryable(response) or attempt == self.retries:
                    return response
            await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    async def _get(self, path: str, model: type[BaseModel]) -> Any:
        response = await self._idempotent("GET", path)
        _raise_for(response)
        return model.model_validate(response.json())

    async def health(self) -> Health:
        """The server's health; a draining server's too (its 503 carries a Health body, `status: draining`)."""
        return _health(await self._http.get("/healthz"))

    async def drain(self, draining: bool = True) -> DrainState:
        """Take the server out of rotation (or back in with `draining=False`); see `POST /v1/drain`."""
        response = await self._idempotent("POST" if draining else "DELETE", "/v1/drain")
        _raise_for(response)
        return DrainState.model_validate(response.json())

    async def list_tasks(self) -> TaskList:
        return await self._get("/v1/tasks", TaskList)

    async def reset(self, task_id: str, max_steps: int | None = None) -> ResetResponse:
        deadline = time.monotonic() + self.max_capacity_wait_s
        key = _key()
        while True:
            response = await self._idempotent("POST", "/v1/sessions", _Calls.reset(task_id, max_steps), key)
            if response.status_code == 429 and time.monotonic() < deadline:
                await asyncio.sleep(float(response.headers.get("retry-after", "5")))
                continue
            _raise_for(response)
            return ResetResponse.model_validate(response.json())

    async def step(self, session_id: str, name: str, arguments: dict[str, Any] | str | None = None) -> StepResponse:
        response = await self._idempotent(
            "POST", f"/v1/sessions/{session_id}/step", _Calls.step(name, arguments), _key()
        )
        _raise_for(response)
        return StepResponse.model_validate(response.json())

    async def state(self, session_id: str) -> SessionState:
        return await self._get(f"/v1/sessions/{session_id}", SessionState)

    async def prefetch(self, tasks: dict[str, int], ttl_s: float = 300.0) -> PrefetchResponse:
        """Announce resets to come (task_id → count): the server starts their containers now."""
        body = PrefetchRequest(tasks=tasks, ttl_s=ttl_s).model_dump()
        response = await self._idempotent("POST", "/v1/prefetch", body, _key())
        _raise_for(response)
        return PrefetchResponse.model_validate(response.json())

    async def patch(self, session_id: str) -> SessionPatch:
        """The whole graded patch of an ended episode (a grade carries only the head of a large one)."""
        return await self._get(f"/v1/sessions/{session_id}/patch", SessionPatch)

    async def close_session(self, session_id: str) -> SessionState | None:
        """Delete a session; None when it was already gone."""
        response = await self._idempotent("DELETE", f"/v1/sessions/{session_id}")
        if response.status_code == 404:
            return None
        _raise_for(response)
        return SessionState.model_validate(response.json())


class EnvClient:
    """Blocking twin of AsyncEnvClient (same methods, same retry rules)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 1200.0,
        retries: int = 3,
        max_capacity_wait_s: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=_headers(token),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            transport=transport,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )
        self.retries = retries
        self.max_capacity_wait_s = max_capacity_wait_s

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _idempotent(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=body, headers=headers)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
            else:
                if not _retryable(response) or attempt == self.retries:
                    return response
            time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def _get(self, path: str, model: type[BaseModel]) -> Any:
        response = self._idempotent("GET", path)
        _raise_for(response)
        return model.model_validate(response.json())

    def health(self) -> Health:
        """The server's health; a draining server's too (its 503 carries a Health body, `status: draining`)."""
        return _health(self._http.get("/healthz"))

    def drain(self, draining: bool = True) -> DrainState:
        """Take the server out of rotation (or back in with `draining=False`); see `POST /v1/drain`."""
        response = self._idempotent("POST" if draining else "DELETE", "/v1/drain")
        _raise_for(response)
        return DrainState.model_validate(response.json())

    def list_tasks(self) -> TaskList:
        return self._get("/v1/tasks", TaskList)

    def reset(self, task_id: str, max_steps: int | None = None) -> ResetResponse:
        deadline = time.monotonic() + self.max_capacity_wait_s
        key = _key()
        while True:
            response = self._idempotent("POST", "/v1/sessions", _Calls.reset(task_id, max_steps), key)
            if response.status_code == 429 and time.monotonic() < deadline:
                time.sleep(float(response.headers.get("retry-after", "5")))
                continue
            _raise_for(response)
            return ResetResponse.model_validate(response.json())

    def step(self, session_id: str, name: str, arguments: dict[str, Any] | str | None = None) -> StepResponse:
        response = self._idempotent("POST", f"/v1/sessions/{session_id}/step", _Calls.step(name, arguments), _key())
        _raise_for(response)
        return StepResponse.model_validate(response.json())

    def state(self, session_id: str) -> SessionState:
        return self._get(f"/v1/sessions/{session_id}", SessionState)

    def prefetch(self, tasks: dict[str, int], ttl_s: float = 300.0) -> PrefetchResponse:
        """Announce resets to come (task_id → count): the server starts their containers now."""
        body = PrefetchRequest(tasks=tasks, ttl_s=ttl_s).model_dump()
        response = self._idempotent("POST", "/v1/prefetch", body, _key())
        _raise_for(response)
        return PrefetchResponse.model_validate(response.json())

    def patch(self, session_id: str) -> SessionPatch:
        """The whole graded patch of an ended episode (a grade carries only the head of a large one)."""
        return self._get(f"/v1/sessions/{session_id}/patch", SessionPatch)

    def close_session(self, session_id: str) -> SessionState | None:
        response = self._idempotent("DELETE", f"/v1/sessions/{session_id}")
        if response.status_code == 404:
            return None
        _raise_for(response)
        return SessionState.model_validate(response.json())
