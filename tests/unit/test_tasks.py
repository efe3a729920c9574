"""Task loading: JSON, JSONL and parquet; bad records are named by file, record and field."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envserver.tasks import SAMPLE_TASKS_PATH, TaskFileError, load_task_sets, load_tasks, patch_paths

RECORD = {
    "instance_id": "owner__repo-1",
    "repo": "owner/repo",
    "base_commit": "abc1234",
    "problem_statement": "it breaks",
    "FAIL_TO_PASS": '["tests/test_a.py::test_x"]',
    "PASS_TO_PASS": [],
    "version": 1.2,
    "test_patch": "diff --git a/tests/test_a.py b/tests/test_a.py\n--- a/tests/test_a.py\n",
    "created_at": "2024-01-01",
    "some_swe_gym_field": {"kept": True},
    "eval": {"test_cmd": "pytest -rA"},  # owner/repo is in no spec table: without it the row is rejected at load
}


def test_json_jsonl_parquet_give_the_same_task(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "t.json").write_text(json.dumps([RECORD]))
    (tmp_path / "t.jsonl").write_text(json.dumps(RECORD) + "\n\n")
    flat = {**RECORD, "some_swe_gym_field": "kept"}
    pq.write_table(pa.Table.from_pylist([flat]), tmp_path / "t.parquet")
    loaded = [load_tasks(tmp_path / name)[0] for name in ("t.json", "t.jsonl", "t.parquet")]
    for task in loaded:
        assert task.FAIL_TO_PASS == ["tests/test_a.py::test_x"]  # JSON string decoded
        assert task.version == "1.2"
        assert task.test_files() == ["tests/test_a.py"]
    assert loaded[0].model_extra["some_swe_gym_field"] == {"kept": True}


def test_bad_record_names_file_record_and_field(tmp_path):  # type: ignore[no-untyped-def]
    bad = {**RECORD, "instance_id": "owner__repo-2"}
    del bad["problem_statement"]
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TaskFileError) as excinfo:
        load_tasks(path)
    message = str(excinfo.value)
    assert str(path) in message and "line 2" in message and "owner__repo-2" in message
    assert "problem_statement" in message


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"instance_id": "a", ', "line 1: invalid JSON"),
        (json.dumps({**RECORD, "FAIL_TO_PASS": "[not json"}), "FAIL_TO_PASS"),
        (json.dumps({**RECORD, "base_commit": 5}), "base_commit"),
        ("[1, 2]", "expected an object"),
        ("", "no task records"),
    ],
)
def test_bad_files(tmp_path, content, expected):  # type: ignore[no-untyped-def]
    path = tmp_path / "tasks.jsonl"
    path.write_text(content)
    with pytest.raises(TaskFileError) as excinfo:
        load_tasks(path)
    assert expected in str(excinfo.value)


def test_duplicates_and_missing_file(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(RECORD) + "\n")
    with pytest.raises(TaskFileError, match="duplicate id"):
        load_tasks(path)
    with pytest.raises(TaskFileError, match="no such task file"):
        load_tasks(tmp_path / "missing.json")
    one = tmp_path / "one.json"
    one.write_text(json.dumps(RECORD))
    with pytest.raises(TaskFileError, match="also defined"):
        load_task_sets([one, one])


def test_patch_paths():  # type: ignore[no-untyped-def]
    patch = (
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
        "diff --git a/new/y.py b/new/y.py\nnew file mode 100644\n"
    )
    assert patch_paths(patch) == ["x.py", "new/y.py"]


def test_sample_tasks_load():  # type: ignore[no-untyped-def]
    tasks = load_tasks(SAMPLE_TASKS_PATH)
    assert len(tasks) >= 6 and len({t.repo for t in tasks}) >= 2
    for task in tasks:
        assert task.eval is not None and task.FAIL_TO_PASS and task.patch and task.test_patch
