"""Routing over env server replicas (`envserver.fleet`): real env servers on loopback, a real `kill -9` of a server's
process group mid-collection, a restart on the same port, and all of them killed.

The engine is the replay engine (agent/engines/replay.py) playing `sleep 1` three times, so that episodes are in
flight long enough to be cut by a kill. Two stand-ins, both tiny HTTP servers in this file: a replica whose /healthz
answers but whose resets answer 503 (what an env server missing an image, or a proxy in front of a dead one,
answers), and replicas of different `max_sessions` to check that routing fills them evenly — these test routing, not
an env server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.collect import collect, done_episode_ids, is_replayed_attempt, lost_attempts, mark_lost_attempt, mark_replay
from agent.engines.replay import ReplayEngine, tool_call_text
from agent.loop import AgentConfig
from agent.trajectory import Trajectory, read_jsonl, write_jsonl
from envserver.fleet import Fleet, FleetConfig, FleetUnavailable
from envserver.local import free_port
from tests.conftest import ServerProcess, start_server, stop_server

FAST = FleetConfig(patience_s=4.0, probe_interval_s=0.5, backoff_base_s=0.25, backoff_max_s=1.0)
"""Probes and backoff fast enough for a test; patience short enough to wait out."""
EPISODE = AgentConfig(max_turns=3, grade_on_truncation=False)
"""Three `sleep 1` turns, no grading: a few seconds in flight per episode."""


class FakeReplica:
    """A loopback HTTP server that answers /healthz like an env server of `max_sessions` and every reset with 503."""

    def __init__(self, max_sessions: int):
        self.resets = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:  # type: ignore[type-arg]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(
                    200,
                    {"status": "ok", "server_name": "fake", "sessions": 0, "max_sessions": max_sessions, "tasks": 8},
                )

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.resets += 1
                self._send(503, {"error": {"type": "image_missing", "message": "no image for this task here"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fakes() -> Iterator[Callable[[int], FakeReplica]]:
    made: list[FakeReplica] = []

    def make(max_sessions: int) -> FakeReplica:
        made.append(FakeReplica(max_sessions))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from agent.tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


def metric_sum(url: str, name: str, timeout: float = 5.0) -> float:
    """The env server's Prometheus metric `name`, summed over its labels."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=timeout).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE))


def sleeper(tokenizer) -> ReplayEngine:  # type: ignore[no-untyped-def]
    return ReplayEngine(tokenizer, [tool_call_text("execute_bash", command="sleep 1")])


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def kill_9(server: ServerProcess) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)  # the server's own process group: no chance to clean up
    server.process.wait()


async def test_routing_fills_replicas_of_different_sizes_evenly_and_skips_dead_ones(fakes) -> None:  # type: ignore[no-untyped-def]
    small, large = fakes(2), fakes(6)
    dead = f"http://127.0.0.1:{free_port()}"
    async with Fleet([small.url, dead, large.url], FAST, log=lambda _: None) as fleet:
        assert [r.live for r in fleet.replicas] == [True, False, True]
        assert "ConnectError" in (fleet.by_url(dead).last_failure or "")  # type: ignore[union-attr]
        taken = [await fleet.acquire() for _ in range(8)]
        assert [r.url for r in taken].count(small.url) == 2 and [r.url for r in taken].count(large.url) == 6
        for replica in taken:
            await fleet.release(replica)
        # A preferred replica (the trainer's announced one) is used while it is live and has room.
        assert (await fleet.acquire(prefer=small.url)).url == small.url
        assert (await fleet.acquire(prefer=dead)).url != dead


