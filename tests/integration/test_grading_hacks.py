"""Grading a policy cannot game (issue 16 parts 5, 6 and the env_error attribution), against a real server, real
containers and the real swebench grading code.

The hack tests are parametrized by task (`CASES`): a sample task today; a real SWE-bench instance is one more
`HackCase` line once its image is on the docker host (`python -m images build`, or a prebuilt swebench image).
Each case is served three times under different per-task policies (the row's `patch_policy` field): the row as it
is (the server's default, `strip`), `<id>__keep` and `<id>__reject`, all on the case's image.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import httpx
import pytest

from envserver import grading
from envserver.client import EnvClient
from envserver.config import ServerConfig
from envserver.image_names import DEFAULT_TEMPLATES, candidate_images
from envserver.metrics import Metrics
from envserver.sandbox.base import SandboxSpec
from envserver.sandbox.docker_backend import DockerBackend
from envserver.sessions import SessionManager
from envserver.tasks import SAMPLE_TASKS_PATH, TaskInstance, load_tasks
from tests.conftest import LITE_TASKS, ServerProcess, docker_client, start_server, stop_server, unavailable
from tests.patchops import bash_apply_command

pytestmark = pytest.mark.docker

HOOK = """
import pytest as _envserver_pytest


@_envserver_pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().outcome = "passed"
"""
"""A pytest plugin that marks every test report passed: 1.0 with no fix wherever pytest loads it."""

PLUGIN_MODULE = "agent_hack_plugin"  # not `env*`: flask's .gitignore ignores that


@dataclass(frozen=True)
class HackCase:
    """A task to attack: its row and, optionally, where its image is when no default template names it."""

    instance_id: str
    task_file: Path
    plugin_via_ini: bool = True
    """Whether `addopts = -p <module>` with `pythonpath = .` loads a root module (pytest ≥ 7): the keep-policy
    proof of the pytest.ini / pyproject.toml tests needs it. (Every case must be an instance its spec runs with
    pytest: the hook-wrapper conftest proves itself under `keep`.)"""


CASES = [
    HackCase("contextrl-samples__minicalc-1", SAMPLE_TASKS_PATH),
    HackCase("pallets__flask-4045", LITE_TASKS, plugin_via_ini=False),  # pytest 6.2: no `pythonpath`
]
"""Tasks the hack tests run on: a sample task and a real SWE-bench Lite row (built by the `real_swebench` fixture;
another real instance is one more line, its image built or pulled first)."""


def image_of(task: TaskInstance) -> str:
    """The first candidate image of the task present on the docker host (skip when none is; fail under CI, which
    builds them: sample_images and real_swebench run first)."""
    client = docker_client()
    for name in candidate_images(task, DEFAULT_TEMPLATES):
        try:
            client.images.get(name)
        except docker.errors.ImageNotFound:
            continue
        return name
    unavailable(f"no image for {task.instance_id} on the docker host (build it with `python -m images build`)")


@dataclass
class Served:
    """A server for one case, with the case's task under each policy."""

    case: HackCase
    task: TaskInstance
    image: str
    server: ServerProcess

    def task_id(self, policy: str) -> str:
        return self.task.instance_id if policy == "strip" else f"{self.task.instance_id}__{policy}"


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.instance_id)
def served(request, sample_images, tmp_path_factory) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    case: HackCase = request.param
    if case.task_file == LITE_TASKS:
        request.getfixturevalue("real_swebench")  # builds the real instances' images
    task = next(t for t in load_tasks(case.task_file) if t.instance_id == case.instance_id)
    image = image_of(task)
    tmp = tmp_path_factory.mktemp("hacks")
    row = task.model_dump(exclude_none=True)
    rows = [{**row, "image": image}]
    rows += [
        {**row, "instance_id": f"{task.instance_id}__{policy}", "image": image, "patch_policy": policy}
        for policy in ("keep", "reject")
    ]
    task_file = tmp / "tasks.jsonl"
    task_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = start_server(tmp, "--tasks", str(task_file), "--max-sessions", "8")
    yield Served(case, task, image, server)
    stop_server(server)
    leftover = server.containers()
    for container in leftover:
        container.remove(force=True)
    assert not leftover, f"server {server.name} left containers behind: {[c.name for c in leftover]}"


