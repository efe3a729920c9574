"""Task instances: the SWE-bench / SWE-Gym schema as a typed model, and loaders for JSON, JSONL and parquet.

A record that does not fit the schema is reported with the file, the record's position (and instance_id when it
has one) and the offending field, so a user with a 2,000-line task file can find the bad line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from envserver.patch_policy import PatchPolicy
from envserver.specs import ResolvedSpec, SpecTable

SAMPLE_TASKS_PATH = Path(__file__).parent / "samples" / "tasks.jsonl"
"""The sample tasks that ship with the project (two small repositories the project wrote itself)."""

DEFAULT_WORKDIR = "/testbed"
"""Where SWE-bench / SWE-Gym images keep the repository; our own images follow the same convention."""


class EvalSpec(BaseModel):
    """How to run an instance's tests, for instances that the swebench package's spec tables do not know.

    Real SWE-bench / SWE-Gym instances leave this out: their test command and log parser come from the spec tables
    (envserver/specs: the harnesses' MAP_REPO_VERSION_TO_SPECS and MAP_REPO_TO_PARSER, as data).
    """

    model_config = ConfigDict(extra="forbid")

    test_cmd: str
    """Shell command that runs the tests; the test files the test_patch touches are appended to it."""
    log_parser: str = "pytest"
    """Name of a swebench log parser: `pytest` → `swebench.harness.log_parsers.parse_log_pytest`, etc."""
    pre_test: list[str] = Field(default_factory=list)
    """Shell lines run before the test command in the grading container (environment activation, etc.)."""
    timeout_s: float = 600.0
    """Wall-clock limit for the whole test run; past it the grade is an infra failure, never a plain 0."""


class TaskInstance(BaseModel):
    """One SWE-bench / SWE-Gym task instance. Unknown fields are kept (SWE-Gym and SWE-smith add their own)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    instance_id: str = Field(min_length=1)
    """Unique id, `owner__repo-NUMBER` in SWE-bench."""
    repo: str = Field(min_length=1)
    """`owner/name` of the repository."""
    base_commit: str = Field(min_length=4)
    """Commit the episode starts from; the agent's patch is a diff against it."""
    patch: str = ""
    """The gold patch (never shown to the agent)."""
    test_patch: str = ""
    """The hidden tests, applied only in the grading container."""
    problem_statement: str
    """The issue text the agent sees."""
    FAIL_TO_PASS: list[str] = Field(default_factory=list)
    """Tests that fail before the gold patch and pass after it."""
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    """Tests that pass before and after."""
    version: str | None = None
    """Repository version key into swebench's spec tables."""
    environment_setup_commit: str | None = None
    """Commit whose environment the image was built from."""
    hints_text: str | None = None
    """Comments on the issue before the fix (not shown by default)."""
    created_at: str | None = None
    """When the fixing pull request was created."""
    image: str | None = None
    """Explicit image name; when absent the server's image-name templates are tried."""
    workdir: str = DEFAULT_WORKDIR
    """Repository directory inside the image."""
    eval: EvalSpec | None = None
    """How to run the tests, for instances outside swebench's spec tables (our sample tasks)."""
    patch_policy: PatchPolicy | None = None
    """This task's grading of changes to test infrastructure (strip | keep | reject); None: the server's."""

    _spec_table: SpecTable | None = PrivateAttr(default=None)
    """The spec table the task was loaded with (`--specs` files included); None: the bundled tables."""

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _parse_test_list(cls, value: Any) -> Any:
        # SWE-bench on the hub stores these lists as JSON strings; SWE-Gym as real lists.
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of test names: {exc}") from None
        if value is None:
            return []
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # Some dumps store versions as floats (0.2 → "0.2"); swebench's tables key them by string.
        return None if value is None else str(value)

    @property
    def spec_table(self) -> SpecTable:
        """The spec table this task was loaded with, else the bundled one."""
        return self._spec_table if self._spec_table is not None else SpecTable.bundled()

    def spec(self) -> ResolvedSpec | None:
        """This row's repository/version spec (envserver/specs), or None when the table has none."""
        return self.spec_table.lookup(self.repo, self.version)

    def test_files(self) -> list[str]:
        """Paths of the files the hidden test_patch creates or modifies (repo-relative)."""
        return patch_paths(self.test_patch)


class TaskFileError(ValueError):
    """A task file could not be read, or one of its records does not fit the schema."""


_DIFF_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.MULTILINE)


