"""The trainer announces the next step's resets (`announce_resets`, TrainerConfig.announce_next_step) to real env
servers on loopback, through the fleet that routes the episodes: the containers start ahead, spread over the live
servers the way collection spreads episodes, and a dead server's tasks are announced to the servers that will take
them. The trainer sends the env servers' bearer token (`env_token`, or ENVSERVER_AUTH_TOKEN) on every request."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from envserver.fleet import Fleet, FleetConfig
from tests.conftest import start_server, stop_server
from trainer.config import TrainerConfig
from trainer.rollout import announce_resets, home_urls
from trainer.run import train

pytestmark = pytest.mark.docker

TOKEN = "s3cret-token"
DEAD = "http://127.0.0.1:9"
FAST = FleetConfig(patience_s=2.0, probe_interval_s=0.5, backoff_base_s=0.25, backoff_max_s=1.0)


def _pool(urls: list[str], expected: dict[str, int], deadline_s: float = 90.0) -> dict[str, int]:
    """Each server's started and starting pool containers, waited for until they are `expected`."""
    deadline = time.monotonic() + deadline_s
    while True:
        seen = {}
        for url in urls:
            health = httpx.get(f"{url}/healthz", timeout=30).json()
            seen[url] = health["pool_ready"] + health["pool_starting"]
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


async def _announce(urls: list[str], ids: list[str], token: str | None, logged: list[str]) -> list[str]:
    async with Fleet(urls, FAST, token=token, log=logged.append) as fleet:
        return await announce_resets(fleet, ids, group_size=2, ttl_s=120, log=logged.append)


def test_the_next_steps_resets_are_announced_to_the_live_servers(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    servers = [start_server(tmp_path, "--auth-token", TOKEN) for _ in range(2)]
    try:
        ids = [task.instance_id for task in sample_tasks[:3]]
        urls = [server.url for server in servers]
        # Without the token the servers refuse, and the refusal is said (the fleet's /healthz needs none).
        logged: list[str] = []
        asyncio.run(_announce(urls, ids, None, logged))
        assert len(logged) == 2 and all("401" in line and "bearer token" in line for line in logged), logged
        # Tasks 0 and 2 go to server a (2 + 2 containers), task 1 to server b (2): as collect_rollouts spreads them.
        # The third server is dead: its task (2) goes to the first live one in turn, and nothing is sent to it.
        logged = []
        homes = asyncio.run(_announce([*urls, DEAD], ids, TOKEN, logged))
        assert homes == [urls[0], urls[1], urls[0]]
        assert not [line for line in logged if "could not announce" in line], logged
        assert _pool(urls, {urls[0]: 4, urls[1]: 2}) == {urls[0]: 4, urls[1]: 2}
    finally:
        for server in servers:
            stop_server(server)


def test_home_urls_move_a_dead_servers_tasks_to_the_live_ones() -> None:
    class Replica:
        def __init__(self, url: str, live: bool) -> None:
            self.url, self.live = url, live

    class Fleet:
        def __init__(self, *replicas: Replica) -> None:
            self.replicas = list(replicas)

        def live(self) -> list[Replica]:
            return [r for r in self.replicas if r.live]

    a, b, c = Replica("a", True), Replica("b", False), Replica("c", True)
    assert home_urls(Fleet(a, b, c), 7) == ["a", "a", "c", "a", "c", "c", "a"]
    assert home_urls(Fleet(a, Replica("b", True), c), 4) == ["a", "b", "c", "a"]
    dead = Fleet(Replica("a", False), Replica("b", False))
    assert home_urls(dead, 3) == ["a", "b", "a"]  # none live: the plain spread (the fleet waits for one)


def test_a_run_against_a_token_protected_server(sample_images, sample_tasks, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """One trainer step against an env server that wants a token: with `env_token` (or ENVSERVER_AUTH_TOKEN) the
    run collects, announces and trains; without it the run stops at once, saying which server refused it and how
    to give the token."""
    server = start_server(tmp_path, "--auth-token", TOKEN)
    monkeypatch.delenv("ENVSERVER_AUTH_TOKEN", raising=False)

    def config(name: str, **fields: object) -> TrainerConfig:
        fields = {"steps": 2, **fields}
        return TrainerConfig(
            env_urls=[server.url],
            tasks=[task.instance_id for task in sample_tasks[:2]],
            tasks_per_step=2,
            group_size=2,
            agent={"max_turns": 1, "max_tokens_per_turn": 8},
            warm_start_steps=0,
            success_eval_episodes=0,
            synthetic_pairs=False,
            output_dir=tmp_path / name,
            **fields,
        )

    try:
        with pytest.raises(RuntimeError, match=r"refused the trainer .*401.*env_token.*ENVSERVER_AUTH_TOKEN"):
            train(config("no-token"), log=lambda *_: None)
        logged: list[str] = []
        result = train(config("token", env_token=TOKEN), log=logged.append)
        assert result["last"]["step"] == 2 and result["last"]["infra_failures"] == 0
        assert not [line for line in logged if "could not announce" in line or "401" in line], logged
        assert TOKEN not in (tmp_path / "token" / "config.json").read_text()
        monkeypatch.setenv("ENVSERVER_AUTH_TOKEN", TOKEN)
        assert train(config("env-var", steps=1), log=lambda *_: None)["last"]["step"] == 1
    finally:
        stop_server(server)
