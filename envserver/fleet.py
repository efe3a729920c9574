"""Health-aware routing of episodes over env server replicas: the one place that picks an env server for a reset.

A `Fleet` keeps a typed state per replica (live or not, its last failure, its capacity and load) and routes each new
episode to the live replica with the most free capacity. A replica leaves the rotation on a connection failure or an
answer like 503, is probed in the background (`/healthz`, with backoff) and rejoins when it answers. A reset that
fails that way is retried on another live replica: no session exists yet, so nothing runs twice (DESIGN 11). When no
replica is live, `acquire` waits up to `patience_s` and then raises `FleetUnavailable` naming every replica and its
last failure, so a dead fleet stops a collection instead of masking thousands of episodes. An episode lost with its
replica (its session existed, then the replica failed) can be played again from its reset on a live replica
(`run(..., replays=n)`): the caller keeps the lost attempt (`on_lost`) and the replay sees `env.attempt`.

    async with Fleet(urls) as fleet:
        trajectory = await fleet.run(lambda env: run_episode(engine, env, task_id, config, tokenizer))
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self, TypeVar

import httpx

from envserver.client import AsyncEnvClient, EnvServerError
from envserver.replicas import (
    FleetConfig,
    FleetUnavailable,
    Replica,
    failure_text,
    is_draining,
    takes_replica_down,
)
from envserver.wire import Health, ResetResponse, SessionPatch, SessionState, StepResponse

T = TypeVar("T")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Fleet:
    """Env server replicas with health-aware, capacity-weighted routing (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        config: FleetConfig | None = None,
        token: str | None = None,
        log: Callable[[str], None] = _stderr,
    ):
        if not urls:
            raise ValueError("at least one env server URL is needed")
        self.config = config or FleetConfig()
        self.log = log
        self.replicas = [
            Replica(
                url=url.rstrip("/"),
                client=AsyncEnvClient(url, token=token),
                reset_client=AsyncEnvClient(url, token=token, retries=self.config.reset_retries),
            )
            for url in dict.fromkeys(urls)
        ]
        self._probe_http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=self.config.probe_timeout_s
        )
        # No lock: routing state changes only between awaits (one event loop), so a pick and its count are atomic.
        self._down_since: float | None = None
        self._live_again = asyncio.Event()  # set when a replica comes back after the whole fleet was down
        self._watchers: list[asyncio.Task[None]] = []
        self.lost = 0
        """Episodes lost with their replica (session opened, then the replica failed), replayed or not."""
        self.replayed = 0
        """Replays started for lost episodes."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Probe every replica once (so the first routing knows capacities and who is down), then keep probing."""
        await asyncio.gather(*(self._probe(replica) for replica in self.replicas))
        # One watcher per replica: a probe that hangs until its timeout delays no other replica's.
        self._watchers = [asyncio.create_task(self._watch(replica)) for replica in self.replicas]

    async def aclose(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        clients = [c for r in self.replicas for c in (r.client, r.reset_client) if c is not None]
        await asyncio.gather(*(client.aclose() for client in clients), self._probe_http.aclose())

    def live(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.live]

    def by_url(self, url: str) -> Replica | None:
        return next((replica for replica in self.replicas if replica.url == url.rstrip("/")), None)

    # -- routing ---------------------------------------------------------------------------------------------------

    def _pick(self, prefer: str | None = None, exclude: Sequence[Replica] = ()) -> Replica | None:
        candidates = [r for r in self.replicas if r.live and r not in exclude]
        if not candidates:
            return None
        preferred = self.by_url(prefer) if prefer else None
        if preferred is not None and preferred in candidates and preferred.free > 0:
            return preferred  # keeps the trainer's announced (prefetched) containers in use
        # The smallest share of capacity in use after this episode: replicas of different sizes fill evenly.
        return min(candidates, key=lambda r: ((r.load + 1) / (r.capacity or 1), -(r.capacity or 1)))

    async def acquire(self, prefer: str | None = None) -> Replica:
        """A live replica for a new episode (its `in_flight` counts it); waits while none is live, then raises
        `FleetUnavailable` once the fleet has been down for `patience_s`."""
        while True:
            replica = self._pick(prefer)
            if replica is not None:
                replica.in_flight += 1
                return replica
            left = self.config.patience_s - (time.monotonic() - (self._down_since or time.monotonic()))
            if left <= 0:
                raise FleetUnavailable(self.unavailable_message())
            # An Event, not a Condition: Python 3.11's wait_for around Condition.wait can leave waiters stuck
            # re-taking its lock when many time out together.
            try:
                await asyncio.wait_for(self._live_again.wait(), timeout=left)
            except TimeoutError:
                pass

    async def release(self, replica: Replica, session_opened: bool = False) -> None:
        """Give back the slot `acquire` counted (and the session, when its reset succeeded)."""
        replica.in_flight -= 1
        replica.open_sessions -= session_opened

    async def mark_failed(self, replica: Replica, error: BaseException | str) -> None:
        """Take `replica` out of the rotation after a connection failure or an unavailable answer."""
        reason = error if isinstance(error, str) else failure_text(error)
        if replica.live:
            self._set_down(replica, reason)
        else:  # the other episodes it held failing too: one failure, not one per episode, for the backoff
            replica.last_failure = reason

    def mark_draining(self, replica: Replica) -> None:
        """Take a draining replica out of the rotation without counting a failure; its probes, at the live rate, put
        it back when the drain ends."""
        replica.next_probe_at = time.monotonic() + self.config.probe_interval_s
        replica.failures_in_a_row = 0
        replica.last_failure = "draining"
        if not replica.draining:
            replica.draining = True
            if replica.live:
                replica.live = False
                self.log(
                    f"env server {replica.url} draining: no new episodes, its {replica.in_flight} go on "
                    f"({len(self.live())}/{len(self.replicas)} live)"
                )
        self._note_whole_fleet_down()

    def reroute(self, tried: Sequence[Replica]) -> Replica | None:
        """Another live replica for a reset that failed on `tried` (counted in its `in_flight`), or None; no wait."""
        replica = self._pick(exclude=tried)
        if replica is not None:
            replica.in_flight += 1
        return replica

    def _set_down(self, replica: Replica, reason: str) -> None:
        replica.last_failure = reason
        replica.failures_in_a_row += 1
        backoff = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (replica.failures_in_a_row - 1))
        replica.next_probe_at = time.monotonic() + backoff
        replica.draining = False
        if replica.live:
            replica.live = False
            self.log(
                f"env server {replica.url} out of rotation: {reason} ({len(self.live())}/{len(self.replicas)} live)"
            )
        self._note_whole_fleet_down()

    def _note_whole_fleet_down(self) -> None:
        if not self.live() and self._down_since is None:
            self._down_since = time.monotonic()
            self._live_again = asyncio.Event()
            self.log(
                f"no env server is live; new episodes wait up to {self.config.patience_s:.0f} s for one to "
                f"answer /healthz: " + "; ".join(f"{r.url}: {r.last_failure}" for r in self.replicas)
            )

    def _set_up(self, replica: Replica, health: Health) -> None:
        replica.capacity = health.max_sessions
        replica.others_sessions = max(0, health.sessions - replica.open_sessions)
        if health.draining:
            self.mark_draining(replica)
            return
        replica.draining = False
        if not replica.live:
            replica.live = True
            self._down_since = None
            self._live_again.set()
            self.log(f"env server {replica.url} back in rotation ({len(self.live())}/{len(self.replicas)} live)")

    def unavailable_message(self) -> str:
        return (
            f"no env server answered for {self.config.patience_s:.0f} s (patience_s); replicas and their last "
            "failure: " + "; ".join(f"{r.url}: {r.last_failure or 'never answered'}" for r in self.replicas)
        )

    # -- probing ---------------------------------------------------------------------------------------------------

    async def _probe(self, replica: Replica) -> None:
        try:
            response = await self._probe_http.get(f"{replica.url}/healthz")
            if response.status_code == 503 and response.json().get("draining") is True:
                pass  # a draining replica's health report: _set_up takes it out of the rotation
            elif response.status_code != 200:
                raise EnvServerError(response.status_code, "healthz", response.text[:200])
            health = Health.model_validate(response.json())
        except Exception as exc:  # noqa: BLE001 - whatever stops a probe keeps the replica out
            self._set_down(replica, f"/healthz: {failure_text(exc)}")
            return
        self._set_up(replica, health)

    async def _watch(self, replica: Replica) -> None:
        while True:
            # A live replica every probe_interval_s (it may die with no episode on it); a dead one on its backoff.
            wait = self.config.probe_interval_s if replica.live else replica.next_probe_at - time.monotonic()
            await asyncio.sleep(max(0.05, wait))
            if not replica.live and time.monotonic() < replica.next_probe_at:
                continue  # taken out while this watcher slept: its backoff decides when it is probed
            await self._probe(replica)

    # -- episodes --------------------------------------------------------------------------------------------------

    async def run(
        self,
        play: Callable[[RoutedEnv], Awaitable[T]],
        prefer: str | None = None,
        replays: int = 0,
        on_lost: Callable[[T, int], Awaitable[None]] | None = None,
        first_attempt: int = 0,
    ) -> T:
        """`play(env)` on a live replica (`env` routes the reset and then sticks to the replica holding the session).
        An episode whose reset failed on every live replica waits for a live one again (at most `reset_rounds`
        times): it never started, so it is not lost. An episode lost with its replica is played again from its
        reset, up to `replays` times (`env.attempt` counts from `first_attempt`); each lost attempt that a replay
        follows goes to `on_lost(result, attempt)` first, so the caller can keep it. The last attempt is returned,
        lost or not."""
        attempt = first_attempt
        while True:
            result, lost = await self._play_once(play, prefer, attempt)
            if lost:
                self.lost += 1
            if not lost or attempt - first_attempt >= replays:
                return result
            if on_lost is not None:
                await on_lost(result, attempt)
            self.replayed += 1
            attempt += 1

    async def _play_once(
        self, play: Callable[[RoutedEnv], Awaitable[T]], prefer: str | None, attempt: int
    ) -> tuple[T, bool]:
        rounds = max(1, self.config.reset_rounds)
        for round_ in range(rounds):
            replica = await self.acquire(prefer)
            env = RoutedEnv(self, replica, last_round=round_ + 1 == rounds, attempt=attempt)
            try:
                result = await play(env)
            finally:
                await env.end()
            if not env.reset_failed_everywhere:
                break
        return result, env.lost