def patch_paths(patch: str) -> list[str]:
    """Repo-relative paths a unified git diff touches, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in _DIFF_HEADER.finditer(patch):
        seen.setdefault(match.group(2), None)
    return list(seen)


def _read_records(path: Path) -> Iterable[tuple[str, Any]]:
    """Yield (position label, raw record) pairs from a .json, .jsonl or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow is in the envserver extra
            raise TaskFileError(f"{path}: reading parquet needs pyarrow ({exc})") from None
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise TaskFileError(f"{path}: not a readable parquet file: {exc}") from None
        for index, row in enumerate(table.to_pylist()):
            yield f"row {index}", row
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskFileError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); task files are JSON, JSONL or parquet"
        ) from None
    except OSError as exc:
        raise TaskFileError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskFileError(f"{path}: line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFileError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict):
        data = data.get("instances", [data]) if "instance_id" not in data else [data]
    if not isinstance(data, list):
        raise TaskFileError(f"{path}: expected a list of task records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"record {index}", record


def _check_runnable(task: TaskInstance) -> str | None:
    """Why the server could not write this task's eval script or choose its log parser, or None."""
    extra = task.model_extra or {}
    if task.eval is not None:
        return None
    if extra.get("eval_script"):
        if extra.get("log_parser") or task.spec_table.repo(task.repo) is not None:
            return None
        return (
            f"the record has an `eval_script` but no `log_parser`, and no spec names a parser for repo "
            f"{task.repo!r}: add `log_parser` to the record, or a `--specs` file entry for the repo"
        )
    if task.spec() is not None:
        return None
    return (
        f"repo {task.repo!r} version {task.version!r} has no spec, and the record has neither `eval` nor "
        "`eval_script`: add an entry for this repo/version to a `--specs` file (format: envserver/specs/__init__.py), "
        "or give the record an `eval` object (test_cmd, log_parser)"
    )


def load_tasks(path: str | Path, specs: SpecTable | None = None) -> list[TaskInstance]:
    """Load and validate every task of a file; the first bad record raises TaskFileError naming file/record/field.

    `specs`: the spec table (bundled + `--specs` files; default: the bundled tables). A classic row (no `eval`, no
    `eval_script`) whose repo/version it does not know is rejected here, not when its episode is graded.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such task file")
    tasks: list[TaskInstance] = []
    seen: set[str] = set()
    for where, record in _read_records(path):
        if not isinstance(record, dict):
            raise TaskFileError(f"{path}: {where}: expected an object, got {type(record).__name__}")
        label = f"{where} ({record['instance_id']})" if isinstance(record.get("instance_id"), str) else where
        try:
            task = TaskInstance.model_validate(record)
        except ValidationError as exc:
            problems = "; ".join(
                f"field '{'.'.join(str(p) for p in err['loc']) or '<record>'}': {err['msg']}" for err in exc.errors()
            )
            raise TaskFileError(f"{path}: {label}: {problems}") from None
        if task.instance_id in seen:
            raise TaskFileError(f"{path}: {label}: field 'instance_id': duplicate id {task.instance_id!r}")
        task._spec_table = specs
        problem = _check_runnable(task)
        if problem:
            raise TaskFileError(f"{path}: {label}: {problem}")
        seen.add(task.instance_id)
        tasks.append(task)
    if not tasks:
        raise TaskFileError(f"{path}: the file holds no task records")
    return tasks


def load_task_sets(paths: Iterable[str | Path], specs: SpecTable | None = None) -> dict[str, TaskInstance]:
    """Load several task files into one id → task map; an id in two files is an error."""
    merged: dict[str, TaskInstance] = {}
    for path in paths:
        for task in load_tasks(path, specs):
            if task.instance_id in merged:
                raise TaskFileError(f"{path}: instance_id {task.instance_id!r} is also defined in an earlier file")
            merged[task.instance_id] = task
    return merged
