"""`python -m images …`: build the base image, per-instance images and the sample tasks' images."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from envserver.tasks import SAMPLE_TASKS_PATH, TaskFileError, TaskInstance, load_tasks
from images import sample_tasks
from images.base import DEFAULT_BASE_TAG, DEFAULT_MIRROR, BaseImageError

if TYPE_CHECKING:
    from docker import DockerClient

    from envserver.specs import SpecTable

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

_ERRORS: tuple[type[Exception], ...] = (TaskFileError, BaseImageError, sample_tasks.SampleError)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _builder_errors() -> tuple[type[Exception], ...]:
    from images.builder import BuildError
    from images.docker_util import DockerBuildError

    return (*_ERRORS, BuildError, DockerBuildError)


@app.command()
def base(
    tag: Annotated[str, typer.Option(help="Tag of the base image.")] = DEFAULT_BASE_TAG,
    force: Annotated[bool, typer.Option(help="Rebuild even when the tag exists.")] = False,
    mirror: Annotated[str, typer.Option(help="Debian archive for the offline debootstrap.")] = DEFAULT_MIRROR,
    registry_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for `docker pull debian:bookworm-slim` before bootstrapping.")
    ] = 20.0,
) -> None:
    """Build the base image: on debian:bookworm-slim if a registry answers, else debootstrap + docker import."""
    from images.base import ensure_base
    from images.docker_util import connect

    try:
        ensure_base(connect(), tag, force=force, mirror=mirror, registry_timeout_s=registry_timeout, log=typer.echo)
    except _builder_errors() as exc:
        raise _fail(str(exc)) from None


@app.command()
def build(
    tasks: Annotated[Path, typer.Option(help="Task file (.json, .jsonl or .parquet).")],
    repo_source: Annotated[
        list[str] | None,
        typer.Option(help="owner/name=PATH_OR_URL: where to clone a repository from (cloned on the host); repeatable."),
    ] = None,
    source_template: Annotated[
        str | None,
        typer.Option(help="Source for repositories without --repo-source, e.g. '/mirrors/{owner}__{name}'."),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            help="Opt-in: copy this CA bundle into the images and set PIP_CERT, for pip behind a TLS proxy. "
            "The images then trust that CA.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    instance: Annotated[
        list[str] | None, typer.Option(help="Build only this instance id; repeatable (default: all).")
    ] = None,
    install: Annotated[
        list[str] | None,
        typer.Option(help="Shell line run in /testbed for tasks without an 'install' field; repeatable."),
    ] = None,
    base_image: Annotated[
        str, typer.Option(help="Image to build rows with an 'install' or 'eval' field on; built first when missing.")
    ] = DEFAULT_BASE_TAG,
    specs: Annotated[
        list[Path] | None, typer.Option(help="Extra spec-table file (YAML/JSON, see envserver/specs); repeatable.")
    ] = None,
    python_fallback: Annotated[
        bool,
        typer.Option(
            help="Build rows whose spec asks for a Python that is not available offline with the nearest one "
            "(recorded in the image's labels); without it such rows are refused with the version named."
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="Rebuild (without layer cache) even when the tags are current.")] = False,
    verbose: Annotated[bool, typer.Option(help="Show the whole build output, not only the steps.")] = False,
) -> None:
    """Build one image per task instance (tag envserver/sweb.eval.<instance_id>:latest) with the repo in /testbed.

    Classic SWE-bench / SWE-Gym rows (no 'install' or 'eval' field) get the official layered layout from their
    repository/version spec: base (Python) → env (dependencies, shared) → instance. For those the CA bundle is
    mounted during the build only (default: the host's pip CA, $PIP_CERT, when set), never copied into the image.
    """
    from envserver.specs import SpecFileError, SpecTable
    from images.builder import parse_repo_sources
    from images.docker_util import connect

    try:
        table = SpecTable.load(specs or [])
        selected = _selected_tasks(tasks, table, instance)
        own = [t for t in selected if t.eval is not None or (t.model_extra or {}).get("install") is not None]
        classic = [t for t in selected if t not in own]
        sources = parse_repo_sources(repo_source or [])
        client = connect()
        shared = _SharedOptions(source_template, ca_bundle, force=force, verbose=verbose)
        if own:
            _build_own_rows(client, own, sources, install or (), base_image, shared)
        if classic:
            _build_classic_rows(client, classic, table, sources, python_fallback, shared)
    except SpecFileError as exc:
        raise _fail(str(exc)) from None
    except _builder_errors() as exc:
        raise _fail(str(exc)) from None


def _selected_tasks(tasks: Path, table: SpecTable, instance: list[str] | None) -> list[TaskInstance]:
    """The task file's rows, only those named by `--instance` when given (an unknown id is an error)."""
    selected = load_tasks(tasks, table)
    if instance:
        unknown = set(instance) - {t.instance_id for t in selected}
        if unknown:
            raise _fail(f"not in {tasks}: {', '.join(sorted(unknown))}")
        selected = [t for t in selected if t.instance_id in instance]
    return selected


@dataclass(frozen=True)
class _SharedOptions:
    """`build` options that apply to both kinds of rows."""

    source_template: str | None
    ca_bundle: Path | None
    force: bool
    verbose: bool


def _build_own_rows(
    client: DockerClient,
    rows: list[TaskInstance],
    sources: dict[str, str],
    install: Sequence[str],
    base_image: str,
    shared: _SharedOptions,
) -> None:
    """Rows with their own 'install' or 'eval' field: one image each on the base image (built first when missing)."""
    from images.base import ensure_base
    from images.builder import build_groups, group_tasks

    ensure_base(client, base_image, log=typer.echo)
    build_groups(
        client,
        group_tasks(rows, install),
        sources=sources,
        source_template=shared.source_template,
        base_image=base_image,
        ca_bundle=shared.ca_bundle,
        force=shared.force,
        verbose=shared.verbose,
        log=typer.echo,
    )


def _build_classic_rows(
    client: DockerClient,
    rows: list[TaskInstance],
    table: SpecTable,
    sources: dict[str, str],
    python_fallback: bool,
    shared: _SharedOptions,
) -> None:
    """Classic rows: the official layered images from their specs, the CA bundle (default: the host's pip CA)
    mounted for the build only; a summary, and exit 1 when any row failed."""
    from images.official import build_official

    results = build_official(
        client,
        rows,
        table,
        sources,
        source_template=shared.source_template,
        ca_bundle=shared.ca_bundle or _host_pip_ca(),
        python_fallback=python_fallback,
        force=shared.force,
        verbose=shared.verbose,
        log=typer.echo,
    )
    failed = [r for r in results if r.action == "failed"]
    built = sum(len(r.instance_ids) for r in results if r.action != "failed")
    typer.echo(f"{built} instance(s) ready, {sum(len(r.instance_ids) for r in failed)} failed")
    for result in failed:
        typer.echo(f"  FAILED {', '.join(result.instance_ids)}: {(result.error or '').splitlines()[0]}")
    if failed:
        raise typer.Exit(1)


def _host_pip_ca() -> Path | None:
    """The CA bundle the host's pip uses ($PIP_CERT), if any: mounted into build runs only."""
    import os

    value = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    return Path(value) if value and Path(value).is_file() else None


@app.command("build-samples")
def build_samples(
    base_image: Annotated[str, typer.Option(help="Image to build on; built first when missing.")] = DEFAULT_BASE_TAG,
    force: Annotated[
        bool, typer.Option(help="Rebuild the sample images (not the base) even when their tags are current.")
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Show the whole build output, not only the steps.")] = False,
) -> None:
    """Build the base image (if missing) and the sample tasks' images from images/samples; idempotent."""
    from images.base import ensure_base
    from images.builder import BuildGroup, build_groups, group_tasks
    from images.docker_util import connect

    try:
        tasks = load_tasks(SAMPLE_TASKS_PATH)
        client = connect()
        ensure_base(client, base_image, log=typer.echo)
        with contextlib.ExitStack() as stack:

            def source(group: BuildGroup) -> str:
                name = group.repo.split("/", 1)[1]
                path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sample-repo-"))) / name
                commit = sample_tasks.init_repo(name, path)
                if commit != group.base_commit:
                    raise sample_tasks.SampleError(
                        f"{group.repo}: the sample sources give commit {commit}, but {SAMPLE_TASKS_PATH} says "
                        f"{group.base_commit}; run `python -m images sample-tasks`"
                    )
                return str(path)

            plans = build_groups(
                client,
                group_tasks(tasks),
                sources=source,
                base_image=base_image,
                force=force,
                verbose=verbose,
                log=typer.echo,
            )
        built = sum(p.action == "build" for p in plans)
        typer.echo(f"{len(tasks)} sample instances ready ({built} image(s) built)")
    except _builder_errors() as exc:
        raise _fail(str(exc)) from None


@app.command("sample-tasks")
def sample_tasks_cmd(
    check: Annotated[bool, typer.Option(help="Only check that the file is current; exit 1 when it is not.")] = False,
    output: Annotated[Path, typer.Option(help="Where the tasks file goes.")] = SAMPLE_TASKS_PATH,
) -> None:
    """Regenerate envserver/samples/tasks.jsonl from images/samples (instances + deterministic repo commits)."""
    try:
        text = sample_tasks.expected_tasks_text()
    except _ERRORS as exc:
        raise _fail(str(exc)) from None
    current = output.read_text(encoding="utf-8") if output.is_file() else None
    if check:
        if current != text:
            raise _fail(f"{output} is out of date; run `python -m images sample-tasks`")
        typer.echo(f"{output} is up to date")
        return
    if current == text:
        typer.echo(f"{output} unchanged ({text.count(chr(10))} tasks)")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output} ({text.count(chr(10))} tasks)")


@app.command("verify-samples")
def verify_samples(
    instance: Annotated[
        list[str] | None, typer.Option(help="Verify only this instance id; repeatable (default: all).")
    ] = None,
    update_meta: Annotated[
        bool, typer.Option(help="Write the measured FAIL_TO_PASS / PASS_TO_PASS into each meta.json.")
    ] = False,
) -> None:
    """Run each sample instance's tests on the host (no Docker): before and after the gold patch."""
    try:
        results = sample_tasks.verify_all(instance or ())
    except _ERRORS as exc:
        raise _fail(str(exc)) from None
    failed = 0
    for result in results:
        if update_meta:
            sample_tasks.update_meta(result)
            result.problems = [p for p in result.problems if "_TO_PASS is" not in p]
        status = "ok" if result.ok else "FAILED"
        typer.echo(
            f"{result.instance_id}: {status} "
            f"({len(result.fail_to_pass)} fail-to-pass, {len(result.pass_to_pass)} pass-to-pass)"
        )
        for problem in result.problems:
            typer.echo(f"  - {problem}")
        failed += not result.ok
    if failed:
        raise typer.Exit(1)
