"""The trainer announces the next step's resets (`announce_resets`, TrainerConfig.announce_next_step) to real env
servers on loopback: the containers start ahead, spread over the servers the way collection spreads episodes."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import start_server, stop_server
from trainer.run import announce_resets

pytestmark = pytest.mark.docker


def test_the_next_steps_resets_are_announced_to_each_server(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    servers = [start_server(tmp_path) for _ in range(2)]
    try:
        ids = [task.instance_id for task in sample_tasks[:3]]
        logged: list[str] = []
        urls = [server.url for server in servers]
        # Tasks 0 and 2 go to server a (2 + 2 containers), task 1 to server b (2), as collect_rollouts spreads them.
        asyncio.run(announce_resets([*urls, "http://127.0.0.1:9"], ids, group_size=2, ttl_s=120, log=logged.append))
        assert len(logged) == 1 and "http://127.0.0.1:9" in logged[0], "an unreachable server is only logged"
        asyncio.run(announce_resets(urls, ids, group_size=2, ttl_s=120, log=logged.append))
        deadline = time.monotonic() + 90
        expected = {urls[0]: 4, urls[1]: 2}
        while True:
            seen = {}
            for url in urls:
                health = httpx.get(f"{url}/healthz", timeout=30).json()
                seen[url] = health["pool_ready"] + health["pool_starting"]
            if seen == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen == expected
        assert len(logged) == 1
    finally:
        for server in servers:
            stop_server(server)