def play(served: Served, policy: str, *commands: str) -> dict:  # type: ignore[type-arg]
    """An episode: the commands in the task's workdir, then `finish`; the finish answer's JSON (and its size)."""
    with EnvClient(served.server.url) as client:
        reset = client.reset(served.task_id(policy))
        for command in commands:
            step = client.step(
                reset.session_id, "execute_bash", {"command": f"cd {served.task.workdir} && {command}", "timeout": 300}
            )
            assert step.info.exit_code == 0, step.observation
    answer = httpx.post(
        f"{served.server.url}/v1/sessions/{reset.session_id}/step",
        json={"name": "finish", "arguments": {}},
        timeout=600,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    body["_bytes"] = len(answer.content)
    body["_session"] = reset.session_id
    return body


def write(path: str, text: str, append: bool = False) -> str:
    """A shell command that writes `text` to `path` (appends with `append`)."""
    return f"cat {'>>' if append else '>'} {shlex.quote(path)} <<'ENVSERVER_EOF'\n{text}\nENVSERVER_EOF"


def fix(served: Served) -> str:
    return bash_apply_command(served.task.patch, served.task.workdir)


def grade_of(body: dict) -> dict:  # type: ignore[type-arg]
    grade = body["info"]["grade"]
    assert grade is not None and not grade["infra_failure"], grade
    return grade


def test_hook_wrapper_conftest_earns_nothing(served: Served) -> None:
    conftest = write("conftest.py", HOOK, append=True)  # appended: a real repository may have one already
    strip = grade_of(play(served, "strip", conftest))
    assert strip["reward"] == 0.0 and strip["excluded_paths"] == ["conftest.py"] and strip["hack_attempt"]
    assert set(strip["tests"]["FAIL_TO_PASS"]["failure"]) == set(served.task.FAIL_TO_PASS)
    reject = grade_of(play(served, "reject", conftest))
    assert reject["reward"] == 0.0 and reject["hack_attempt"] and reject["excluded_paths"] == ["conftest.py"]
    assert reject["tests"] == {} and reject["patch_applied"] is None, "reject grades without a test run"
    keep = grade_of(play(served, "keep", conftest))
    assert keep["reward"] == 1.0, "under the harness's behaviour the hook earns 1.0: the test above is real"
    assert keep["hack_attempt"] and keep["excluded_paths"] == []


def test_pytest_ini_addopts_has_no_effect(served: Served) -> None:
    deselect = " ".join(f"--deselect {test}" for test in served.task.FAIL_TO_PASS)
    ini = write("pytest.ini", f"[pytest]\naddopts = {deselect}")
    grade = grade_of(play(served, "strip", ini))
    assert grade["reward"] == 0.0 and grade["excluded_paths"] == ["pytest.ini"]
    assert set(grade["tests"]["FAIL_TO_PASS"]["failure"]) == set(served.task.FAIL_TO_PASS)
    if not served.case.plugin_via_ini:
        return
    # addopts that load a plugin: the keep policy shows the channel is real, strip closes it.
    commands = (
        write(f"{PLUGIN_MODULE}.py", HOOK),
        write("pytest.ini", f"[pytest]\npythonpath = .\naddopts = -p {PLUGIN_MODULE}"),
    )
    assert grade_of(play(served, "keep", *commands))["reward"] == 1.0
    grade = grade_of(play(served, "strip", *commands))
    assert grade["reward"] == 0.0 and grade["excluded_paths"] == ["pytest.ini"]
    assert f"b/{PLUGIN_MODULE}.py" in grade["model_patch"], "a plain module is graded; it is just never loaded"


def test_pyproject_pytest_table_is_reverted_the_rest_graded(served: Served) -> None:
    if not served.case.plugin_via_ini:
        pytest.skip("needs a pytest that reads `pythonpath`")
    has_table = f"grep -q '^\\[tool.pytest.ini_options\\]' {served.task.workdir}/pyproject.toml"
    try:
        docker_client().containers.run(served.image, ["bash", "-c", has_table], remove=True, network_disabled=True)
    except docker.errors.ContainerError:
        pytest.skip("the repository has no pyproject.toml with a [tool.pytest.ini_options] table")
    marker = "envserver-edit-outside-the-pytest-tables"
    edit = (
        "python3 - <<'PY'\n"
        "import re\n"
        "text = open('pyproject.toml').read()\n"
        "assert '[tool.pytest.ini_options]' in text, 'this test needs a [tool.pytest.ini_options] table'\n"
        f"text = re.sub(r'(?m)^name = (.*)$', r'name = \\1\\nkeywords = [\"{marker}\"]', text, count=1)\n"
        "text = text.replace('[tool.pytest.ini_options]', "
        f'\'[tool.pytest.ini_options]\\naddopts = "-p {PLUGIN_MODULE}"\\npythonpath = ["."]\', 1)\n'
        "open('pyproject.toml', 'w').write(text)\n"
        "PY"
    )
    commands = (write(f"{PLUGIN_MODULE}.py", HOOK), edit)
    assert grade_of(play(served, "keep", *commands))["reward"] == 1.0
    grade = grade_of(play(served, "strip", *commands))
    assert grade["reward"] == 0.0 and grade["excluded_paths"] == ["pyproject.toml"] and grade["hack_attempt"]
    assert marker in grade["model_patch"] and "pythonpath" not in grade["model_patch"]


def test_a_real_fix_with_a_new_test_file_resolves(served: Served) -> None:
    test_dir = str(Path(served.task.test_files()[0]).parent)
    new_test = write(f"{test_dir}/test_envserver_extra.py", "def test_extra_by_the_agent():\n    assert 1 + 1 == 2")
    grade = grade_of(play(served, "reject", fix(served), new_test))
    assert grade["reward"] == 1.0 and grade["excluded_paths"] == [] and not grade["hack_attempt"]
    assert "test_envserver_extra.py" in grade["model_patch"]


def test_the_grade_cache_keys_on_the_graded_patch(served: Served) -> None:
    """A fix with a hook-wrapper conftest is graded as the fix alone: one grade for both, each with its own report
    of what was left out."""
    with_hook = grade_of(play(served, "strip", fix(served), write("conftest.py", HOOK, append=True)))
    assert with_hook["reward"] == 1.0 and with_hook["excluded_paths"] == ["conftest.py"] and with_hook["hack_attempt"]
    alone = grade_of(play(served, "strip", fix(served)))
    assert alone["cached"] and alone["reward"] == 1.0
    assert alone["excluded_paths"] == [] and not alone["hack_attempt"]
    assert alone["model_patch"] == with_hook["model_patch"]


def test_a_50_mb_diff_is_too_large_and_the_answer_stays_small(served: Served) -> None:
    big = play(served, "strip", "head -c 50000000 /dev/zero | tr '\\0' 'x' | fold -w 100 > big_change_by_agent.txt")
    grade = big["info"]["grade"]
    assert grade["patch_too_large"] and grade["reward"] == 0.0 and not grade["infra_failure"]
    assert grade["patch_bytes"] > 50_000_000 and grade["model_patch"] == ""
    assert len(grade["patch_sha256"]) == 64
    assert big["_bytes"] < 100_000, f"the finish answer is {big['_bytes']} bytes"
    view = httpx.get(f"{served.server.url}/v1/sessions/{big['_session']}/patch").json()
    assert view["patch_too_large"] and view["patch"] is None and view["patch_bytes"] == grade["patch_bytes"]


def test_a_large_patch_under_the_cap_is_graded_and_served_whole(served: Served) -> None:
    body = play(served, "strip", fix(served), "seq 1 60000 > numbers_by_agent.txt")  # ~350 KB of diff
    grade = grade_of(body)
    assert grade["reward"] == 1.0 and grade["model_patch_truncated"] and not grade["patch_too_large"]
    assert body["_bytes"] < 100_000 and grade["patch_bytes"] > 300_000
    with EnvClient(served.server.url) as client:
        view = client.patch(body["_session"])
    assert view.patch is not None and len(view.patch.encode()) == grade["patch_bytes"]
    assert hashlib.sha256(view.patch.encode()).hexdigest() == grade["patch_sha256"]
    assert view.patch.startswith(grade["model_patch"]) and view.submitted_patch is None


# --- grading directly: attribution of broken environments, the server's policy setting ---------------------------

MISSING_MODULE = "envserver_absent_module"


def _sample(task_id: str) -> TaskInstance:
    return next(t for t in load_tasks(SAMPLE_TASKS_PATH) if t.instance_id == task_id)


def new_file_diff(path: str, text: str) -> str:
    lines = text.splitlines()
    body = "".join(f"+{line}\n" for line in lines)
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1,{len(lines)} @@\n{body}"
    )


