"""Steps that survive a dropped connection: a real env server, real containers, and a TCP proxy on loopback that
cuts the connection between the request and its answer (the one stand-in: a network that drops at a chosen moment).
The command runs once and the client gets its answer (envserver/idempotency.py, the clients' retries)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from envserver.client import EnvClient

pytestmark = pytest.mark.docker


class DroppingProxy:
    """Forwards TCP between a client and the server; when armed, closes the client's connection as soon as the
    server's answer starts arriving, relaying none of it (the request has reached the server and run)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.armed = threading.Event()
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self.armed.is_set():
                    self.armed.clear()
                    self.dropped += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(server) -> Iterator[DroppingProxy]:  # type: ignore[no-untyped-def]
    proxy = DroppingProxy(server.url)
    yield proxy
    proxy.close()


def _replays(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(r"^envserver_idempotent_replays_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_step_whose_answer_is_lost_runs_once(server, proxy, sample_tasks) -> None:  # type: ignore[no-untyped-def]
    before = _replays(server.url)
    with EnvClient(proxy.url, retries=3) as client:
        reset = client.reset(sample_tasks[0].instance_id)
        proxy.armed.set()
        step = client.step(
            reset.session_id,
            "execute_bash",
            {"command": "echo ran >> /tmp/idempotency_count && wc -l < /tmp/idempotency_count"},
        )
        assert proxy.dropped == 1, "the proxy must have cut the first answer"
        assert step.observation.startswith("1\n"), step.observation
        again = client.step(reset.session_id, "execute_bash", {"command": "wc -l < /tmp/idempotency_count"})
        assert again.observation.startswith("1\n"), "the command ran twice"
        client.close_session(reset.session_id)
    assert _replays(server.url) == before + 1


def test_a_reset_whose_answer_is_lost_makes_one_session(server, proxy, sample_tasks) -> None:  # type: ignore[no-untyped-def]
    before = httpx.get(f"{server.url}/healthz").json()["sessions"]
    with EnvClient(proxy.url, retries=3) as client:
        proxy.armed.set()
        reset = client.reset(sample_tasks[0].instance_id)
        assert proxy.dropped == 1
        assert httpx.get(f"{server.url}/healthz").json()["sessions"] == before + 1, "a second session was started"
        client.close_session(reset.session_id)


def test_concurrent_retries_join_the_running_request(server, sample_tasks) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.url, timeout=120) as http:
        sid = http.post("/v1/sessions", json={"task_id": sample_tasks[0].instance_id}).json()["session_id"]
        body = {
            "name": "execute_bash",
            "arguments": {"command": "sleep 2; echo ran >> /tmp/joined && wc -l < /tmp/joined"},
        }
        headers = {"Idempotency-Key": "join-test-key"}
        answers: list[httpx.Response] = []

        def send() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as other:
                answers.append(other.post(f"/v1/sessions/{sid}/step", json=body, headers=headers))

        threads = [threading.Thread(target=send) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        assert len({a.text for a in answers}) == 1 and answers[0].json()["observation"].startswith("1\n")

        reused = http.post(
            f"/v1/sessions/{sid}/step",
            headers=headers,
            json={"name": "execute_bash", "arguments": {"command": "echo other"}},
        )
        assert reused.status_code == 409 and reused.json()["error"]["type"] == "idempotency_key_reused"
        state = http.get(f"/v1/sessions/{sid}").json()
        assert state["steps"] == 1, "three requests with one key are one step"
        http.delete(f"/v1/sessions/{sid}")
