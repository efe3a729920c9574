"""`python -m agent.collect` and `python -m agent.eval` end to end: the tiny model on the `hf` engine, two real env
servers (sessions spread over both), a resumed rerun that skips what is done."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from agent.trajectory import read_jsonl
from tests.conftest import ROOT, start_server, stop_server

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    from agent.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-cli") / "model")


def _sessions_created(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(r"^envserver_sessions_created_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def test_collect_and_eval_cli(sample_images, sample_tasks, tiny_model_dir, tmp_path):  # type: ignore[no-untyped-def]
    servers = [start_server(tmp_path), start_server(tmp_path)]
    out = tmp_path / "runs.jsonl"
    tasks = ",".join(task.instance_id for task in sample_tasks[:2])
    common = [
        "--engine",
        "hf",
        "--model",
        str(tiny_model_dir),
        "--tasks",
        tasks,
        "--out",
        str(out),
        "--max-turns",
        "2",
        "--concurrency",
        "4",
    ]
    env_args = [arg for server in servers for arg in ("--env-url", server.url)]
    try:
        first = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent.collect",
                *env_args,
                *common,
                "--group-size",
                "2",
                "--max-tokens-per-turn",
                "16",
                "--seed",
                "3",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert first.returncode == 0, first.stderr[-3000:]
        assert "resolve rate" in first.stdout and "engine" in first.stdout
        records = list(read_jsonl(out))
        assert len(records) == 4 and {r.episode_id for r in records} == {
            f"{t.instance_id}/{g}" for t in sample_tasks[:2] for g in range(2)
        }
        assert all(r.sequences and r.truncation == "max_turns" and not r.infra_failure for r in records)
        assert all(_sessions_created(server.url) >= 1 for server in servers), "sessions must spread over servers"
        # eval with k=2 reuses the finished episodes (resumable) and reports pass@k.
        second = subprocess.run(
            [sys.executable, "-m", "agent.eval", *env_args, *common, "--k", "2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert second.returncode == 0, second.stderr[-3000:]
        assert "4 already done" in second.stdout and "0 new" in second.stdout
        assert "pass@1 = 0.000" in second.stdout and "pass@2 = 0.000" in second.stdout
    finally:
        for server in servers:
            stop_server(server)
