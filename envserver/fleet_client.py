"""`FleetClient`: the blocking client's methods (`EnvClient`'s) over several env servers, routed by a `Fleet`.

For blocking callers, the Gymnasium env above all: each reset goes where `envserver.fleet.Fleet` routes it (live
replicas only, the most free capacity first, a refused reset retried on another replica), and a session's steps go
to the replica holding it. The fleet runs on its own event loop in a daemon thread, so its probes keep watching the
replicas between calls; each method waits for its coroutine there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Self, TypeVar

from envserver.fleet import Fleet, FleetConfig, RoutedEnv
from envserver.wire import ResetResponse, SessionPatch, SessionState, StepResponse, TaskList

T = TypeVar("T")


class FleetClient:
    """Blocking client over env server replicas: `reset`, `step`, `state`, `patch`, `close_session`, `list_tasks`,
    `close`, as `EnvClient` has them."""

    def __init__(
        self,
        urls: Sequence[str],
        config: FleetConfig | None = None,
        token: str | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="envserver-fleet", daemon=True)
        self._thread.start()
        self.fleet = Fleet(urls, config, token=token, **({"log": log} if log is not None else {}))
        self._episodes: dict[str, RoutedEnv] = {}
        """Session id → the routed env holding it, until the session is closed."""
        self._ended: set[str] = set()
        """Sessions whose episode ended: their replica slot is already given back."""
        try:
            self._run(self.fleet.start())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_tasks(self) -> TaskList:
        """The task list of a live replica (the replicas of one fleet serve the same tasks)."""

        async def from_a_live_replica() -> TaskList:
            replica = await self.fleet.acquire()
            try:
                assert replica.client is not None
                return await replica.client.list_tasks()
            finally:
                await self.fleet.release(replica)

        return self._run(from_a_live_replica())

    def reset(self, task_id: str, max_steps: int | None = None) -> ResetResponse:
        async def routed() -> tuple[RoutedEnv, ResetResponse]:
            env = RoutedEnv(self.fleet, await self.fleet.acquire())
            try:
                return env, await env.reset(task_id, max_steps)
            except BaseException:
                await env.end()
                raise

        env, response = self._run(routed())
        self._episodes[response.session_id] = env
        return response

    def _env(self, session_id: str) -> RoutedEnv:
        env = self._episodes.get(session_id)
        if env is None:
            raise KeyError(f"no session {session_id!r} was reset through this client (or it was closed)")
        return env

    def step(self, session_id: str, name: str, arguments: dict[str, Any] | str | None = None) -> StepResponse:
        env = self._env(session_id)
        response = self._run(env.step(session_id, name, arguments))
        if response.terminated or response.truncated:
            self._end(session_id, env)  # the replica's slot is free; the session stays readable until closed
        return response

    def state(self, session_id: str) -> SessionState:
        return self._run(self._env(session_id).state(session_id))

    def patch(self, session_id: str) -> SessionPatch:
        return self._run(self._env(session_id).patch(session_id))

    def close_session(self, session_id: str) -> SessionState | None:
        env = self._episodes.pop(session_id, None)
        if env is None:
            return None
        try:
            return self._run(env.close_session(session_id))
        finally:
            self._end(session_id, env)
            self._ended.discard(session_id)

    def _end(self, session_id: str, env: RoutedEnv) -> None:
        """Account the episode on its replica and give its slot back, once."""
        if session_id not in self._ended:
            self._ended.add(session_id)
            self._run(env.end())

    def close(self) -> None:
        """Close the sessions still open, stop watching the replicas, stop the loop thread."""
        if self._loop.is_closed():
            return
        for session_id in list(self._episodes):
            # Closing goes on past a replica that fails; the servers' session TTL removes what is left.
            with contextlib.suppress(Exception):
                self.close_session(session_id)
        try:
            self._run(self.fleet.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
