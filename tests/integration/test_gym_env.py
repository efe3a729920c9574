"""The Gymnasium environment against a real server: `check_env` passes and an episode runs through it."""

from __future__ import annotations

import json

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import envserver  # noqa: F401 - registers envserver/SWE-v0
from tests.patchops import bash_apply_command

pytestmark = pytest.mark.docker


def test_check_env_passes(server, sample_tasks):  # type: ignore[no-untyped-def]
    env = gymnasium.make("envserver/SWE-v0", base_url=server.url, task_id=sample_tasks[0].instance_id)
    try:
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()
    assert server.containers() == [], "every session check_env opened must be closed"


def test_episode_through_gymnasium(server, sample_tasks):  # type: ignore[no-untyped-def]
    task = sample_tasks[0]
    env = gymnasium.make("envserver/SWE-v0", base_url=server.url)
    try:
        observation, info = env.reset(seed=0, options={"task_id": task.instance_id})
        assert "<issue_description>" in observation and info["task_id"] == task.instance_id
        # Malformed actions are observations, not crashes.
        observation, reward, terminated, _truncated, info = env.step("not a tool call")
        assert observation.startswith("ERROR") and not terminated and reward == 0.0
        observation, *_ = env.step({"name": "no_such_tool", "arguments": {}})
        assert "unknown tool" in observation
        action = json.dumps(
            {"name": "execute_bash", "arguments": {"command": bash_apply_command(task.patch, task.workdir)}}
        )
        observation, reward, terminated, *_ = env.step(action)
        assert "APPLIED" in observation and not terminated
        observation, reward, terminated, _truncated, info = env.step({"name": "submit", "arguments": {}})
        assert terminated and reward == 1.0 and info["grade"]["resolved"]
    finally:
        env.close()


def test_seeded_task_choice_is_reproducible(server):  # type: ignore[no-untyped-def]
    env = gymnasium.make("envserver/SWE-v0", base_url=server.url)
    try:
        first = [env.reset(seed=7)[1]["task_id"]] + [env.reset()[1]["task_id"] for _ in range(2)]
        second = [env.reset(seed=7)[1]["task_id"]] + [env.reset()[1]["task_id"] for _ in range(2)]
        assert first == second
    finally:
        env.close()


def test_an_env_over_several_servers_routes_around_a_dead_one(server, sample_tasks):  # type: ignore[no-untyped-def]
    """`base_url` as a list: the resets go through the fleet's routing (a server that does not answer is out of the
    rotation from the first probe), the episode runs on the live one to its graded end, and `close` leaves no
    session, container or thread behind."""
    import threading

    from envserver.fleet import FleetConfig
    from envserver.fleet_client import FleetClient
    from envserver.local import free_port

    task = sample_tasks[0]
    dead = f"http://127.0.0.1:{free_port()}"
    env = gymnasium.make("envserver/SWE-v0", base_url=[dead, server.url], fleet_config=FleetConfig(patience_s=5))
    client = env.unwrapped.client  # type: ignore[attr-defined]
    assert isinstance(client, FleetClient)
    try:
        assert [r.live for r in client.fleet.replicas] == [False, True]
        for _ in range(3):  # every reset on the live server, none lost to the dead one
            observation, _info = env.reset(options={"task_id": task.instance_id})
            assert "<issue_description>" in observation
        command = bash_apply_command(task.patch, task.workdir)
        observation, *_ = env.step({"name": "execute_bash", "arguments": {"command": command}})
        assert "APPLIED" in observation
        observation, reward, terminated, *_ = env.step({"name": "submit", "arguments": {}})
        assert terminated and reward == 1.0
        live = client.fleet.by_url(server.url)
        assert live.served == 3 and live.in_flight == 0 and live.failed == 0
    finally:
        env.close()
    assert server.containers() == [], "the fleet client closed every session it opened"
    assert not any(t.name == "envserver-fleet" for t in threading.enumerate())
