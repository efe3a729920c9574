"""Warm pool (DESIGN.md decision 5): per task image, started containers with a running runtime, so a reset is a
hand-over instead of a container start. Refilled in the background; drained on shutdown."""

from __future__ import annotations

import asyncio
import logging
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

    def ready(self, key: PoolKey) -> int:
        return len(self._ready.get(key, []))

    def watch(self, key: PoolKey) -> None:
        """Keep `size` containers ready for this key from now on."""
        self._ready.setdefault(key, [])
        self._refill(key)

    def take(self, key: PoolKey) -> Item | None:
        """A ready item, or None (the caller then starts one itself). Triggers a refill."""
        items = self._ready.get(key)
        item = items.pop() if items else None
        if key in self._ready:
            self._on_change(key, self.ready(key))
            self._refill(key)
        return item

    def _refill(self, key: PoolKey) -> None:
        if self._closed or self._failures.get(key, 0) >= 3:
            return  # an image that keeps failing to start is not retried forever
        missing = self.size - self.ready(key) - self._filling.get(key, 0)
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
