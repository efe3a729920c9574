"""`python -m envserver validate`: does each task instance grade as published — gold patch 1, empty patch 0?

A task set is only worth training on when its grades mean something. For each instance the gold patch (the row's
`patch`) and the empty patch are graded K times each through the server's own grading path
(`SessionManager.grade_patch`: the same backend, limits, image resolution and eval scripts as `serve`), with the
grade cache off so that every run is a real one. Each instance gets one status (`ValidationStatus`: which, and in
what order they are checked, is envserver/validation_status.py).

The report (`envserver.wire.ValidationReport`, versioned) is what `serve --validated FILE` reads; this module writes
and reads its file, runs the validation and is the command (progress bar, periodic saves, the tables of
envserver/validation_tables.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from envserver.config import ServerConfig
from envserver.image_names import candidate_images
from envserver.metrics import Metrics
from envserver.sandbox.base import SandboxBackend
from envserver.sessions import SessionManager
from envserver.tasks import TaskInstance
from envserver.validation_status import STATUSES, classify, python_version, stops_early, summarize
from envserver.validation_tables import print_report
from envserver.wire import VALIDATION_FORMAT_VERSION, GradeReport, InstanceValidation, ValidationReport


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


# --- running ----------------------------------------------------------------------------------------------------


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
        if stops_early(gold[-1]):
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
