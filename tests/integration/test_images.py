"""The image builder against the real Docker engine: `python -m images build-samples`, then the sample images.

Each image must hold the repository at base_commit in /testbed with a clean work tree, and grading in a
container with networking off must resolve an instance with its gold patch and not without it.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from envserver.image_names import local_image_name
from envserver.tasks import SAMPLE_TASKS_PATH, TaskInstance, load_tasks

pytestmark = pytest.mark.docker

REPO_ROOT = Path(__file__).resolve().parents[2]
TASKS = load_tasks(SAMPLE_TASKS_PATH)
ONE_PER_REPO = list({t.repo: t for t in reversed(TASKS)}.values())


@pytest.fixture(scope="module")
def client(docker_engine):  # type: ignore[no-untyped-def]
    """docker_engine (tests/conftest.py) skips without an engine, and fails under CI (CI=true), which has one."""
    import docker

    return docker.from_env(timeout=120)  # commits and builds may take longer than docker_engine's 60 s


@pytest.fixture(scope="module")
def sample_images(client) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "images", "build-samples"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # a second run has nothing to do
    again = subprocess.run(
        [sys.executable, "-m", "images", "build-samples"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0 and "0 image(s) built" in again.stdout, again.stdout + again.stderr


class Box:
    """A started container with networking off, removed afterwards."""

    def __init__(self, client, image: str) -> None:
        self.container = client.containers.run(
            image, ["sleep", "infinity"], detach=True, network_mode="none", name=f"test-images-{uuid.uuid4().hex[:10]}"
        )

    def sh(self, script: str) -> tuple[int, str]:
        code, out = self.container.exec_run(["bash", "-c", script], workdir="/testbed")
        return code, out.decode("utf-8", "replace")

    def put(self, files: dict[str, str], dest: str = "/tmp") -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        assert self.container.put_archive(dest, buf.getvalue())

    def close(self) -> None:
        self.container.remove(force=True)


@pytest.fixture
def box_factory(client, sample_images) -> Iterator:
    boxes: list[Box] = []

    def make(image: str) -> Box:
        boxes.append(Box(client, image))
        return boxes[-1]

    yield make
    for box in boxes:
        box.close()


@pytest.mark.parametrize("task", TASKS, ids=[t.instance_id for t in TASKS])
def test_every_instance_has_its_tag(client, sample_images, task: TaskInstance) -> None:
    image = client.images.get(local_image_name(task.instance_id))
    assert image.labels["org.contextrl.base-commit"] == task.base_commit


@pytest.mark.parametrize("task", ONE_PER_REPO, ids=[t.repo for t in ONE_PER_REPO])
def test_testbed_is_at_base_commit_and_clean(box_factory, task: TaskInstance) -> None:
    box = box_factory(local_image_name(task.instance_id))
    code, out = box.sh("pwd; git rev-parse HEAD; git status --porcelain; git diff " + task.base_commit)
    assert code == 0, out
    assert out.split("\n")[:2] == ["/testbed", task.base_commit]
    assert out.split("\n")[2:] == [""], f"work tree not clean:\n{out}"
    code, out = box.sh("git config user.name && git config user.email && git log --oneline | wc -l")
    assert code == 0 and out.split() == ["envserver", "envserver@localhost", "1"], out


def _grade(box: Box, task: TaskInstance, patch: str) -> str:
    from swebench.harness.grading import get_eval_tests_report, get_resolution_status
    from swebench.harness.log_parsers import parse_log_pytest

    box.put({"test.diff": task.test_patch, "model.diff": patch})
    apply_model = "git apply /tmp/model.diff && " if patch else ""
    assert task.eval is not None
    test_cmd = " ".join([task.eval.test_cmd, *task.test_files()])
    code, log = box.sh(
        f"set -e; git apply /tmp/test.diff && {apply_model}"
        f"echo '>>>>> Start Test Output'; {test_cmd} || true; echo '>>>>> End Test Output'"
    )
    assert code == 0, log
    status = parse_log_pytest(log, None)
    gold = {"FAIL_TO_PASS": task.FAIL_TO_PASS, "PASS_TO_PASS": task.PASS_TO_PASS}
    return get_resolution_status(get_eval_tests_report(status, gold))


@pytest.mark.parametrize("task", TASKS, ids=[t.instance_id for t in TASKS])
def test_gold_patch_resolves_in_a_container(box_factory, task: TaskInstance) -> None:
    image = local_image_name(task.instance_id)
    assert _grade(box_factory(image), task, task.patch) == "RESOLVED_FULL"
    assert _grade(box_factory(image), task, "") == "RESOLVED_NO"
