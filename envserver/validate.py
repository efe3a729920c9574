"""`python -m envserver validate`: does each task instance grade as published — gold patch 1, empty patch 0?

A task set is only worth training on when its grades mean something. For each instance the gold patch (the row's
`patch`) and the empty patch are graded K times each through the server's own grading path
(`SessionManager.grade_patch`: the same backend, limits, image resolution and eval scripts as `serve`), with the
grade cache off so that every run is a real one. Each instance gets one status (`ValidationStatus`, checked in
this order):

- `no_image`: no candidate image on the docker host;
- `env_broken`: a gold run reports `env_error` (the tests could not be collected: ImportError, pytest exit 2/4/5 —
  the log line says why) or an infrastructure failure (`no_test_output`, `test_timeout`, `test_patch_failed`, …);
  also the empty patch's infrastructure failures that a patch cannot cause;
- `flaky`: the gold or the empty patch's outcome differs across the K runs;
- `gold_fails`: the gold patch never resolves (the failing FAIL_TO_PASS / PASS_TO_PASS tests are named);
- `empty_passes`: the empty patch resolves (nothing for an agent to fix);
- `valid`: the gold patch resolves in every run and the empty patch in none.

The report (`envserver.wire.ValidationReport`, versioned) is what `serve --validated FILE` reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from envserver.config import ServerConfig
from envserver.image_names import candidate_images
from envserver.metrics import Metrics
from envserver.sandbox.base import SandboxBackend
from envserver.sessions import SessionManager
from envserver.tasks import TaskInstance
from envserver.wire import (
    VALIDATION_FORMAT_VERSION,
    GradeReport,
    InstanceValidation,
    PatchValidation,
    ValidationReport,
    ValidationStatus,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

STATUSES: tuple[ValidationStatus, ...] = ("valid", "gold_fails", "empty_passes", "flaky", "env_broken", "no_image")
"""Every status, in the order tables list them."""

EMPTY_PATCH_OUTCOMES = ("test_timeout", "container_died")
"""Infrastructure failures of the empty-patch run that the unfixed code itself can cause (a bug that hangs or eats
its memory): they count as "not resolved". Any other failure says nothing about the patch and makes `env_broken`."""

MAX_TESTS_IN_REASON = 5
"""Failing tests a reason names before it says how many more there are."""

_PYTHON_VERSION = re.compile(r"platform \S+ -- Python (\d+\.\d+(?:\.\d+)?)")


class ValidationFileError(ValueError):
    """A validation file that cannot be read or is not a `ValidationReport` this server understands."""


def load_validation(path: str | Path) -> ValidationReport:
    """Read a file written by `python -m envserver validate --out`; anything else raises ValidationFileError."""
    path = Path(path)
    hint = "expected the JSON file `python -m envserver validate --out FILE` writes"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationFileError(f"{path}: cannot read the validation file: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFileError(
            f"{path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); {hint}"
        ) from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise ValidationFileError(f"{path}: no `format_version`: not a validation report; {hint}")
    if data["format_version"] != VALIDATION_FORMAT_VERSION:
        raise ValidationFileError(
            f"{path}: format_version {data['format_version']!r}, but this server reads "
            f"version {VALIDATION_FORMAT_VERSION}; validate again with this version"
        )
    try:
        report = ValidationReport.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors()[:5]
        )
        raise ValidationFileError(f"{path}: not a valid validation report: {problems}") from None
    seen: set[str] = set()
    for entry in report.instances:
        if entry.instance_id in seen:
            raise ValidationFileError(f"{path}: instance {entry.instance_id!r} appears twice")
        seen.add(entry.instance_id)
    return report


def write_report(report: ValidationReport, path: str | Path) -> None:
    """Write the report atomically (a reader never sees half a file, e.g. a server started mid-validation)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- classification -------------------------------------------------------------------------------------------


def env_error_of(report: GradeReport) -> str | None:
    """The grade's `env_error` (the log line of a test run that failed to collect)."""
    return report.env_error


def failed_tests(report: GradeReport) -> tuple[list[str], list[str]]:
    """(FAIL_TO_PASS, PASS_TO_PASS) tests that did not pass; swebench counts a test missing from the log as failed."""
    return (
        report.tests.get("FAIL_TO_PASS", {}).get("failure", []),
        report.tests.get("PASS_TO_PASS", {}).get("failure", []),
    )


