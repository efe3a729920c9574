"""GradeCache semantics: hits, single-flight, LRU eviction, what is never stored. The grade function here is a
coroutine that counts its calls — the real grading (containers) is covered in tests/integration/test_episodes.py."""

from __future__ import annotations

import asyncio

import pytest

from envserver.grade_cache import GradeCache, grade_key
from envserver.wire import GradeReport


def _report(reward: float = 1.0, infra: bool = False) -> GradeReport:
    return GradeReport(
        resolved=reward == 1.0,
        reward=reward,
        infra_failure=infra,
        infra_reason="docker_error: boom" if infra else None,
        model_patch="diff",
        duration_s=1.5,
    )


class _Grader:
    def __init__(self, report: GradeReport, delay: float = 0.0):
        self.report, self.delay, self.calls = report, delay, 0

    async def __call__(self) -> GradeReport:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.report.model_copy()


def test_key_depends_on_task_image_and_patch():  # type: ignore[no-untyped-def]
    base = grade_key("t1", "img:1", "diff a")
    assert base == grade_key("t1", "img:1", "diff a")
    assert (
        len(
            {
                base,
                grade_key("t2", "img:1", "diff a"),
                grade_key("t1", "img:2", "diff a"),
                grade_key("t1", "img:1", "diff b"),
            }
        )
        == 4
    )


def test_repeat_is_served_from_the_cache_as_a_copy():  # type: ignore[no-untyped-def]
    async def run() -> None:
        cache, grader = GradeCache(8), _Grader(_report())
        key = grade_key("t", "img", "p")
        first = await cache.get_or_grade(key, grader)
        second = await cache.get_or_grade(key, grader)
        assert grader.calls == 1 and (cache.hits, cache.misses) == (1, 1)
        assert not first.cached and second.cached
        assert second.reward == first.reward == 1.0 and second.duration_s == 1.5
        second.tests["FAIL_TO_PASS"] = {}  # a caller's change does not reach the stored grade
        third = await cache.get_or_grade(key, grader)
        assert third.tests == {} and third.cached

    asyncio.run(run())


def test_concurrent_identical_patches_are_graded_once():  # type: ignore[no-untyped-def]
    async def run() -> None:
        cache, grader = GradeCache(8), _Grader(_report(0.0), delay=0.05)
        key = grade_key("t", "img", "")
        reports = await asyncio.gather(*(cache.get_or_grade(key, grader) for _ in range(4)))
        assert grader.calls == 1
        assert [r.cached for r in reports].count(False) == 1 and all(r.reward == 0.0 for r in reports)

    asyncio.run(run())


def test_infra_failures_are_shared_by_the_flight_but_not_stored():  # type: ignore[no-untyped-def]
    async def run() -> None:
        cache, grader = GradeCache(8), _Grader(_report(infra=True), delay=0.02)
        key = grade_key("t", "img", "p")
        reports = await asyncio.gather(*(cache.get_or_grade(key, grader) for _ in range(3)))
        assert grader.calls == 1 and all(r.infra_failure for r in reports)
        assert len(cache) == 0
        await cache.get_or_grade(key, grader)
        assert grader.calls == 2  # graded again

    asyncio.run(run())


def test_exception_reaches_every_waiter_and_the_next_request_grades_again():  # type: ignore[no-untyped-def]
    async def run() -> None:
        cache, calls = GradeCache(8), []

        async def broken() -> GradeReport:
            calls.append(1)
            await asyncio.sleep(0.02)
            raise RuntimeError("engine gone")

        key = grade_key("t", "img", "p")
        results = await asyncio.gather(*(cache.get_or_grade(key, broken) for _ in range(3)), return_exceptions=True)
        assert len(calls) == 1 and all(isinstance(r, RuntimeError) for r in results)
        assert (await cache.get_or_grade(key, _Grader(_report()))).reward == 1.0

    asyncio.run(run())


def test_cancelled_grader_hands_over_to_a_waiter():  # type: ignore[no-untyped-def]
    async def run() -> None:
        cache, grader = GradeCache(8), _Grader(_report(), delay=0.05)
        key = grade_key("t", "img", "p")
        leader = asyncio.create_task(cache.get_or_grade(key, grader))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(cache.get_or_grade(key, grader))
        await asyncio.sleep(0.01)
        leader.cancel()
        report = await waiter
        assert report.reward == 1.0 and not report.cached and grader.calls == 2
        with pytest.raises(asyncio.CancelledError):
            await leader

    asyncio.run(run())


def test_least_recently_used_is_evicted_and_zero_disables():  # type: ignore[no-untyped-def]
    async def run() -> None:
        cache, grader = GradeCache(2), _Grader(_report())
        a, b, c = (grade_key("t", "img", p) for p in "abc")
        for key in (a, b, a, c):  # b is the least recently used when c arrives
            await cache.get_or_grade(key, grader)
        assert grader.calls == 3 and len(cache) == 2
        assert (await cache.get_or_grade(a, grader)).cached
        assert not (await cache.get_or_grade(b, grader)).cached

        off, counted = GradeCache(0), _Grader(_report())
        for _ in range(3):
            assert not (await off.get_or_grade(a, counted)).cached
        assert counted.calls == 3 and len(off) == 0

    asyncio.run(run())
    with pytest.raises(ValueError):
        GradeCache(-1)