async def test_no_live_replica_stops_collection_within_patience(tokenizer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    out = tmp_path / "out.jsonl"
    logged: list[str] = []
    started = time.monotonic()
    with pytest.raises(FleetUnavailable) as caught:
        async with Fleet(urls, FAST, log=logged.append) as fleet:
            await collect(
                sleeper(tokenizer),
                urls,
                ["contextrl-samples__minicalc-1"],
                50,
                out,
                EPISODE,
                tokenizer,
                concurrency=8,
                fleet=fleet,
            )
    elapsed = time.monotonic() - started
    assert elapsed < FAST.patience_s + 3, f"took {elapsed:.1f} s for a patience of {FAST.patience_s} s"
    message = str(caught.value)
    assert all(url in message for url in urls) and "ConnectError" in message
    assert any("no env server is live" in line for line in logged)
    assert not out.exists() or not list(read_jsonl(out)), "no masked episodes are written"


@pytest.mark.docker
def test_a_replica_answering_503_to_resets_is_routed_around(
    sample_images,
    sample_tasks,
    tokenizer,
    fakes,  # type: ignore[no-untyped-def]
    tmp_path,
):
    server = start_server(tmp_path)
    refusing = fakes(1000)  # the most free capacity: routing tries it first
    out = tmp_path / "out.jsonl"
    try:

        async def run() -> tuple[Fleet, object]:
            async with Fleet([refusing.url, server.url], FAST, log=lambda _: None) as fleet:
                summary = await collect(
                    sleeper(tokenizer),
                    [],
                    [sample_tasks[0].instance_id],
                    3,
                    out,
                    AgentConfig(max_turns=1, grade_on_truncation=False),
                    tokenizer,
                    concurrency=3,
                    fleet=fleet,
                )
                return fleet, summary

        fleet, summary = asyncio.run(run())
        bad, good = fleet.replicas
        assert summary.infra_failures == 0 and summary.episodes == 3  # type: ignore[attr-defined]
        assert refusing.resets >= 1 and bad.failed >= 1 and "503" in (bad.last_failure or "")
        assert good.served == 3 and bad.served == 0
        assert any("503" in line for line in summary.lines())  # type: ignore[attr-defined]
    finally:
        stop_server(server)


@pytest.mark.docker
def test_kill_one_of_three_mid_collection_then_it_comes_back_then_all_die(
    sample_images,
    sample_tasks,  # type: ignore[no-untyped-def]
    tokenizer,
    tmp_path,
):
    servers = [start_server(tmp_path) for _ in range(3)]
    task_ids = [task.instance_id for task in sample_tasks[:2]]
    logged: list[str] = []
    try:

        async def scenario() -> None:
            async with Fleet([s.url for s in servers], FAST, log=logged.append) as fleet:
                victim = fleet.by_url(servers[2].url)
                assert victim is not None
                # 1. kill -9 of one replica while every replica holds sessions: its episodes are lost, written as
                # infra failures marked `replayed`, and played again on the live replicas (replay is the default).
                out = tmp_path / "first.jsonl"
                collection = asyncio.create_task(
                    collect(sleeper(tokenizer), [], task_ids, 4, out, EPISODE, tokenizer, concurrency=6, fleet=fleet)
                )
                await until(lambda: all(r.open_sessions >= 1 for r in fleet.replicas), 90, "sessions everywhere")
                in_flight_on_victim = victim.in_flight
                kill_9(servers[2])
                summary = await collection
                records = list(read_jsonl(out))
                lost = [r for r in records if is_replayed_attempt(r)]
                rollouts = [r for r in records if not is_replayed_attempt(r)]
                assert 1 <= len(lost) <= in_flight_on_victim, (in_flight_on_victim, summary.lines())
                assert len(records) == 8 + len(lost) and summary.episodes == 8
                # Every task keeps its G rollouts, none of them failed: the group is whole.
                assert sorted(r.episode_id for r in rollouts) == sorted(f"{t}/{g}" for t in task_ids for g in range(4))
                assert not any(r.infra_failure for r in rollouts) and summary.infra_failures == 0
                assert all(r.infra_failure and r.infra_reason and r.infra_reason.startswith("env:") for r in lost)
                assert all(r.episode_id.endswith("@lost0") and r.model_extra["attempt"] == 0 for r in lost)
                replays = {r.model_extra["replay_of"]: r for r in rollouts if "replay_of" in (r.model_extra or {})}
                assert set(replays) == {r.episode_id for r in lost}
                assert all(r.model_extra["attempt"] == 1 for r in replays.values())
                assert summary.lost_replayed == len(lost) == fleet.lost == fleet.replayed
                # `failed` also counts a reset on its way to the victim at the kill (rerouted, not lost).
                assert not victim.live and victim.failed >= len(lost)
                assert any("out of rotation" in line for line in logged)
                assert any("dead" in line for line in summary.lines())
                assert any(f"{len(lost)} replayed" in line for line in summary.lines())
                # A rerun on the same file resumes: nothing is played again, the lost attempts stay as they were.
                resumed = await collect(
                    sleeper(tokenizer), [], task_ids, 4, out, EPISODE, tokenizer, concurrency=6, fleet=fleet
                )
                assert resumed.episodes == 0 and resumed.skipped == 8 and list(read_jsonl(out)) == records

                # 2. The replica comes back (same port, same name): it is probed back in and used again.
                servers[2] = await asyncio.to_thread(start_server, tmp_path, name=servers[2].name, port=servers[2].port)
                await until(lambda: victim.live, 15, "the restarted replica back in rotation")
                served_before = victim.served
                again = await collect(
                    sleeper(tokenizer),
                    [],
                    task_ids[:1],
                    3,
                    tmp_path / "second.jsonl",
                    AgentConfig(max_turns=1, grade_on_truncation=False),
                    tokenizer,
                    concurrency=3,
                    fleet=fleet,
                )
                assert again.infra_failures == 0 and victim.served > served_before

                # 3. Every replica killed: new episodes wait, then a clear error within the patience.
                for server in servers:
                    kill_9(server)
                started = time.monotonic()
                with pytest.raises(FleetUnavailable) as caught:
                    await collect(
                        sleeper(tokenizer),
                        [],
                        task_ids,
                        4,
                        tmp_path / "third.jsonl",
                        EPISODE,
                        tokenizer,
                        concurrency=6,
                        fleet=fleet,
                    )
                assert time.monotonic() - started < FAST.patience_s + 8
                assert all(server.url in str(caught.value) for server in servers)
                assert not (tmp_path / "third.jsonl").exists() or not list(read_jsonl(tmp_path / "third.jsonl"))

        asyncio.run(scenario())
    finally:
        for server in servers:
            stop_server(server)
            for container in server.containers():
                container.remove(force=True)


def test_a_resume_counts_lost_attempts_but_never_as_the_rollout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A collection killed after writing a lost attempt (before its replay ended) resumes that episode: the lost
    attempt is neither the group's rollout nor forgotten (the next attempt is numbered after it, and counts against
    the replay bound)."""
    out = tmp_path / "out.jsonl"
    first = Trajectory(task_id="t", group=0, episode_id="t/0", infra_failure=True, infra_reason="env: ConnectError")
    mark_lost_attempt(first, 0)
    done = Trajectory(task_id="t", group=1, episode_id="t/1", reward=1.0)
    replay = Trajectory(task_id="t", group=2, episode_id="t/2", reward=0.0)
    lost_too = Trajectory(task_id="t", group=2, episode_id="t/2", infra_failure=True)
    mark_lost_attempt(lost_too, 0)
    mark_replay(replay, 1)
    write_jsonl(out, [first, done, lost_too, replay])
    read = list(read_jsonl(out))
    assert [is_replayed_attempt(r) for r in read] == [True, False, True, False]
    assert done_episode_ids(out) == {"t/0@lost0", "t/1", "t/2@lost0", "t/2"}  # "t/0" is not done: it is resumed
    assert lost_attempts(out) == {"t/0": 1, "t/2": 1}
    assert read[3].model_extra == {"attempt": 1, "replay_of": "t/2@lost0"}
    from trainer.run import rollouts_for_batch  # the trainer's batch takes the rollouts, never a lost attempt

    assert [r.episode_id for r in rollouts_for_batch(read)] == ["t/1", "t/2"]


def test_collect_cli_stops_with_a_clear_error_when_no_env_server_answers(tmp_path):  # type: ignore[no-untyped-def]
    """`python -m agent.collect` with every --env-url down: exit status 1 within --patience, stderr naming each
    server and its last failure, no episodes written."""
    from tests.conftest import ROOT

    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.collect",
            *(a for url in urls for a in ("--env-url", url)),
            "--engine",
            "openai",
            "--engine-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--tasks",
            "contextrl-samples__minicalc-1",
            "--group-size",
            "20",
            "--out",
            str(out),
            "--patience",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: no env server answered for 2 s" in proc.stderr and "Traceback" not in proc.stderr
    assert all(f"{url}: dead" in proc.stderr for url in urls), proc.stderr[-3000:]
    assert not out.exists() or not list(read_jsonl(out))
    assert time.monotonic() - started < 60


def test_trainer_finishes_on_full_groups_when_one_of_two_env_servers_dies(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    """`trainer.run` with two env servers, one killed with `kill -9` while it holds an episode: the run finishes,
    the lost attempts are in rollouts.jsonl (marked), and every step trains on full groups (G rollouts per task)."""
    import httpx

    from tests.trainer.test_run import _config
    from trainer.run import train

    for k in range(2):
        (tmp_path / f"s{k}").mkdir()
    servers = [start_server(tmp_path / f"s{k}", "--max-sessions", "8") for k in range(2)]
    try:
        config = _config(tmp_path, "fleet", 3)
        config.env_urls = [server.url for server in servers]
        config.tasks_per_step, config.group_size, config.agent.max_turns, config.success_eval_episodes = 4, 2, 3, 0
        config.announce_next_step = False
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["result"] = train(config, log=lambda *_: None)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        victim = servers[1]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and thread.is_alive():
            # an open session (reset done, episode under way), not one still starting: a reset cut by the kill is
            # only retried elsewhere, and would lose nothing
            try:
                if metric_sum(victim.url, "envserver_sessions_active", timeout=2) >= 1:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        killed_while_running = thread.is_alive()
        kill_9(victim)
        thread.join(600)
        assert killed_while_running, "the run ended before the victim held a session"
        assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
        out = tmp_path / "fleet"
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2, 3]
        rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
        lost = [r for r in rollouts if r.get("replayed")]
        summary = [
            (
                r["task_id"],
                r.get("weights_version"),
                r["infra_failure"],
                r.get("replayed"),
                r.get("attempt"),
                r.get("error"),
            )
            for r in rollouts
        ]
        assert lost and all(r["infra_failure"] for r in lost), ("the kill cut no episode", summary)
        assert sum(r.get("lost_replayed", 0) for r in rows[1:]) == len(lost)
        kept = [r for r in rollouts if not r.get("replayed")]
        per_step: dict[int, dict[str, int]] = {}
        for record in kept:
            counts = per_step.setdefault(record["weights_version"], {})
            counts[record["task_id"]] = counts.get(record["task_id"], 0) + 1
        assert sorted(per_step) == [0, 1, 2]
        assert all(list(counts.values()) == [2] * 4 for counts in per_step.values()), per_step
        assert all(not r["infra_failure"] for r in kept)
    finally:
        for server in servers:
            if server.process.poll() is None:
                stop_server(server)
        for server in servers:
            for container in server.containers():
                container.remove(force=True)


def drain_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m envserver drain ARGS`, its output captured."""
    from tests.conftest import ROOT

    command = [sys.executable, "-m", "envserver", "drain", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.docker
def test_a_draining_replica_finishes_its_episodes_and_gets_no_new_resets(
    sample_images,
    sample_tasks,
    tokenizer,
    tmp_path,  # type: ignore[no-untyped-def]
):
    """`POST /v1/drain` on one of two replicas mid-collection: its running episodes end normally (nothing is lost or
    replayed), it creates no session after the drain, the fleet reports it `draining` (not dead, no failure), and
    after `DELETE /v1/drain` it is probed back into the rotation and used again. The `drain` CLI waits and undoes."""
    from envserver.client import AsyncEnvClient, EnvServerError

    servers = [start_server(tmp_path) for _ in range(2)]
    task_ids = [task.instance_id for task in sample_tasks[:2]]
    logged: list[str] = []
    try:

        async def scenario() -> None:
            async with Fleet([s.url for s in servers], FAST, log=logged.append) as fleet:
                drained = fleet.by_url(servers[1].url)
                assert drained is not None
                out = tmp_path / "drain.jsonl"
                collection = asyncio.create_task(
                    collect(sleeper(tokenizer), [], task_ids, 4, out, EPISODE, tokenizer, concurrency=4, fleet=fleet)
                )
                await until(lambda: drained.open_sessions >= 1, 90, "a session on the replica to drain")
                async with AsyncEnvClient(servers[1].url) as client:
                    state = await client.drain()
                    assert state.draining and state.sessions >= 1
                    # A reset already on its way when the drain began may still open its session; count from when
                    # none of ours is on its way there (every later one is refused).
                    await until(lambda: drained.in_flight == drained.open_sessions, 60, "resets on their way")
                    created_at_drain = metric_sum(servers[1].url, "envserver_sessions_created_total")
                    health = await client.health()
                    assert health.status == "draining" and health.draining
                    with pytest.raises(EnvServerError) as refused:
                        await client.reset(task_ids[0])
                    assert refused.value.status == 503 and refused.value.type == "draining"
                    assert "draining" in refused.value.message and "another env server" in refused.value.message
                    # The CLI: still running sessions after a 1 s wait is exit status 1, and says how many.
                    cli = await asyncio.to_thread(drain_cli, servers[1].url, "--wait", "1")
                    assert cli.returncode == 1 and "session(s) running" in cli.stdout, cli.stdout + cli.stderr
                summary = await collection
                records = list(read_jsonl(out))
                assert summary.episodes == 8 and summary.infra_failures == 0 and len(records) == 8
                assert fleet.lost == 0 and not any(is_replayed_attempt(r) for r in records)
                assert metric_sum(servers[1].url, "envserver_sessions_created_total") == created_at_drain, (
                    "the draining replica created a session"
                )
                assert drained.state == "draining" and drained.failed == 0 and drained.served >= 1
                assert any("draining" in line for line in logged)
                assert any("1 draining" in line for line in summary.lines())
                # The drain ends: probed back in, and new episodes go there again.
                cli = await asyncio.to_thread(drain_cli, servers[1].url, "--undo")
                assert cli.returncode == 0 and "in rotation" in cli.stdout, cli.stdout + cli.stderr
                await until(lambda: drained.live, 15, "the undrained replica back in rotation")
                served = drained.served
                again = await collect(
                    sleeper(tokenizer),
                    [],
                    task_ids,
                    2,
                    tmp_path / "again.jsonl",
                    AgentConfig(max_turns=1, grade_on_truncation=False),
                    tokenizer,
                    concurrency=4,
                    fleet=fleet,
                )
                assert again.infra_failures == 0 and drained.served > served

        asyncio.run(scenario())
    finally:
        for server in servers:
            stop_server(server)
            for container in server.containers():
                container.remove(force=True)


@pytest.mark.docker
def test_sigterm_drains_until_the_last_episode_ends_and_a_second_sigterm_stops_at_once(
    sample_images,
    sample_tasks,
    tmp_path,  # type: ignore[no-untyped-def]
):
    """SIGTERM to `envserver serve`: /healthz and resets answer 503 `draining`, the running episode goes on step by
    step, and the server exits by itself once it ends, removing every container. A second SIGTERM while an episode
    runs stops the server at once (and still removes its containers)."""
    from envserver.client import EnvClient, EnvServerError

    task_id = sample_tasks[0].instance_id
    for case in ("episode_ends", "second_sigterm"):
        (tmp_path / case).mkdir()
        server = start_server(tmp_path / case, "--drain-grace-s", "120")
        try:
            with EnvClient(server.url, retries=0) as client:
                session = client.reset(task_id).session_id
                server.process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while not client.health().draining:
                    assert time.monotonic() < deadline, "no drain after SIGTERM"
                    time.sleep(0.1)
                with pytest.raises(EnvServerError) as refused:
                    client.reset(task_id)
                assert refused.value.status == 503 and refused.value.type == "draining"
                time.sleep(1.0)
                assert server.process.poll() is None, "the server exited with an episode running"
                step = client.step(session, "execute_bash", {"command": "echo still-here"})
                assert step.observation.startswith("still-here")
                if case == "episode_ends":
                    assert client.step(session, "finish").terminated
                    client.close_session(session)
                else:
                    server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=30)  # both: a prompt exit (TimeoutExpired fails the test)
            assert server.containers() == [], f"{case}: containers left behind"
        finally:
            stop_server(server)
            for container in server.containers():
                container.remove(force=True)