class RoutedEnv:
    """The env client of one episode (what `run_episode` calls): the reset goes to the acquired replica, or to
    another live one when that one cannot take it; steps and the rest go to the replica holding the session."""

    def __init__(self, fleet: Fleet, replica: Replica, last_round: bool = True, attempt: int = 0):
        self.fleet = fleet
        self.attempt = attempt
        """0 for an episode's first play, n for its n-th replay after it was lost with its replica."""
        self.replica = replica
        self.session_opened = False
        self.env_failed = False
        self.reset_failed_everywhere = False
        self.last_round = last_round

    @property
    def lost(self) -> bool:
        """Its session existed and its replica failed: the episode was cut by the replica, not by the agent."""
        return self.session_opened and self.env_failed

    async def reset(self, task_id: str, max_steps: int | None = None) -> ResetResponse:
        tried: list[Replica] = []
        while True:
            assert self.replica.reset_client is not None
            try:
                response = await self.replica.reset_client.reset(task_id, max_steps=max_steps)
            except (EnvServerError, httpx.HTTPError) as exc:
                if is_draining(exc):
                    self.fleet.mark_draining(self.replica)
                elif takes_replica_down(exc):
                    self.replica.failed += 1
                    await self.fleet.mark_failed(self.replica, exc)
                else:
                    raise
                tried.append(self.replica)
                other = self.fleet.reroute(tried)
                if other is None:
                    # No session exists: unless this was the last round, `Fleet.run` waits for a live replica.
                    self.reset_failed_everywhere = not self.last_round
                    self.env_failed = self.last_round
                    raise
                await self.fleet.release(self.replica)
                self.replica = other
                continue
            self.session_opened = True
            self.replica.open_sessions += 1
            self.replica.failures_in_a_row = 0
            return response

    async def _call(self, coroutine: Awaitable[T]) -> T:
        try:
            return await coroutine
        except (EnvServerError, httpx.HTTPError) as exc:
            if takes_replica_down(exc):
                self.env_failed = True
                await self.fleet.mark_failed(self.replica, exc)
            raise

    async def step(self, session_id: str, name: str, arguments: dict[str, Any] | str | None = None) -> StepResponse:
        assert self.replica.client is not None
        return await self._call(self.replica.client.step(session_id, name, arguments))

    async def state(self, session_id: str) -> SessionState:
        assert self.replica.client is not None
        return await self._call(self.replica.client.state(session_id))

    async def patch(self, session_id: str) -> SessionPatch:
        assert self.replica.client is not None
        return await self._call(self.replica.client.patch(session_id))

    async def close_session(self, session_id: str) -> SessionState | None:
        assert self.replica.client is not None
        # Not through _call: a session lost with its replica was already counted, and the server's TTL removes
        # what a failed delete leaves.
        return await self.replica.client.close_session(session_id)

    async def end(self) -> None:
        """Account the episode on its replica and give the replica's slot back. (A reset that failed was counted on
        the replica where it failed.)"""
        if self.session_opened:
            if self.env_failed:
                self.replica.failed += 1
            else:
                self.replica.served += 1
        await self.fleet.release(self.replica, self.session_opened)


def status_line(fleet: Fleet) -> str:
    """Live replicas out of all, `2/3`, for a progress bar."""
    return f"{len(fleet.live())}/{len(fleet.replicas)}"


def summary_lines(fleet: Fleet) -> list[str]:
    """One line for the fleet and one per replica: live or dead (and why), episodes served and failed."""
    draining = sum(1 for r in fleet.replicas if r.state == "draining")
    dead = len(fleet.replicas) - len(fleet.live()) - draining
    lost = f"; {fleet.lost} episodes lost with their replica, {fleet.replayed} replayed" if fleet.lost else ""
    drains = f", {draining} draining" if draining else ""
    return [f"env servers: {len(fleet.live())} live{drains}, {dead} dead{lost}"] + [
        f"  {r.describe()}" for r in fleet.replicas
    ]
