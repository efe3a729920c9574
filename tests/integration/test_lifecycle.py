"""Server lifecycle: crash recovery, the session cap, idle expiry, auth, the warm pool, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from envserver.client import EnvClient, EnvServerError
from tests.conftest import ROOT, docker_client, start_server, stop_server

pytestmark = pytest.mark.docker


def test_sigkill_then_restart_leaves_no_old_container(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    first = start_server(tmp_path, "--warm-pool-size", "1", "--warm-pool-task", sample_tasks[0].instance_id)
    task = sample_tasks[0].instance_id
    try:
        with EnvClient(first.url) as client:
            sessions = [client.reset(task).session_id for _ in range(2)]
            client.step(sessions[0], "execute_bash", {"command": "sleep 600 &"})
            old_ids = {c.id for c in first.containers()}
            assert len(old_ids) >= 2
        os.killpg(first.process.pid, signal.SIGKILL)  # mid-episode, no chance to clean up
        first.process.wait()
        left_behind = {c.id for c in first.containers()}
        assert old_ids <= left_behind  # they really were left behind (plus any warm-pool refill in flight)
        second = start_server(tmp_path, name=first.name)
        try:
            survivors = {c.id for c in second.containers()} & left_behind
            assert not survivors, f"containers of the killed server survived the restart: {survivors}"
            with EnvClient(second.url) as client:
                with pytest.raises(EnvServerError) as excinfo:
                    client.step(sessions[0], "execute_bash", {"command": "ls"})
                assert excinfo.value.status == 404
        finally:
            stop_server(second)
        assert second.containers() == []
    finally:
        stop_server(first)
        for container in first.containers():  # only after a failure above
            container.remove(force=True)


def test_session_cap_answers_429_with_retry_after(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    server = start_server(tmp_path, "--max-sessions", "2")
    task = sample_tasks[0].instance_id
    try:
        with EnvClient(server.url, max_capacity_wait_s=0) as client:
            held = [client.reset(task).session_id for _ in range(2)]
            response = httpx.post(f"{server.url}/v1/sessions", json={"task_id": task}, timeout=60)
            assert response.status_code == 429
            assert int(response.headers["retry-after"]) > 0
            assert response.json()["error"]["type"] == "capacity"
            client.close_session(held[0])
            client.close_session(client.reset(task).session_id)  # room again once one is closed
            client.close_session(held[1])
    finally:
        stop_server(server)
    assert server.containers() == []


def test_idle_sessions_expire_and_their_containers_go(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    server = start_server(tmp_path, "--session-ttl-s", "3")
    try:
        with EnvClient(server.url) as client:
            sid = client.reset(sample_tasks[0].instance_id).session_id
            assert len(server.containers()) == 1
            deadline = time.monotonic() + 30
            while server.containers() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert server.containers() == []
            with pytest.raises(EnvServerError) as excinfo:
                client.state(sid)
            assert excinfo.value.status == 404 and "expired" in excinfo.value.message
    finally:
        stop_server(server)


def test_bearer_token_required_when_set(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    server = start_server(tmp_path, "--auth-token", "s3cret")
    try:
        non_ascii = {"Authorization": "Bearer s3crét ☃".encode()}  # compare_digest on such str raised: a 500
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}, non_ascii):
            response = httpx.get(f"{server.url}/v1/tasks", headers=headers, timeout=30)
            assert response.status_code == 401 and response.json()["error"]["type"] == "unauthorized"
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200  # probes need no token
        with EnvClient(server.url, token="s3cret") as client:
            assert len(client.list_tasks().tasks) == len(sample_tasks)
    finally:
        stop_server(server)


def test_non_loopback_without_token_refuses_to_start(tmp_path):  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "envserver", "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "ENVSERVER_AUTH_TOKEN"},
        check=False,
    )
    assert result.returncode != 0
    assert "auth-token" in result.stderr


def test_warm_pool_hands_over_started_containers(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    task = sample_tasks[0]
    server = start_server(tmp_path, "--warm-pool-size", "2", "--warm-pool-task", task.instance_id)
    try:
        with EnvClient(server.url) as client:
            image = next(t.image for t in client.list_tasks().tasks if t.instance_id == task.instance_id)
            ready = f'envserver_warm_pool_ready{{image="{image}"}} 2.0'

            def wait_until_ready() -> None:
                deadline = time.monotonic() + 60
                while ready not in httpx.get(f"{server.url}/metrics").text and time.monotonic() < deadline:
                    time.sleep(0.2)  # the pool fills in the background
                assert ready in httpx.get(f"{server.url}/metrics").text

            wait_until_ready()
            pooled = {c.id[:12] for c in server.containers()}  # a container's hostname is its short id
            assert len(pooled) == 2
            reset = client.reset(task.instance_id)
            assert reset.info.warm_start
            step = client.step(reset.session_id, "execute_bash", {"command": "pwd && git rev-parse HEAD && hostname"})
            assert step.observation.startswith(f"{task.workdir}\n{task.base_commit}")
            assert step.observation.splitlines()[2] in pooled, "the session did not get a pre-started container"
            wait_until_ready()  # it refills behind the hand-over
            client.close_session(reset.session_id)
    finally:
        stop_server(server)
    assert server.containers() == [], "shutdown must drain the warm pool"


def test_memory_admission(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    """Sessions' memory limits (4 GiB each by default) may add up to host memory × memory_overcommit: with room for
    one, a second reset answers 429 `memory` with Retry-After until the first session closes."""
    host = docker_client().info()["MemTotal"]
    factor = 1.5 * 4 * 2**30 / host
    server = start_server(tmp_path, "--memory-overcommit", f"{factor:.6f}")
    try:
        health = httpx.get(f"{server.url}/healthz", timeout=30).json()
        assert health["memory_budget_bytes"] == int(host * float(f"{factor:.6f}"))
        with EnvClient(server.url, max_capacity_wait_s=0) as client:
            first = client.reset(sample_tasks[0].instance_id)
            assert httpx.get(f"{server.url}/healthz", timeout=30).json()["memory_committed_bytes"] == 4 * 2**30
            with pytest.raises(EnvServerError) as excinfo:
                client.reset(sample_tasks[0].instance_id)
            assert excinfo.value.status == 429 and excinfo.value.type == "memory" and excinfo.value.retry_after
            assert "memory_overcommit" in excinfo.value.message
            client.close_session(first.session_id)
            second = client.reset(sample_tasks[0].instance_id)
            client.close_session(second.session_id)
    finally:
        stop_server(server)


def test_announced_resets_find_their_containers_started(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    """`POST /v1/prefetch`: the announced containers start ahead, each reset takes one (a hand-over, not a start);
    an announcement's unused containers are removed when it expires; bad announcements are refused."""
    server = start_server(tmp_path, "--session-ttl-s", "8")  # the reaper (and pool trim) runs every 2 s
    task_id = sample_tasks[0].instance_id

    def health() -> dict:  # type: ignore[type-arg]
        return httpx.get(f"{server.url}/healthz", timeout=30).json()

    def wait_ready(count: int) -> None:
        deadline = time.monotonic() + 90
        while health()["pool_ready"] < count:
            assert time.monotonic() < deadline, health()
            time.sleep(0.2)

    try:
        with EnvClient(server.url) as client:
            answer = client.prefetch({task_id: 3}, ttl_s=120)
            assert answer.announced == {task_id: 3} and answer.ready + answer.starting == 3
            wait_ready(3)
            pooled = {c.id[:12] for c in server.containers()}  # a container's hostname is its short id
            resets = [client.reset(task_id) for _ in range(3)]
            assert all(r.info.warm_start for r in resets), [r.info for r in resets]
            hosts = {
                client.step(r.session_id, "execute_bash", {"command": "hostname"}).observation.splitlines()[0]
                for r in resets
            }
            assert hosts == pooled, "each reset must take one of the announced, already started containers"
            assert health()["pool_ready"] == 0 and health()["pool_starting"] == 0, "the burst used up what it asked"
            for reset in resets:
                client.close_session(reset.session_id)

            client.prefetch({task_id: 2}, ttl_s=1)
            wait_ready(2)
            deadline = time.monotonic() + 30
            while health()["pool_ready"] or server.containers():
                assert time.monotonic() < deadline, "unused containers of an expired announcement stay"
                time.sleep(0.5)

            for tasks, status, type_ in (
                ({"nope__nope-1": 1}, 404, "unknown_task"),
                ({task_id: 0}, 422, "invalid_request"),
                ({task_id: 10_000}, 422, "invalid_request"),
            ):
                # Raw: the client's own model refuses a count of 0 before sending.
                answer = httpx.post(f"{server.url}/v1/prefetch", json={"tasks": tasks}, timeout=30)
                assert (answer.status_code, answer.json()["error"]["type"]) == (status, type_), answer.text
    finally:
        stop_server(server)
