"""Hostile commands, each in its own session, while a bystander session keeps working in parallel.

Each must give an observation (or end the episode with a clear info); the server must stay up; the bystander must
see every one of its own commands answered correctly and quickly.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from envserver.client import EnvClient

pytestmark = pytest.mark.docker

HOSTILE = {
    "fork_bomb": (":(){ :|:& };:", 10),
    "allocate_50GB": ("python3 -c 'x = bytearray(50 * 2**30)'", 60),
    "allocate_past_limit": ("python3 -c 'import time; x = bytearray(6 * 2**30); time.sleep(5)'", 60),
    "yes_forever": ("yes", 3),
    "sleep_1000": ("sleep 1000", 3),
    "print_100MB": ("head -c 100000000 /dev/zero | tr '\\0' 'a'; echo", 60),
    "binary_output": ("head -c 200000 /dev/urandom", 30),
    "kill_everything": ("kill -9 -1", 30),
    "rm_rf_root": ("rm -rf / --no-preserve-root", 120),
}


class Bystander(threading.Thread):
    """Runs a cheap command in a loop in its own session and records every failure."""

    def __init__(self, url: str, task_id: str):
        super().__init__(daemon=True)
        self.client = EnvClient(url)
        self.task_id = task_id
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.latencies: list[float] = []

    def run(self) -> None:
        session = self.client.reset(self.task_id).session_id
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                started = time.monotonic()
                step = self.client.step(session, "execute_bash", {"command": f"echo tick-{n} && ls | wc -l"})
                self.latencies.append(time.monotonic() - started)
                if not step.observation.startswith(f"tick-{n}\n") or step.info.exit_code != 0:
                    self.failures.append(f"step {n}: {step.observation[:300]!r}")
                if step.truncated:  # step limit reached: carry on in a fresh session
                    session = self.client.reset(self.task_id).session_id
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
            self.failures.append(f"exception: {exc!r}")
        finally:
            self.client.close_session(session)
            self.client.close()


@pytest.fixture
def bystander(server, sample_tasks):  # type: ignore[no-untyped-def]
    thread = Bystander(server.url, sample_tasks[0].instance_id)
    thread.start()
    # The attack starts once the bystander is stepping: otherwise a slow reset would let it watch nothing.
    deadline = time.monotonic() + 120
    while not thread.latencies and not thread.failures and time.monotonic() < deadline:
        time.sleep(0.05)
    yield thread
    thread.stop.set()
    thread.join(timeout=120)
    assert not thread.failures, thread.failures
    assert thread.latencies, "the bystander never got an answer"
    # A starvation detector, not a speed claim: an `echo` that waits 30 s means the hostile session took the server
    # (or the host) from the others.
    assert max(thread.latencies) < 30, f"the bystander waited {max(thread.latencies):.1f} s for one step"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_command(name, server, sample_tasks, bystander):  # type: ignore[no-untyped-def]
    command, timeout = HOSTILE[name]
    task = sample_tasks[0]
    with EnvClient(server.url) as client:
        session = client.reset(task.instance_id).session_id
        step = client.step(session, "execute_bash", {"command": command, "timeout": timeout})
        assert isinstance(step.observation, str) and step.observation
        assert "[Command finished with exit code" in step.observation or step.terminated
        if name in ("yes_forever", "sleep_1000"):
            assert step.info.status == "hard_timeout", step.info
            assert "timed out" in step.observation
        if name == "print_100MB":
            assert len(step.observation) < 40_000 and "truncated" in step.observation
        if name == "binary_output":
            assert "\ufffd" in step.observation
        if name == "kill_everything":
            assert step.info.status == "shell_restarted" and "new shell" in step.observation.lower()
        if name == "allocate_past_limit":
            assert step.info.exit_code not in (0, None), step.observation  # OOM-killed inside its own container
        # The session itself is still usable (or ended with a clear reason) after the attack.
        after = client.step(session, "execute_bash", {"command": "echo still-here", "timeout": 60})
        if name == "rm_rf_root":
            # Everything is gone, bash builtins still answer; finishing must give a clear outcome, not a crash.
            result = client.step(session, "finish", {})
            assert result.terminated and result.info.grade is not None
            assert result.reward == 0.0 and not result.info.grade.infra_failure
            assert result.info.grade.no_patch and "could not be read" in result.observation
        elif name != "fork_bomb":
            assert "still-here" in after.observation, after.observation
        client.close_session(session)
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_finish_stops_the_agents_processes_before_the_diff(server, sample_tasks):  # type: ignore[no-untyped-def]
    """The fix, then a fork bomb left running: the diff could not fork and scored 0. `finish` stops the agent's
    processes first (restarting the container when even that cannot fork), reads the fix, and grades it 1.0."""
    from tests.patchops import bash_apply_command

    task = sample_tasks[0]
    attack = "(:(){ :|:& };:) >/dev/null 2>&1 &"
    with EnvClient(server.url) as client:
        session = client.reset(task.instance_id).session_id
        fixed = client.step(session, "execute_bash", {"command": bash_apply_command(task.patch, task.workdir)})
        assert fixed.info.exit_code == 0, fixed.observation
        client.step(session, "execute_bash", {"command": attack, "timeout": 30})
        time.sleep(3)
        result = client.step(session, "finish", {})
        grade = result.info.grade
        assert grade is not None and not grade.infra_failure and grade.no_patch is None, grade
        assert result.reward == 1.0, grade.test_output_tail[-2000:]
        client.close_session(session)
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_frames_forged_from_inside_the_sandbox_are_rejected(server, sample_tasks):  # type: ignore[no-untyped-def]
    """The agent is root in its container and can write into the runtime's response stream (its shell's parent's
    fd 3, the runtime's private stdout): a whole forged response, junk without a newline (which glued itself to the
    next true response and stalled the session 80 s), and a frame with a made-up signature are all rejected and
    counted; every step still gets its own true answer, promptly."""
    import re

    stream = "/proc/$PPID/fd/3"
    attacks = {
        "unsigned line": f'printf \'{{"id": 1, "ok": true, "result": {{"output": "FORGED"}}}}\\n\' > {stream}',
        "junk ahead of a frame": f"printf 'junk-without-newline' > {stream}",
        "bad signature": f'printf \'\\036deadbeef {{"id": 1, "ok": true, "result": {{}}}}\\n\' > {stream}',
    }

    def rejected(why: str) -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        match = re.search(rf'^envserver_runtime_frames_rejected_total{{why="{why}"}} (\S+)$', text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    with EnvClient(server.url) as client:
        session = client.reset(sample_tasks[0].instance_id).session_id
        probe = client.step(session, "execute_bash", {"command": f"readlink {stream}"})
        assert probe.observation.startswith(("pipe:", "socket:")), probe.observation
        for n, (why, attack) in enumerate(attacks.items()):
            before = rejected(why)
            # A forged or glued frame that swallowed the true answer would leave the server waiting for it until the
            # command's timeout: the step must complete with its own true answer instead.
            step = client.step(session, "execute_bash", {"command": f"{attack}; echo true-answer-{n}", "timeout": 10})
            assert step.observation.startswith(f"true-answer-{n}\n"), step.observation
            assert "FORGED" not in step.observation and step.info.status == "completed", step.info
            assert rejected(why) >= before + 1, why
            after = client.step(session, "execute_bash", {"command": "echo still-fine"})
            assert after.observation.startswith("still-fine\n") and after.info.status == "completed"
        client.close_session(session)


@pytest.mark.parametrize("write", ["one_big_file", "many_files"])
def test_an_episode_over_its_disk_budget_is_stopped(write, sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    """A 0.2 GB budget: one big file stops at the budget at once (RLIMIT_FSIZE); many small files are caught by the
    disk check during the command. Either way the episode ends `disk_limit`, its container is removed, the host's
    disk gives up at most the budget plus what one check period writes, and the server serves on."""
    import shutil

    from tests.conftest import start_server, stop_server

    command = {
        "one_big_file": "head -c 3000000000 /dev/zero > /tmp/big; sleep 6",
        "many_files": "for i in $(seq 1 60); do head -c 10000000 /dev/zero > /tmp/f$i; sleep 0.1; done; sleep 6",
    }[write]
    server = start_server(tmp_path, "--max-disk-gb", "0.2")
    root = docker_root()
    try:
        free_before = shutil.disk_usage(root).free
        with EnvClient(server.url) as client:
            session = client.reset(sample_tasks[0].instance_id).session_id
            step = client.step(session, "execute_bash", {"command": command, "timeout": 120})
            lowest = shutil.disk_usage(root).free
            assert step.terminated and step.info.status == "disk_limit", step.observation
            assert "disk budget of 0.20 GB" in step.observation and step.reward == 0.0
            assert free_before - lowest < 0.2e9 + 0.3e9, "the host lost more than the budget and one check period"
            assert client.state(session).status == "disk_limit"
            deadline = time.monotonic() + 60
            while server.containers():  # the engine may still be deleting the layer it wrote ("removing")
                assert time.monotonic() < deadline, "the container of an episode over its budget stays"
                time.sleep(0.5)
            other = client.reset(sample_tasks[0].instance_id).session_id
            assert client.step(other, "execute_bash", {"command": "echo fine"}).observation.startswith("fine\n")
            client.close_session(other)
    finally:
        stop_server(server)


def docker_root() -> str:
    from tests.conftest import docker_client

    return str(docker_client().info()["DockerRootDir"])
