"""Client retry rules against a real HTTP server on loopback (a scripted stand-in for the env server, since the
point is how the client reacts to 503s and 429s that a real server rarely gives on cue)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from envserver.client import AsyncEnvClient, EnvClient, EnvServerError
from envserver.local import free_port

RESET_OK = {
    "session_id": "s1",
    "observation": "task",
    "info": {
        "task_id": "t",
        "repo": "o/r",
        "workdir": "/testbed",
        "tools": [],
        "max_steps": 5,
        "image": "img",
        "warm_start": False,
        "reset_s": 0.1,
    },
}


class Script:
    """Counts calls per route and fails the first `fail_first` of each with the given status."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.keys: dict[str, list[str | None]] = {"reset": [], "step": []}

    def app(self) -> Starlette:
        async def tasks(request: Request) -> JSONResponse:
            self.calls["tasks"] += 1
            if self.calls["tasks"] <= 2:
                return JSONResponse({"error": {"type": "unavailable", "message": "warming up"}}, status_code=503)
            return JSONResponse({"tasks": []})

        async def sessions(request: Request) -> JSONResponse:
            self.calls["reset"] += 1
            self.keys["reset"].append(request.headers.get("idempotency-key"))
            if self.calls["reset"] % 2 == 1:
                return JSONResponse(
                    {"error": {"type": "capacity", "message": "full"}}, status_code=429, headers={"Retry-After": "0.2"}
                )
            return JSONResponse(RESET_OK, status_code=201)

        async def step(request: Request) -> JSONResponse:
            self.calls["step"] += 1
            self.keys["step"].append(request.headers.get("idempotency-key"))
            return JSONResponse({"error": {"type": "unavailable", "message": "busy"}}, status_code=503)

        async def state(request: Request) -> JSONResponse:
            self.calls["state"] += 1
            return JSONResponse({"error": {"type": "unknown_session", "message": "no session s9"}}, status_code=404)

        return Starlette(
            routes=[
                Route("/v1/tasks", tasks),
                Route("/v1/sessions", sessions, methods=["POST"]),
                Route("/v1/sessions/{sid}/step", step, methods=["POST"]),
                Route("/v1/sessions/{sid}", state),
            ]
        )


@pytest.fixture
def scripted():  # type: ignore[no-untyped-def]
    script = Script()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(script.app(), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield script, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_sync_client_retry_rules(scripted):  # type: ignore[no-untyped-def]
    script, url = scripted
    with EnvClient(url, retries=3) as client:
        assert client.list_tasks().tasks == []  # GET retried through two 503s
        assert script.calls["tasks"] == 3
        assert client.reset("t").session_id == "s1"  # 429 waited out via Retry-After
        assert script.calls["reset"] == 2
        with pytest.raises(EnvServerError) as excinfo:
            client.step("s1", "execute_bash", {"command": "ls"})
        # A step is retried like any call, under one Idempotency-Key: the server answers a retry with the first
        # answer, so the command never runs twice (tests/integration/test_idempotency.py).
        assert excinfo.value.status == 503 and script.calls["step"] == 4
        assert len(set(script.keys["step"])) == 1 and script.keys["step"][0]
        assert len(set(script.keys["reset"])) == 1 and script.keys["reset"][0]  # the 429 retry kept its key
        with pytest.raises(EnvServerError) as excinfo:
            client.state("s9")
        assert excinfo.value.type == "unknown_session" and "s9" in excinfo.value.message


def test_async_client_retry_rules(scripted):  # type: ignore[no-untyped-def]
    script, url = scripted

    async def main() -> None:
        async with AsyncEnvClient(url, retries=3) as client:
            assert (await client.list_tasks()).tasks == []
            assert (await client.reset("t")).session_id == "s1"
            with pytest.raises(EnvServerError):
                await client.step("s1", "execute_bash", {"command": "ls"})

    asyncio.run(main())
    assert script.calls["tasks"] == 3 and script.calls["reset"] == 2 and script.calls["step"] == 4
    assert len(set(script.keys["step"])) == 1


def test_capacity_wait_is_bounded(scripted):  # type: ignore[no-untyped-def]
    _, url = scripted
    with EnvClient(url, max_capacity_wait_s=0) as client:
        with pytest.raises(EnvServerError) as excinfo:
            client.reset("t")
        assert excinfo.value.status == 429 and excinfo.value.retry_after == 0.2
