"""Full episodes over HTTP against a real env server, real containers and the real swebench grading code."""

from __future__ import annotations

import httpx
import pytest

from envserver.client import EnvClient
from tests.patchops import bash_apply_command, editor_calls

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def client(server):  # type: ignore[no-untyped-def]
    with EnvClient(server.url) as env:
        yield env


def _finish(client: EnvClient, session_id: str):  # type: ignore[no-untyped-def]
    result = client.step(session_id, "finish", {})
    assert result.terminated and not result.truncated
    assert result.info.grade is not None
    return result


def test_tasks_listed_with_images(client, sample_tasks):  # type: ignore[no-untyped-def]
    listed = {task.instance_id: task for task in client.list_tasks().tasks}
    assert set(listed) == {task.instance_id for task in sample_tasks}
    assert all(task.image for task in listed.values()), "every sample task must have its image on the host"


def test_reset_observation_and_tools(client, sample_tasks):  # type: ignore[no-untyped-def]
    task = sample_tasks[0]
    reset = client.reset(task.instance_id)
    try:
        assert task.problem_statement.strip()[:200] in reset.observation
        names = {tool.function["name"] for tool in reset.info.tools}
        assert names == {"execute_bash", "str_replace_editor", "finish"}
        assert reset.info.workdir == "/testbed"
        step = client.step(reset.session_id, "execute_bash", {"command": "git rev-parse HEAD && pwd"})
        assert task.base_commit in step.observation
        assert "/testbed" in step.observation and step.info.exit_code == 0
    finally:
        client.close_session(reset.session_id)


@pytest.mark.parametrize("via", ["bash", "editor"])
def test_gold_patch_resolves_every_task(client, sample_tasks, via):  # type: ignore[no-untyped-def]
    for task in sample_tasks:
        reset = client.reset(task.instance_id)
        if via == "bash":
            step = client.step(
                reset.session_id, "execute_bash", {"command": bash_apply_command(task.patch, task.workdir)}
            )
            assert "APPLIED" in step.observation, step.observation
        else:
            for call in editor_calls(task.patch, task.workdir):
                step = client.step(reset.session_id, "str_replace_editor", call)
                assert not step.observation.startswith("ERROR"), (task.instance_id, call, step.observation)
        result = _finish(client, reset.session_id)
        grade = result.info.grade
        assert not grade.infra_failure, (task.instance_id, grade.infra_reason, grade.test_output_tail)
        assert grade.patch_applied is True
        assert result.reward == 1.0, (task.instance_id, via, grade.tests, grade.test_output_tail[-2000:])
        assert sorted(grade.tests["FAIL_TO_PASS"]["success"]) == sorted(task.FAIL_TO_PASS)
        assert grade.tests["PASS_TO_PASS"]["failure"] == []
        state = client.state(reset.session_id)
        assert state.status == "terminated" and state.reward == 1.0


def test_no_change_resolves_nothing(client, sample_tasks):  # type: ignore[no-untyped-def]
    for task in sample_tasks:
        reset = client.reset(task.instance_id)
        result = _finish(client, reset.session_id)
        grade = result.info.grade
        assert not grade.infra_failure, (task.instance_id, grade.infra_reason)
        assert result.reward == 0.0
        assert grade.model_patch == ""
        assert set(grade.tests["FAIL_TO_PASS"]["failure"]) == set(task.FAIL_TO_PASS)


def test_editing_hidden_tests_does_not_change_the_grade(client, sample_tasks):  # type: ignore[no-untyped-def]
    """An agent that rewrites the files the hidden test_patch touches gains nothing (and loses nothing)."""
    task = sample_tasks[0]
    for gold in (False, True):
        reset = client.reset(task.instance_id)
        commands = [f"cd {task.workdir}"]
        for path in task.test_files():
            # Replace the hidden test file by one whose only test passes.
            commands.append(f"mkdir -p $(dirname {path}) && printf 'def test_ok():\\n    assert True\\n' > {path}")
        step = client.step(reset.session_id, "execute_bash", {"command": " && ".join(commands)})
        assert step.info.exit_code == 0, step.observation
        if gold:
            client.step(reset.session_id, "execute_bash", {"command": bash_apply_command(task.patch, task.workdir)})
        result = _finish(client, reset.session_id)
        grade = result.info.grade
        assert not grade.infra_failure, grade.infra_reason
        for path in task.test_files():
            assert f"b/{path}" not in grade.model_patch
        assert result.reward == (1.0 if gold else 0.0), grade.tests


