"""Malformed requests get a 4xx with a message in the error format, never a 5xx, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def http(server):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def session_id(http, sample_tasks):  # type: ignore[no-untyped-def]
    response = http.post("/v1/sessions", json={"task_id": sample_tasks[0].instance_id})
    assert response.status_code == 201, response.text
    sid = response.json()["session_id"]
    yield sid
    http.delete(f"/v1/sessions/{sid}")


def _assert_error(response: httpx.Response, status: int, type_: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"]["type"] == type_, body
    assert len(body["error"]["message"]) > 10
    return body["error"]["message"]


def test_unknown_task(http):  # type: ignore[no-untyped-def]
    message = _assert_error(http.post("/v1/sessions", json={"task_id": "nope__nope-1"}), 404, "unknown_task")
    assert "nope__nope-1" in message


def test_unknown_session(http):  # type: ignore[no-untyped-def]
    _assert_error(
        http.post("/v1/sessions/deadbeef/step", json={"name": "execute_bash", "arguments": {"command": "ls"}}),
        404,
        "unknown_session",
    )
    _assert_error(http.get("/v1/sessions/deadbeef"), 404, "unknown_session")
    _assert_error(http.delete("/v1/sessions/deadbeef"), 404, "unknown_session")


@pytest.mark.parametrize("body", ['{"task_id": ', "not json at all", '{"task_id": "x",}'])
def test_bad_json(http, body):  # type: ignore[no-untyped-def]
    _assert_error(
        http.post("/v1/sessions", content=body, headers={"content-type": "application/json"}), 400, "invalid_json"
    )


def test_missing_and_wrong_fields(http):  # type: ignore[no-untyped-def]
    assert "task_id" in _assert_error(http.post("/v1/sessions", json={}), 422, "invalid_request")
    _assert_error(http.post("/v1/sessions", json={"task_id": 5}), 422, "invalid_request")
    _assert_error(http.post("/v1/sessions", json=[1, 2]), 422, "invalid_request")
    _assert_error(http.post("/v1/sessions", json={"task_id": "a", "max_steps": -1}), 422, "invalid_request")


def test_unknown_tool(http, session_id):  # type: ignore[no-untyped-def]
    message = _assert_error(
        http.post(f"/v1/sessions/{session_id}/step", json={"name": "rm_everything"}), 422, "invalid_tool_call"
    )
    assert "execute_bash" in message  # tells the caller what exists


@pytest.mark.parametrize(
    "call",
    [
        {"name": "execute_bash", "arguments": {}},
        {"name": "execute_bash", "arguments": {"cmd": "ls"}},
        {"name": "execute_bash", "arguments": {"command": "ls", "timeout": "soon"}},
        {"name": "execute_bash", "arguments": "{not json"},
        {"name": "str_replace_editor", "arguments": {"path": "/testbed"}},
        {"name": "str_replace_editor", "arguments": {"command": "view"}},
        {"arguments": {"command": "ls"}},
    ],
)
def test_missing_or_bad_arguments(http, session_id, call):  # type: ignore[no-untyped-def]
    status = http.post(f"/v1/sessions/{session_id}/step", json=call).status_code
    assert 400 <= status < 500
    # A rejected call is not a step: the session is untouched and still works.
    ok = http.post(
        f"/v1/sessions/{session_id}/step", json={"name": "execute_bash", "arguments": {"command": "echo ok"}}
    )
    assert ok.status_code == 200 and ok.json()["observation"].startswith("ok")


def test_editor_errors_are_observations(http, session_id):  # type: ignore[no-untyped-def]
    """Editor misuse is the agent's business: it gets openhands-aci's error text as the observation."""
    response = http.post(
        f"/v1/sessions/{session_id}/step",
        json={"name": "str_replace_editor", "arguments": {"command": "view", "path": "relative/path.py"}},
    )
    assert response.status_code == 200
    assert response.json()["observation"].startswith("ERROR:")


def test_huge_body(http, server):  # type: ignore[no-untyped-def]
    huge = b'{"task_id": "' + b"x" * (11 * 2**20) + b'"}'
    _assert_error(
        http.post("/v1/sessions", content=huge, headers={"content-type": "application/json"}), 413, "body_too_large"
    )


def test_unknown_route_and_method(http):  # type: ignore[no-untyped-def]
    _assert_error(http.get("/v1/nothing-here"), 404, "not_found")
    _assert_error(http.put("/v1/sessions"), 405, "method_not_allowed")
    # Two routes serve /v1/sessions/{id} (GET and DELETE): Allow names both (Starlette named the first one's).
    response = http.put("/v1/sessions/abc")
    _assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "DELETE, GET"


def test_a_chunked_body_over_the_limit_is_413(http):  # type: ignore[no-untyped-def]
    """No Content-Length to check up front: the limit is hit while the body streams in (it answered 400)."""

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"task_id": "'
        for _ in range(50):
            yield b"x" * 2**20
        yield b'"}'

    response = http.post("/v1/sessions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    _assert_error(response, 413, "body_too_large")
    small = http.post(
        "/v1/sessions",
        content=iter([b'{"task_id": ', b'"nope__nope-2"}']),
        headers={"content-type": "application/json"},
    )
    _assert_error(small, 404, "unknown_task")  # a small chunked body is read and served as usual


def test_the_schema_tells_the_truth(server):  # type: ignore[no-untyped-def]
    """schemathesis (every check, fuzzing and stateful phases) against the running server: no server error, no
    status, header, content type or body the OpenAPI schema does not document, no schema-valid request refused."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is part of the test extra (pyproject.toml)"
    # A fixed seed: the same ~900 cases every run (a CI that fails by chance teaches nothing); runs with other seeds
    # and 200 examples an operation passed too when this was written.
    proc = subprocess.run(
        [
            st,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "60",
            "--workers",
            "1",
            "--no-color",
            "--seed",
            "20261205",
            # Draining takes the server out of service by design (every later reset is a documented 503
            # `draining`); tests/integration/test_fleet.py tests it.
            "--exclude-path",
            "/v1/drain",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert " passed" in proc.stdout and "failures" not in proc.stdout.split("SUMMARY")[-1].lower()


def test_deeply_nested_arguments_string_is_a_4xx(http, session_id):  # type: ignore[no-untyped-def]
    """`arguments` as a JSON string of 100,000 nested arrays: json.loads raised RecursionError (a 500)."""
    body = {"name": "execute_bash", "arguments": "[" * 100_000}
    message = _assert_error(http.post(f"/v1/sessions/{session_id}/step", json=body), 422, "invalid_request")
    assert "too deeply" in message
    ok = http.post(
        f"/v1/sessions/{session_id}/step", json={"name": "execute_bash", "arguments": {"command": "echo ok"}}
    )
    assert ok.status_code == 200 and ok.json()["observation"].startswith("ok\n")


def test_a_lone_surrogate_in_a_command_runs_with_a_replacement_character(http, session_id):  # type: ignore[no-untyped-def]
    """JSON may carry "\ud800"; no UTF-8 stream can: the command runs with U+FFFD in its place (it raised
    UnicodeEncodeError on the way to the runtime, a 500)."""
    raw = '{"name": "execute_bash", "arguments": {"command": "printf \'%s\' \'a\\ud800b\' | od -An -tx1"}}'
    headers = {"content-type": "application/json", "Idempotency-Key": "surrogate-key"}  # keyed: fingerprinted too
    response = http.post(f"/v1/sessions/{session_id}/step", content=raw, headers=headers)
    assert response.status_code == 200, response.text
    assert "61 ef bf bd 62" in response.json()["observation"]  # a, U+FFFD in UTF-8, b


def test_delete_while_a_step_runs(http, sample_tasks):  # type: ignore[no-untyped-def]
    """The step in flight answers 409 session_ended (it raised AttributeError, a 500); nothing is left behind."""
    import threading

    sid = http.post("/v1/sessions", json={"task_id": sample_tasks[0].instance_id}).json()["session_id"]
    answers: list[httpx.Response] = []

    def long_step() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=120) as other:
            answers.append(
                other.post(
                    f"/v1/sessions/{sid}/step", json={"name": "execute_bash", "arguments": {"command": "sleep 20"}}
                )
            )

    thread = threading.Thread(target=long_step)
    thread.start()
    import time

    time.sleep(2)
    assert http.delete(f"/v1/sessions/{sid}").status_code == 200
    thread.join(timeout=90)
    assert answers, "the step never answered"
    _assert_error(answers[0], 409, "session_ended")
    _assert_error(http.get(f"/v1/sessions/{sid}"), 404, "unknown_session")


def test_server_still_healthy(http):  # type: ignore[no-untyped-def]
    assert http.get("/healthz").json()["status"] == "ok"
    metrics = http.get("/metrics").text
    assert 'envserver_request_errors_total{type="unknown_task"}' in metrics
