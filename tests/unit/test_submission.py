"""Reading the agent's change: the in-container script run by real bash and git on a real repository."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest

from envserver.submission import Submission, SubmissionError, patch_fields, read_file_versions, read_submission
from envserver.tasks import TaskInstance


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


async def local_exec(argv: list[str], timeout: float, max_bytes: int) -> tuple[int | None, str]:
    """What the runtime's `exec` op does, on this machine: stdout kept up to `max_bytes`."""
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)  # noqa: ASYNC221 - a stand-in
    return proc.returncode, proc.stdout[:max_bytes].decode("utf-8", errors="replace")


@pytest.fixture()
def task(tmp_path: Path) -> TaskInstance:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "tests" / "test_code.py").write_text("def test_x():\n    pass\n")
    (repo / "setup.cfg").write_text("[tool:pytest]\ntestpaths = tests\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    test_patch = (
        "diff --git a/tests/test_code.py b/tests/test_code.py\n--- a/tests/test_code.py\n"
        "+++ b/tests/test_code.py\n@@ -1,2 +1,2 @@\n def test_x():\n-    pass\n+    assert True\n"
    )
    return TaskInstance(
        instance_id="t-1",
        repo="o/r",
        base_commit=git(repo, "rev-parse", "HEAD").strip(),
        problem_statement="p",
        test_patch=test_patch,
        workdir=str(repo),
    )


def test_a_change_is_read_with_its_size_and_hidden_tests_apart(task: TaskInstance) -> None:
    repo = Path(task.workdir)
    (repo / "code.py").write_text("x = 2\n")
    (repo / "tests" / "test_code.py").write_text("def test_x():\n    assert 1\n")
    (repo / "new file.txt").write_text("hello\n")
    change = asyncio.run(read_submission(local_exec, task, 10_000, 60))
    expected = git(repo, "diff", "--cached", "--binary", task.base_commit, "--", ".", ":(exclude)tests/test_code.py")
    assert change.patch == expected and "code.py" in expected and "test_code.py" not in expected
    assert change.size == len(expected.encode()) and change.hidden_paths == ("tests/test_code.py",)
    assert change.sha256 == hashlib.sha256(expected.encode()).hexdigest()


def test_a_change_over_the_cap_is_measured_not_read(task: TaskInstance) -> None:
    repo = Path(task.workdir)
    (repo / "big.txt").write_text("y\n" * 50_000)
    change = asyncio.run(read_submission(local_exec, task, 1000, 60))
    full = git(repo, "diff", "--cached", "--binary", task.base_commit).encode()
    assert change.patch is None and change.size == len(full) > 1000
    assert change.sha256 == hashlib.sha256(full).hexdigest()


def test_no_repository_is_an_error(task: TaskInstance) -> None:
    broken = task.model_copy(update={"workdir": str(Path(task.workdir).parent / "missing")})
    with pytest.raises(SubmissionError, match="exit 90"):
        asyncio.run(read_submission(local_exec, broken, 1000, 60))


def test_file_versions_come_from_base_and_the_index(task: TaskInstance) -> None:
    repo = Path(task.workdir)
    (repo / "setup.cfg").write_text("[tool:pytest]\naddopts = -x\n")
    (repo / "tests" / "setup.cfg").write_text("[tool:pytest]\n")
    asyncio.run(read_submission(local_exec, task, 10_000, 60))  # stages the change, as at the end of an episode
    versions = asyncio.run(read_file_versions(local_exec, task, ["setup.cfg", "tests/setup.cfg"], 60, 10_000))
    assert versions["setup.cfg"].base == "[tool:pytest]\ntestpaths = tests\n"
    assert versions["setup.cfg"].new == "[tool:pytest]\naddopts = -x\n"
    assert versions["tests/setup.cfg"].base is None and versions["tests/setup.cfg"].new == "[tool:pytest]\n"


def test_a_large_patch_is_carried_as_its_head() -> None:
    patch = "".join(f"+line {i}\n" for i in range(10_000))
    small = patch_fields(patch[:100], 1000)
    assert small["model_patch"] == patch[:100] and not small["model_patch_truncated"]
    big = patch_fields(patch, 1000)
    assert big["model_patch_truncated"] and len(big["model_patch"].encode()) <= 1000
    assert big["model_patch"].endswith("\n") and patch.startswith(big["model_patch"])
    assert big["patch_bytes"] == len(patch.encode()) == Submission.of(patch).size
    assert big["patch_sha256"] == Submission.of(patch).sha256
