"""Warm pool (DESIGN.md decision 5): per task image, started containers with a running runtime, so a reset is a
hand-over instead of a container start. Refilled in the background; drained on shutdown.

Besides the steady `size` per watched image, a client may announce a burst (`POST /v1/prefetch`: an RL step's
B × G resets, told while the previous step trains): the pool starts that many more for the key, at most
`max_parallel_starts` at a time, and each take uses one up. What the burst did not use is removed once the
announcement expires (`trim`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
PoolKey = tuple[str, str]
"""(image, workdir): containers are interchangeable only when both match."""


class WarmPool(Generic[Item]):
    def __init__(
        self,
        size: int,
        make: Callable[[PoolKey], Awaitable[Item]],
        discard: Callable[[Item], Awaitable[None]],
        on_change: Callable[[PoolKey, int], None] = lambda key, ready: None,
        max_parallel_starts: int = 4,
    ):
        self.size = size
        self._make = make
        self._discard = discard
        self._on_change = on_change
        self._ready: dict[PoolKey, list[Item]] = {}
        self._filling: dict[PoolKey, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._starts = asyncio.Semaphore(max_parallel_starts)
        self._closed = False
        self._failures: dict[PoolKey, int] = {}
        self._changed = asyncio.Condition()
        """Notified when a start ends (ready or failed): resets waiting for an announced container recheck."""
        self._watched: set[PoolKey] = set()
        self._announced: dict[PoolKey, tuple[int, float]] = {}
        """key → (resets still expected, monotonic deadline) of announced bursts."""

    def ready(self, key: PoolKey) -> int:
        return len(self._ready.get(key, []))

    def starting(self, key: PoolKey) -> int:
        return self._filling.get(key, 0)

    def _extra(self, key: PoolKey) -> int:
        count, deadline = self._announced.get(key, (0, 0.0))
        return count if deadline > time.monotonic() else 0

    def target(self, key: PoolKey) -> int:
        """Containers wanted ready for `key`: the steady size (watched keys) plus the announced resets to come."""
        return (self.size if key in self._watched else 0) + self._extra(key)

    def announce(self, key: PoolKey, count: int, ttl_s: float) -> None:
        """`count` resets of this key will come within `ttl_s` seconds: start containers for them now."""
        self._failures[key] = 0  # a fresh request deserves a fresh try
        self._announced[key] = (count, time.monotonic() + ttl_s)
        self._ready.setdefault(key, [])
        self._refill(key)

    async def trim(self) -> None:
        """Remove ready containers beyond each key's target (an expired announcement's leftovers)."""
        surplus: list[Item] = []
        for key, items in self._ready.items():
            if self._announced.get(key, (0, 0.0))[1] and not self._extra(key):
                self._announced.pop(key, None)
            while len(items) > self.target(key):
                surplus.append(items.pop())
            self._on_change(key, len(items))
        await asyncio.gather(*(self._discard(item) for item in surplus), return_exceptions=True)

    def watch(self, key: PoolKey) -> None:
        """Keep `size` containers ready for this key from now on."""
        self._watched.add(key)
        self._ready.setdefault(key, [])
        self._refill(key)

    def take(self, key: PoolKey) -> Item | None:
        """A ready item, or None (the caller then starts one itself). Triggers a refill."""
        items = self._ready.get(key)
        item = items.pop() if items else None
        count, deadline = self._announced.get(key, (0, 0.0))
        if count > 0:
            self._announced[key] = (count - 1, deadline)  # one announced reset arrived
        if key in self._ready:
            self._on_change(key, self.ready(key))
            self._refill(key)
        return item

    async def take_waiting(self, key: PoolKey, wait_s: float) -> Item | None:
        """`take`, but when none is ready and some are starting for this key (an announced burst arriving while
        its containers start), wait up to `wait_s` for one instead of starting yet another."""
        if not self.ready(key) and self.starting(key):
            async with self._changed:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: bool(self.ready(key)) or not self.starting(key)), wait_s
                    )
                except TimeoutError:
                    pass
        return self.take(key)

    def total_ready(self) -> int:
        return sum(len(items) for items in self._ready.values())

    def total_starting(self) -> int:
        return sum(self._filling.values())

    def _refill(self, key: PoolKey) -> None:
        if self._closed or self._failures.get(key, 0) >= 3:
            return  # an image that keeps failing to start is not retried forever
        missing = self.target(key) - self.ready(key) - self._filling.get(key, 0)
        for _ in range(max(0, missing)):
            self._filling[key] = self._filling.get(key, 0) + 1
            task = asyncio.create_task(self._fill_one(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill_one(self, key: PoolKey) -> None:
        try:
            async with self._starts:
                if self._closed:
                    return
                item = await self._make(key)
            if self._closed:
                await self._discard(item)
                return
            self._ready.setdefault(key, []).append(item)
            self._failures[key] = 0
            self._on_change(key, self.ready(key))
        except Exception as exc:  # noqa: BLE001 - a failed start is logged and retried at the next take
            self._failures[key] = self._failures.get(key, 0) + 1
            log.warning("warm pool: could not start a container for %s: %s", key[0], exc)
        finally:
            self._filling[key] -= 1
            async with self._changed:
                self._changed.notify_all()

    async def drain(self) -> None:
        """Stop refilling and remove every ready container."""
        self._closed = True
        # Let in-flight starts finish (they discard their container once they see the pool closed); cancelling them
        # mid-start would orphan a container the engine is still creating.
        pending = list(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=60)
            for task in late:
                task.cancel()
        items = [item for items in self._ready.values() for item in items]
        self._ready.clear()
        await asyncio.gather(*(self._discard(item) for item in items), return_exceptions=True)
