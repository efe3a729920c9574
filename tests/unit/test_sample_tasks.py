"""The sample tasks: tasks.jsonl in sync with images/samples, deterministic base commits, and test lists that hold.

Needs git and the host's Python only (no Docker): each instance's tests run with pytest in temporary copies of
its repository and are graded with swebench's own parser and report functions.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks
from images import sample_tasks

INSTANCES = sample_tasks.load_instances()
IDS = [i.instance_id for i in INSTANCES]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Every sample repository as a deterministic git work tree, with its commit hash."""
    root = tmp_path_factory.mktemp("sample-repos")
    return {name: (root / name, sample_tasks.init_repo(name, root / name)) for name in sample_tasks.repo_names()}


def _resolution(status: dict[str, str], instance: sample_tasks.SampleInstance) -> str:
    from swebench.harness.grading import get_eval_tests_report, get_resolution_status

    gold = {"FAIL_TO_PASS": instance.meta["FAIL_TO_PASS"], "PASS_TO_PASS": instance.meta["PASS_TO_PASS"]}
    return get_resolution_status(get_eval_tests_report(status, gold))


def test_enough_instances_over_two_repositories() -> None:
    assert len(INSTANCES) >= 6
    assert len({i.repo_name for i in INSTANCES}) >= 2
    # some instances change an existing test file, some add a new one
    new_files = ["new file mode" in i.test_patch for i in INSTANCES]
    assert any(new_files) and not all(new_files)


def test_tasks_file_is_in_sync_with_the_sources() -> None:
    expected = sample_tasks.expected_tasks_text()
    actual = SAMPLE_TASKS_PATH.read_text(encoding="utf-8")
    assert actual == expected, "run `python -m images sample-tasks` to regenerate envserver/samples/tasks.jsonl"


def test_tasks_file_validates() -> None:
    tasks = load_tasks(SAMPLE_TASKS_PATH)
    assert [t.instance_id for t in tasks] == IDS
    for task in tasks:
        assert task.repo.startswith("contextrl-samples/")
        assert task.version == "0.1" and task.image is None and task.workdir == "/testbed"
        assert task.eval is not None and task.eval.log_parser == "pytest"
        assert task.eval.test_cmd == "python3 -m pytest -rA -p no:cacheprovider"
        assert task.FAIL_TO_PASS and set(task.FAIL_TO_PASS).isdisjoint(task.PASS_TO_PASS)
        # the grader runs only the files the test patch touches: every listed test must live in one of them
        files = set(task.test_files())
        assert all(t.split("::")[0] in files for t in task.FAIL_TO_PASS + task.PASS_TO_PASS)


def test_base_commit_is_the_deterministic_commit(repos: dict[str, tuple[Path, str]]) -> None:
    by_repo = {t.repo.split("/")[1]: t.base_commit for t in load_tasks(SAMPLE_TASKS_PATH)}
    assert {name: commit for name, (_, commit) in repos.items()} == by_repo
    # and a second build, elsewhere, gives the same hash
    assert sample_tasks.base_commits() == by_repo


def test_repo_work_tree_is_clean(repos: dict[str, tuple[Path, str]]) -> None:
    for path, commit in repos.values():
        assert sample_tasks.git(["status", "--porcelain"], path) == ""
        assert sample_tasks.git(["rev-parse", "HEAD"], path).strip() == commit
        assert "100755" not in sample_tasks.git(["ls-tree", "-r", "HEAD"], path)


def test_statements_do_not_leak_the_fix() -> None:
    for instance in INSTANCES:
        added = [line[1:].strip() for line in instance.patch.splitlines() if line.startswith("+") and line[1:].strip()]
        code = [line for line in added if not line.startswith(("+++", "#"))]
        assert not any(line in instance.problem_statement for line in code if len(line) > 12), instance.instance_id


@pytest.mark.parametrize("instance", INSTANCES, ids=IDS)
def test_gold_patch_resolves_and_empty_patch_does_not(
    instance: sample_tasks.SampleInstance, repos: dict[str, tuple[Path, str]]
) -> None:
    repo_dir = repos[instance.repo_name][0]
    result = sample_tasks.verify_instance(instance, repo_dir)
    assert result.ok, result.problems
    assert _resolution(result.before, instance) == "RESOLVED_NO"
    assert _resolution(result.after, instance) == "RESOLVED_FULL"


@pytest.mark.slow  # ~6 s CPU: left out of scripts/test.sh --fast
def test_each_gold_patch_fixes_only_its_own_instance(repos: dict[str, tuple[Path, str]]) -> None:
    for fix, target in itertools.permutations(INSTANCES, 2):
        if fix.repo_name != target.repo_name:
            continue
        status = sample_tasks.test_status(repos[target.repo_name][0], target.test_patch, fix.patch)
        assert _resolution(status, target) == "RESOLVED_NO", f"{fix.instance_id}'s patch resolves {target.instance_id}"


def test_meta_files_are_readable_json() -> None:
    for directory in sorted(sample_tasks.INSTANCES_DIR.iterdir()):
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        assert meta["instance_id"] == directory.name