def test_shell_state_persists_between_steps(client, sample_tasks):  # type: ignore[no-untyped-def]
    reset = client.reset(sample_tasks[0].instance_id)
    sid = reset.session_id
    try:
        client.step(sid, "execute_bash", {"command": "cd /tmp && export FOO=bar42 && greet() { echo hi-$1; }"})
        step = client.step(sid, "execute_bash", {"command": "pwd; echo $FOO; greet you"})
        assert step.observation.splitlines()[:3] == ["/tmp", "bar42", "hi-you"]
        client.step(sid, "execute_bash", {"command": "(sleep 0.2; echo done > /tmp/bg.txt) &"})
        step = client.step(sid, "execute_bash", {"command": "sleep 0.5; cat /tmp/bg.txt"})
        assert "done" in step.observation
        step = client.step(sid, "execute_bash", {"command": "false"})
        assert step.info.exit_code == 1 and "exit code 1" in step.observation
        # An agent's file is visible to the editor and vice versa (same filesystem).
        client.step(sid, "str_replace_editor", {"command": "create", "path": "/tmp/r.py", "file_text": "print(6*7)\n"})
        step = client.step(sid, "execute_bash", {"command": "python3 /tmp/r.py"})
        assert step.observation.startswith("42")
    finally:
        client.close_session(sid)


def test_max_steps_truncates_and_grades(client, sample_tasks):  # type: ignore[no-untyped-def]
    reset = client.reset(sample_tasks[0].instance_id, max_steps=2)
    first = client.step(reset.session_id, "execute_bash", {"command": "echo one"})
    assert not first.truncated and not first.terminated
    second = client.step(reset.session_id, "execute_bash", {"command": "echo two"})
    assert second.truncated and not second.terminated
    assert second.info.truncation_reason == "max_steps"
    assert second.info.grade is not None and not second.info.grade.infra_failure
    with pytest.raises(Exception) as excinfo:
        client.step(reset.session_id, "execute_bash", {"command": "echo three"})
    assert getattr(excinfo.value, "status", None) == 409
    assert client.state(reset.session_id).status == "truncated"


def test_metrics_exposed(server, client, sample_tasks):  # type: ignore[no-untyped-def]
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "envserver_sessions_active",
        "envserver_steps_total",
        "envserver_step_latency_seconds_bucket",
        "envserver_grades_total",
        "envserver_reset_latency_seconds_bucket",
    ):
        assert name in text, name


def test_identical_patches_are_graded_once(client, server, sample_tasks):  # type: ignore[no-untyped-def]
    """The grade cache: a repeat of a patch (same task) is answered without a grading run — sequentially and when
    the repeats finish at once — with the same outcome; a different patch is graded for real."""
    from concurrent.futures import ThreadPoolExecutor

    task = sample_tasks[0]

    def play(command: str):  # type: ignore[no-untyped-def]
        with EnvClient(server.url) as own:
            reset = own.reset(task.instance_id)
            own.step(reset.session_id, "execute_bash", {"command": command})
            return _finish(own, reset.session_id).info.grade

    edit = "echo '# grade cache probe' >> README.md"
    first, second = play(edit), play(edit)
    assert not first.cached and second.cached
    assert first.model_patch == second.model_patch and "grade cache probe" in first.model_patch
    assert (second.reward, second.tests) == (first.reward, first.tests) and not second.infra_failure
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(play, ["echo '# grade cache probe 2' >> README.md"] * 3))
    assert sorted(grade.cached for grade in together) == [False, True, True]
    assert len({grade.model_patch for grade in together}) == 1
    assert not play("echo '# grade cache probe 3' >> README.md").cached
    metrics = httpx.get(f"{server.url}/metrics").text
    hits = [line for line in metrics.splitlines() if line.startswith("envserver_grade_cache_hits_total")]
    assert hits and float(hits[0].split()[-1]) >= 3, hits
