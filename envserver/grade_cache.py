"""Grades of identical patches computed once: an in-memory LRU cache with single-flight, keyed by what a grade
depends on.

Why: grading (DESIGN.md decision 4) applies the agent's patch in a fresh container of the task image and runs the
tests there, so its outcome is a function of (task, image, patch) alone — nothing the episode did outside its diff
reaches the grading container. RL collects G rollouts of a task per step, and many of them end with the same patch:
the empty one while the policy flails, the same fix once it has learned it. Each grade is a container start plus a
test run (~1 s of CPU on a sample task, minutes on a real repository); a repeat costs a dictionary lookup.

Single-flight: rollouts of one group usually finish together, so identical patches arrive concurrently; the first
request grades and the others await its result instead of starting containers of their own.

Only real outcomes are cached. An `infra_failure` (engine error, timeout, dead container) says nothing about the
patch, so it is returned to every waiter of that flight but never stored: the next request grades again. Flaky
tests are the price: a cached grade repeats whichever outcome the first run had (set `grade_cache_size: 0` to grade
every episode afresh). The image is keyed by name: rebuilding a task image under the same tag while a server runs
keeps serving the old image's grades until the entry is evicted or the server restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from envserver.wire import GradeReport

GradeKey = tuple[str, str, str]
"""(instance id, image name, sha256 of the patch)."""


def grade_key(instance_id: str, image: str | None, patch: str) -> GradeKey:
    return instance_id, image or "", hashlib.sha256(patch.encode("utf-8")).hexdigest()


class GradeCache:
    """At most `max_entries` grades, least recently used evicted first; 0 disables the cache (and single-flight)."""

    def __init__(self, max_entries: int):
        if max_entries < 0:
            raise ValueError(f"max_entries must be ≥ 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[GradeKey, GradeReport] = OrderedDict()
        self._in_flight: dict[GradeKey, asyncio.Future[GradeReport]] = {}
        self.hits = 0
        """Grades answered from the cache or from another request's flight."""
        self.misses = 0
        """Grades computed."""

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_grade(self, key: GradeKey, grade: Callable[[], Awaitable[GradeReport]]) -> GradeReport:
        """The cached grade for `key`, else the result of the flight already computing it, else `grade()`'s.

        A returned copy of a grade computed for another request has `cached` set; the caller may change it freely.
        If `grade()` raises, every waiter of that flight gets the exception and nothing is stored; if the request
        that was grading is cancelled, one of its waiters grades instead."""
        if self.max_entries == 0:
            self.misses += 1
            return await grade()
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached.model_copy(deep=True, update={"cached": True})
        flight = self._in_flight.get(key)
        if flight is not None:
            try:
                report = await asyncio.shield(flight)  # a cancelled waiter must not cancel the others' grade
            except asyncio.CancelledError:
                if flight.cancelled():  # the request that was grading went away: grade this one ourselves
                    return await self.get_or_grade(key, grade)
                raise
            self.hits += 1
            return report.model_copy(deep=True, update={"cached": True})
        self.misses += 1
        flight = asyncio.get_running_loop().create_future()
        self._in_flight[key] = flight
        try:
            report = await grade()
        except asyncio.CancelledError:
            flight.cancel()  # waiters grade for themselves
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: no "exception was never retrieved" warning when nobody else waited
            raise
        finally:
            self._in_flight.pop(key, None)
        if not report.infra_failure:
            self._entries[key] = report.model_copy(deep=True)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        flight.set_result(report)
        return report