def python_version(reports: Sequence[GradeReport]) -> str | None:
    """The Python version pytest's header names in the test output, if any run shows it."""
    for report in reports:
        match = _PYTHON_VERSION.search(report.test_output_tail)
        if match:
            return match.group(1)
    return None


def summarize(reports: Sequence[GradeReport]) -> PatchValidation:
    failed: dict[str, None] = {}
    for report in reports:
        f2p, p2p = failed_tests(report)
        failed.update(dict.fromkeys([*f2p, *p2p]))
    applied = [r.patch_applied for r in reports if r.patch_applied is not None]
    return PatchValidation(
        resolved=[r.resolved for r in reports],
        failed_tests=list(failed),
        durations_s=[round(r.duration_s, 3) for r in reports],
        patch_applied=all(applied) if applied else None,
        env_error=next((e for e in map(env_error_of, reports) if e), None),
        infra_reason=next((r.infra_reason for r in reports if r.infra_failure), None),
        excluded_paths=list(dict.fromkeys(path for r in reports for path in r.excluded_paths)),
    )


def last_log_line(output: str) -> str | None:
    """The last line of a test run's output that is not a shell trace (`set -x` prints `+ command`): usually the
    error that ended it."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line and not line.startswith("+"):
            return line[:300]
    return None


def _infra_reason(report: GradeReport) -> str:
    reason = report.infra_reason or "unknown infrastructure failure"
    line = last_log_line(report.test_output_tail)
    return f"{reason}; last output: {line}" if line else reason


def _name_tests(kind: str, tests: list[str]) -> str:
    shown = ", ".join(tests[:MAX_TESTS_IN_REASON])
    more = f" (+{len(tests) - MAX_TESTS_IN_REASON} more)" if len(tests) > MAX_TESTS_IN_REASON else ""
    return f"{kind} failing: {shown}{more}"


def _failing(report: GradeReport) -> str:
    f2p, p2p = failed_tests(report)
    parts = [_name_tests(kind, tests) for kind, tests in (("FAIL_TO_PASS", f2p), ("PASS_TO_PASS", p2p)) if tests]
    return "; ".join(parts) or "no failing test named (the log had no test results)"


def classify(gold: Sequence[GradeReport], empty: Sequence[GradeReport]) -> tuple[ValidationStatus, str | None]:
    """The status and its reason from the gold and empty runs (see the module docstring for the order)."""
    for report in gold:
        error = env_error_of(report)
        # A resolved gold run ran the instance's tests, whatever else its log says (pytest's own test suite prints
        # the collection errors of the sessions it tests).
        if error and not report.resolved:
            return "env_broken", f"gold patch: {error}"
        if report.infra_failure:
            status: ValidationStatus = (
                "no_image" if (report.infra_reason or "").startswith("image_missing") else "env_broken"
            )
            return status, f"gold patch: {_infra_reason(report)}"
    gold_proves_env = bool(gold) and all(r.resolved for r in gold)
    for report in empty:
        reason = report.infra_reason or ""
        # With the fix the tests ran and passed, so a run that cannot collect without it (pytest-dev__pytest-7168:
        # the bug is an INTERNALERROR) failed for want of the fix: a 0, as a verified server grades it.
        if gold_proves_env and reason.startswith("env_error"):
            continue
        if report.infra_failure and not reason.startswith(EMPTY_PATCH_OUTCOMES):
            return "env_broken", f"empty patch: {_infra_reason(report)}"
    gold_resolved = [r.resolved for r in gold]
    empty_resolved = [r.resolved for r in empty]
    if len(set(gold_resolved)) > 1 or len(set(empty_resolved)) > 1:
        parts = []
        if len(set(gold_resolved)) > 1:
            failing = next(r for r in gold if not r.resolved)
            parts.append(f"gold patch resolved {sum(gold_resolved)} of {len(gold)} runs ({_failing(failing)})")
        if len(set(empty_resolved)) > 1:
            parts.append(f"empty patch resolved {sum(empty_resolved)} of {len(empty)} runs")
        return "flaky", "; ".join(parts)
    if gold and not any(gold_resolved):
        if any(r.patch_applied is False for r in gold):
            return "gold_fails", "the gold patch does not apply"
        excluded = list(dict.fromkeys(path for r in gold for path in r.excluded_paths))
        policy_note = (
            (
                f" — the patch policy left out its change to {', '.join(excluded)} (a row's `patch_policy: "
                "keep` grades it as the harness does)"
            )
            if excluded
            else ""
        )
        return "gold_fails", (f"gold patch does not resolve: {_failing(gold[0])}{_network_hint(gold[0])}{policy_note}")
    if empty and all(empty_resolved):
        f2p = empty[0].tests.get("FAIL_TO_PASS", {})
        if not f2p.get("success") and not f2p.get("failure"):
            return "empty_passes", "the empty patch resolves: the row lists no FAIL_TO_PASS tests"
        return "empty_passes", "the empty patch resolves: the FAIL_TO_PASS tests pass with no fix"
    return "valid", None


# --- running ----------------------------------------------------------------------------------------------------


def _stops_early(report: GradeReport) -> bool:
    """A gold run that shows the environment broken: further runs cannot change the status."""
    return report.infra_failure or (bool(env_error_of(report)) and not report.resolved)


def _network_hint(report: GradeReport) -> str:
    """Why a gold run failed when its tests wanted the network: they cannot pass in an offline grading container."""
    if report.network_error:
        return (
            f" — the tests try to reach the network, which grading turns off (cannot be valid offline): "
            f"{report.network_error}"
        )
    return ""


async def validate_instance(manager: SessionManager, task: TaskInstance, repeat: int) -> InstanceValidation:
    """Grade the gold and the empty patch of one instance `repeat` times each and classify the outcome."""
    entry = InstanceValidation(instance_id=task.instance_id, repo=task.repo, version=task.version, status="valid")
    image = await manager.containers.resolve_image(task)
    if image is None:
        tried = ", ".join(candidate_images(task, manager.config.image_templates))
        return entry.model_copy(
            update={
                "status": "no_image",
                "reason": f"no image on the docker host (tried: {tried}); build it with `python -m images build`",
            }
        )
    gold: list[GradeReport] = []
    empty: list[GradeReport] = []
    for _ in range(repeat):
        gold.append(await manager.grade_patch(task, image, task.patch))
        if _stops_early(gold[-1]):
            break
        empty.append(await manager.grade_patch(task, image, ""))
    status, reason = classify(gold, empty)
    return entry.model_copy(
        update={
            "image": image,
            "status": status,
            "reason": reason,
            "gold": summarize(gold),
            "empty": summarize(empty) if empty else None,
            "python_version": python_version([*gold, *empty]),
        }
    )


def build_report(
    entries: Sequence[InstanceValidation], *, created_at: str, task_files: Sequence[str], repeat: int, complete: bool
) -> ValidationReport:
    counts = Counter(entry.status for entry in entries)
    return ValidationReport(
        created_at=created_at,
        task_files=list(task_files),
        repeat=repeat,
        complete=complete,
        counts={status: counts[status] for status in STATUSES if counts[status]},
        instances=list(entries),
    )


async def run_validation(
    config: ServerConfig,
    backend: SandboxBackend,
    tasks: Sequence[TaskInstance],
    *,
    jobs: int = 1,
    repeat: int = 1,
    on_done: Callable[[InstanceValidation], None] | None = None,
) -> list[InstanceValidation]:
    """Validate `tasks`, `jobs` instances at a time; `on_done` is called as each finishes. Entries come back in the
    order of `tasks`. The grade cache is turned off whatever `config` says; containers are labelled with
    `config.server_name` and all removed at the end."""
    if jobs < 1 or repeat < 1:
        raise ValueError(f"jobs and repeat must be ≥ 1 (got jobs={jobs}, repeat={repeat})")
    config = config.model_copy(update={"grade_cache_size": 0})
    manager = SessionManager(config, backend, {task.instance_id: task for task in tasks}, Metrics())
    semaphore = asyncio.Semaphore(jobs)

    async def one(task: TaskInstance) -> InstanceValidation:
        async with semaphore:
            try:
                entry = await validate_instance(manager, task, repeat)
            except Exception as exc:  # noqa: BLE001 - one instance's engine error must not end the whole run
                entry = InstanceValidation(
                    instance_id=task.instance_id,
                    repo=task.repo,
                    version=task.version,
                    status="env_broken",
                    reason=f"validation could not grade: {type(exc).__name__}: {exc}",
                )
        if on_done is not None:
            on_done(entry)
        return entry

    try:
        return list(await asyncio.gather(*(one(task) for task in tasks)))
    finally:
        await backend.remove_labelled(manager.containers.owner_labels)


# --- the command ------------------------------------------------------------------------------------------------


def summary_table(report: ValidationReport) -> Table:
    """Instances per repository and status, with a total row."""
    from rich.table import Table

    shown = [status for status in STATUSES if report.counts.get(status)] or ["valid"]
    table = Table(title=f"Validation of {len(report.instances)} instance(s), {report.repeat} run(s) per patch")
    table.add_column("repository", no_wrap=True)
    for status in shown:
        table.add_column(status, justify="right")
    table.add_column("total", justify="right")
    per_repo: dict[str, Counter[str]] = {}
    for entry in report.instances:
        per_repo.setdefault(entry.repo, Counter())[entry.status] += 1
    for repo in sorted(per_repo):
        counts = per_repo[repo]
        table.add_row(repo, *(str(counts[s] or "") for s in shown), str(sum(counts.values())))
    table.add_section()
    table.add_row("all", *(str(report.counts.get(s, 0)) for s in shown), str(len(report.instances)))
    return table


def problems_table(report: ValidationReport) -> Table | None:
    """One row per instance that is not valid, with its reason; None when every instance is valid."""
    from rich.table import Table

    bad = [entry for entry in report.instances if entry.status != "valid"]
    if not bad:
        return None
    table = Table(title="Not valid")
    table.add_column("instance", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for entry in bad:
        table.add_row(entry.instance_id, entry.status, entry.reason or "")
    return table


def print_report(report: ValidationReport, console: Console) -> None:
    console.print(summary_table(report))
    problems = problems_table(report)
    if problems is not None:
        console.print(problems)


def validate_command(
    config: ServerConfig,
    tasks: Sequence[TaskInstance],
    *,
    jobs: int,
    repeat: int,
    out: Path | None,
    progress: bool = True,
    save_every_s: float = 10.0,
) -> ValidationReport:
    """What `python -m envserver validate` does once the tasks are loaded: run with a progress bar (on stderr),
    rewrite `out` as instances finish (`complete: false` until the end), print the tables (on stdout)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from envserver.sandbox.docker_backend import DockerBackend

    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    task_files = [str(path) for path in config.tasks]
    config = config.model_copy(update={"server_name": f"validate-{uuid.uuid4().hex[:10]}"})
    done: dict[str, InstanceValidation] = {}
    last_save = time.monotonic()
    bar = Progress(
        TextColumn("validating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    bar_task = bar.add_task("", total=len(tasks))

    def partial() -> ValidationReport:
        entries = [done[task.instance_id] for task in tasks if task.instance_id in done]
        return build_report(entries, created_at=created_at, task_files=task_files, repeat=repeat, complete=False)

    def on_done(entry: InstanceValidation) -> None:
        nonlocal last_save
        done[entry.instance_id] = entry
        counts = Counter(e.status for e in done.values())
        bar.update(bar_task, advance=1, description=" ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s]))
        if out is not None and time.monotonic() - last_save >= save_every_s:
            write_report(partial(), out)
            last_save = time.monotonic()

    async def main() -> list[InstanceValidation]:
        backend = DockerBackend(config.sandbox.docker_url, max_workers=config.sandbox.max_workers)
        try:
            return await run_validation(config, backend, tasks, jobs=jobs, repeat=repeat, on_done=on_done)
        finally:
            await backend.close()

    try:
        with bar:
            entries = asyncio.run(main())
    except BaseException:
        if out is not None and done:
            write_report(partial(), out)  # what finished is kept, marked incomplete
        raise
    report = build_report(entries, created_at=created_at, task_files=task_files, repeat=repeat, complete=True)
    if out is not None:
        write_report(report, out)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log or a pipe: keep ids and reasons on one line where they fit
    print_report(report, console)
    return report