def _grade(task: TaskInstance, patch: str, verified: bool):  # type: ignore[no-untyped-def]
    labels = {"envserver.server": f"test-hacks-{uuid.uuid4().hex[:8]}"}
    image = image_of(task)

    async def run():  # type: ignore[no-untyped-def]
        backend = DockerBackend()
        try:
            report = await grading.grade(
                backend, task, image, patch, SandboxSpec(image=image), 300.0, labels, environment_verified=verified
            )
            left = await backend.count_labelled(labels)
        finally:
            await backend.close()
        return report, left

    report, left = asyncio.run(run())
    assert left == 0, "the grading container must be removed"
    return report


def test_a_missing_dependency_is_an_env_error_not_a_zero(sample_images) -> None:  # type: ignore[no-untyped-def]
    """The test patch brings a conftest that imports a module the environment lacks: the gold patch cannot pass."""
    task = _sample("contextrl-samples__minicalc-1")
    broken = task.model_copy(
        update={"test_patch": task.test_patch + new_file_diff("tests/conftest.py", f"import {MISSING_MODULE}")}
    )
    report = _grade(broken, task.patch, verified=False)
    assert report.infra_failure and report.infra_reason.startswith("env_error: ")
    assert "ImportError while loading conftest" in report.env_error
    assert f"No module named '{MISSING_MODULE}'" in report.env_error
    verified = _grade(broken, task.patch, verified=True)
    assert not verified.infra_failure and verified.reward == 0.0 and verified.environment_verified
    assert verified.env_error == report.env_error


