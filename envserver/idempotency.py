"""Idempotent resets and steps: a POST retried with the same `Idempotency-Key` gets the first answer, never a run of
its own.

A step runs a command; a client that lost the connection before the answer cannot know whether it ran. With a key,
the retry is safe: the first request's answer is kept (bounded by count and age) and handed to every retry; a retry
that arrives while the first is still running waits for it. A key sent again with a different request (another
path or body) is a client bug: 409 `idempotency_key_reused` (the key conflicts with the request it already names). Answers that invite a retry — 429 `capacity`, 503, and
unexpected server errors — are not kept, so the retry runs afresh.

Written here because the idempotency middlewares on the package index store answers in Redis or a database, replay
raw ASGI messages, or are unmaintained; the server needs an in-process map that also joins a retry to the request
still in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from envserver.session import SessionError

T = TypeVar("T")

MAX_KEY_CHARS = 200
"""Longest idempotency key accepted (a UUID is 32–36)."""
RETRYABLE_STATUSES = {429, 503}
"""Error answers that are not kept: the client is told to try again, and the retry must run."""


@dataclass
class _Entry:
    fingerprint: str
    created: float
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def fingerprint(path: str, body: BaseModel) -> str:
    """What a key stands for: the route and the request body (ASCII JSON: a lone surrogate is escaped, not an error)."""
    text = json.dumps(body.model_dump(mode="json"), sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(f"{path}\n{text}".encode()).hexdigest()


class IdempotencyCache:
    """Answers of keyed requests, newest `max_entries` for `ttl_s` seconds."""

    def __init__(self, max_entries: int, ttl_s: float, on_replay: Callable[[], None] | None = None):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.on_replay = on_replay
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.created <= self.ttl_s and len(self._entries) <= self.max_entries:
                break
            if not entry.done.done():
                break  # still running: kept until it ends (the map is bounded by the session cap then)
            del self._entries[key]

    async def run(self, key: str | None, path: str, body: BaseModel, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`'s answer, or the kept answer of an earlier request to `path` with the same key (and body)."""
        if key is None or self.max_entries == 0:
            return await call()
        print_ = fingerprint(path, body)
        if not key or len(key) > MAX_KEY_CHARS:
            raise SessionError(422, "invalid_request", f"Idempotency-Key must be 1–{MAX_KEY_CHARS} characters")
        self._expire(time.monotonic())
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != print_:
                raise SessionError(
                    409,
                    "idempotency_key_reused",
                    "this Idempotency-Key was sent before with a "
                    "different request; use a new key for each reset or step",
                )
            outcome = await asyncio.shield(entry.done)
            if isinstance(outcome, BaseException) and not isinstance(outcome, SessionError):
                return await self.run(key, path, body, call)  # the first failed unexpectedly: not kept, run afresh
            if self.on_replay is not None:
                self.on_replay()
            if isinstance(outcome, SessionError):
                raise outcome
            return outcome
        entry = self._entries[key] = _Entry(print_, time.monotonic())
        try:
            result = await call()
        except SessionError as exc:
            if exc.status in RETRYABLE_STATUSES:
                self._entries.pop(key, None)
            entry.done.set_result(exc)
            raise
        except BaseException as exc:
            # An unexpected error or a cancelled request: not kept; a retry waiting on it gets the same failure.
            self._entries.pop(key, None)
            entry.done.set_result(exc)
            raise
        entry.done.set_result(result)
        return result
