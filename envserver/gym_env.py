"""`gymnasium.make("envserver/SWE-v0", base_url=...)`: one env-server session as a Gymnasium environment.

`base_url` may name several env servers (a list): each reset then goes where `envserver.fleet.Fleet` routes it
(live replicas only, the most free capacity first; a dead or draining one is skipped), through `FleetClient`.

Observations are the text the agent sees. An action is one tool call: a dict `{"name": ..., "arguments": {...}}`
or the same as a JSON string. A malformed action is answered with an error observation (reward 0, episode goes
on), as the server answers a malformed call, so a policy's bad output never crashes a rollout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import gymnasium
from gymnasium import spaces

from envserver.client import EnvClient, EnvServerError
from envserver.fleet import FleetConfig
from envserver.fleet_client import FleetClient

MAX_TEXT = 10_000_000


class UnicodeText(spaces.Text):
    """gymnasium's Text accepts only its charset (alphanumerics by default); observations are arbitrary text."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length


class SWEEnv(gymnasium.Env[str, Any]):
    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium declares `metadata` a plain (mutable) attribute

    def __init__(
        self,
        base_url: str | Sequence[str] = "http://127.0.0.1:8000",
        task_id: str | None = None,
        token: str | None = None,
        max_steps: int | None = None,
        client: EnvClient | FleetClient | None = None,
        fleet_config: FleetConfig | None = None,
    ):
        """`base_url`: one env server, or a list of them (routed by a fleet: `fleet_config` tunes its probes and
        patience). `task_id` fixes the task; otherwise each reset draws one from the server's list with the env's
        RNG (or takes `options={"task_id": ...}`)."""
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if client is None:
            client = EnvClient(urls[0], token=token) if len(urls) == 1 else FleetClient(urls, fleet_config, token=token)
        self.client = client
        self.task_id = task_id
        self.max_steps = max_steps
        self.observation_space = UnicodeText(max_length=MAX_TEXT)
        self.action_space = UnicodeText(max_length=MAX_TEXT)
        self.session_id: str | None = None
        self._task_ids: list[str] | None = None

    def _choose_task(self, options: dict[str, Any] | None) -> str:
        if options and options.get("task_id"):
            return str(options["task_id"])
        if self.task_id:
            return self.task_id
        if self._task_ids is None:
            # Only tasks the server accepts (a server started with --validated refuses the others at reset).
            self._task_ids = sorted(task.instance_id for task in self.client.list_tasks().tasks if task.playable)
        return self._task_ids[int(self.np_random.integers(len(self._task_ids)))]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._close_session()
        response = self.client.reset(self._choose_task(options), max_steps=self.max_steps)
        self.session_id = response.session_id
        info = response.info.model_dump()
        info["session_id"] = response.session_id
        return response.observation, info

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.session_id is None:
            raise RuntimeError("call reset() before step()")
        try:
            name, arguments = _parse_action(action)
            response = self.client.step(self.session_id, name, arguments)
        except (ValueError, EnvServerError) as exc:
            if isinstance(exc, EnvServerError) and exc.type not in {"invalid_tool_call", "invalid_request"}:
                raise
            message = exc.message if isinstance(exc, EnvServerError) else str(exc)
            return f"ERROR: invalid tool call: {message}", 0.0, False, False, {"error": message}
        if response.terminated or response.truncated:
            self.session_id = None  # the server already removed the container; the state stays readable
        return (
            response.observation,
            response.reward,
            response.terminated,
            response.truncated,
            response.info.model_dump(),
        )

    def _close_session(self) -> None:
        if self.session_id is not None:
            self.client.close_session(self.session_id)
            self.session_id = None

    def close(self) -> None:
        self._close_session()
        self.client.close()


def _parse_action(action: Any) -> tuple[str, dict[str, Any] | str]:
    if isinstance(action, str):
        try:
            action = json.loads(action)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f'the action is not a JSON tool call ({exc.msg}); expected {{"name": ..., "arguments": {{...}}}}'
            ) from None
    if not isinstance(action, dict) or not isinstance(action.get("name"), str):
        raise ValueError('expected a tool call {"name": ..., "arguments": {...}}')
    arguments = action.get("arguments", {})
    if not isinstance(arguments, (dict, str)):
        raise ValueError("`arguments` must be an object or a JSON string")
    return action["name"], arguments