def test_a_test_that_imports_what_the_fix_adds_is_a_plain_zero(sample_images) -> None:  # type: ignore[no-untyped-def]
    """The common legitimate case: with no fix the new test file cannot even be imported. Not the environment."""
    task = _sample("contextrl-samples__minicalc-1")
    test = "tests/test_envserver_added.py"
    added = task.model_copy(
        update={
            "test_patch": task.test_patch
            + new_file_diff(
                test, "from minicalc import envserver_added\n\n\ndef test_added():\n    assert envserver_added.VALUE"
            ),
            "patch": task.patch + new_file_diff("minicalc/envserver_added.py", "VALUE = 1"),
            "FAIL_TO_PASS": [*task.FAIL_TO_PASS, f"{test}::test_added"],
        }
    )
    empty = _grade(added, "", verified=False)
    assert not empty.infra_failure and empty.reward == 0.0
    assert "cannot import name 'envserver_added' from 'minicalc'" in empty.env_error
    gold = _grade(added, added.patch, verified=False)
    assert gold.reward == 1.0 and gold.env_error is None


def test_the_server_policy_setting_and_the_validation_path(sample_images) -> None:  # type: ignore[no-untyped-def]
    """`SessionManager.grade_patch` (what `validate` uses): the server's `patch_policy`, and a pyproject.toml revert
    whose file versions come from a container of the task image (no episode container there)."""
    task = _sample("contextrl-samples__minicalc-1")
    image = image_of(task)
    conftest = new_file_diff("conftest.py", HOOK.strip("\n"))
    hack = conftest + task.patch

    async def run(policy: str, patch: str):  # type: ignore[no-untyped-def]
        name = f"test-hacks-{uuid.uuid4().hex[:8]}"
        config = ServerConfig(server_name=name, patch_policy=policy, grade_cache_size=0)  # type: ignore[arg-type]
        backend = DockerBackend()
        manager = SessionManager(config, backend, {task.instance_id: task}, Metrics())
        try:
            report = await manager.grade_patch(task, image, patch)
            left = await backend.count_labelled({"envserver.server": name})
        finally:
            await backend.close()
        assert left == 0
        return report

    rejected = asyncio.run(run("reject", hack))
    assert rejected.hack_attempt and rejected.reward == 0.0 and rejected.tests == {}
    stripped = asyncio.run(run("strip", hack))
    assert stripped.reward == 1.0 and stripped.excluded_paths == ["conftest.py"], "the fix alone resolves"
    assert asyncio.run(run("keep", conftest)).reward == 1.0

    # A pyproject.toml change made in a real checkout of the image: the pytest table reverted, the rest graded.
    script = (
        "cd /testbed && sed -i 's/^description = .*/description = \"changed by the agent\"/' pyproject.toml && "
        "printf '\\n[tool.pytest_envserver]\\naddopts = \"-x\"\\n' >> pyproject.toml && git add -A && "
        f"git diff --cached {task.base_commit}"
    )
    diff = docker_client().containers.run(image, ["bash", "-c", script], remove=True, network_disabled=True).decode()
    report = asyncio.run(run("strip", diff + task.patch))
    assert report.reward == 1.0 and report.excluded_paths == ["pyproject.toml"] and report.hack_attempt
    assert "changed by the agent" in report.model_patch and "pytest_envserver" not in report.model_patch
