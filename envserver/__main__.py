"""`python -m envserver serve|validate|drain|demo`. Settings: defaults < `--config FILE` < `--set KEY=VALUE` < the
flags (envserver/settings.py, the rule every command of the project follows)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from envserver.config import ServerConfig
from envserver.settings import SettingsError, load_settings

app = typer.Typer(add_completion=False, help="SWE-Gym / SWE-bench tasks as multi-turn tool environments over HTTP.")

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML file of ServerConfig fields.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="KEY=VALUE over the config file (repeatable; dotted keys: sandbox.memory=4g)."),
]


def load_config(config_file: Path | None, overrides: list[str], flags: dict[str, Any]) -> ServerConfig:
    """Defaults < ENVSERVER_AUTH_TOKEN < the YAML file < `--set` < flags (None: not given). Raises SettingsError."""
    token = os.environ.get("ENVSERVER_AUTH_TOKEN")
    return load_settings(ServerConfig, config_file, overrides, flags, base={"auth_token": token} if token else None)


def _config_or_exit(config_file: Path | None, overrides: list[str], flags: dict[str, Any]) -> ServerConfig:
    """load_config, or exit 2 with what is wrong (file, override, field) instead of a traceback."""
    try:
        return load_config(config_file, overrides, flags)
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    tasks: Annotated[
        list[Path] | None,
        typer.Option("--tasks", help="Task file(s): JSON, JSONL or parquet. Default: the bundled sample tasks."),
    ] = None,
    specs: Annotated[
        list[Path] | None,
        typer.Option(
            "--specs",
            help="Spec file(s), YAML or JSON (repeatable): repositories/versions for classic rows, read after the "
            "bundled SWE-bench and SWE-Gym tables (format: envserver/specs/__init__.py).",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default 127.0.0.1; others need a token).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000).")] = None,
    server_name: Annotated[
        str | None,
        typer.Option(
            help="Name on this server's containers; a restart with the same name removes the containers a crashed "
            "predecessor left."
        ),
    ] = None,
    auth_token: Annotated[
        str | None, typer.Option(help="Bearer token clients must send (or ENVSERVER_AUTH_TOKEN).")
    ] = None,
    allow_unauthenticated: Annotated[
        bool | None,
        typer.Option(
            "--allow-unauthenticated",
            help="Listen off loopback without a token (only behind a loopback-only port mapping).",
        ),
    ] = None,
    max_sessions: Annotated[int | None, typer.Option(help="Concurrent session cap (429 beyond it).")] = None,
    warm_pool_size: Annotated[int | None, typer.Option(help="Started containers kept ready per task image.")] = None,
    warm_pool_task: Annotated[
        list[str] | None,
        typer.Option(help="Only these tasks' images get a warm pool (repeatable; default: every task)."),
    ] = None,
    session_ttl_s: Annotated[float | None, typer.Option(help="Idle seconds before a session is closed.")] = None,
    default_max_steps: Annotated[int | None, typer.Option(help="Steps per episode before it is truncated.")] = None,
    grade_cache_size: Annotated[
        int | None,
        typer.Option(help="Grades kept so identical patches of a task are graded once (0: grade every episode)."),
    ] = None,
    network: Annotated[
        bool | None,
        typer.Option("--network/--no-network", help="Give episode containers a network (off by default)."),
    ] = None,
    patch_policy: Annotated[
        str | None,
        typer.Option(
            help="Changes to test infrastructure (conftest.py, pytest configuration, …): strip (default) | keep | "
            "reject."
        ),
    ] = None,
    max_patch_bytes: Annotated[
        int | None, typer.Option(help="Largest diff graded (default 2 MiB); a bigger one grades 0 as patch_too_large.")
    ] = None,
    memory_overcommit: Annotated[
        float | None,
        typer.Option(
            help="Sessions' memory limits may add up to this multiple of the host's memory (default 4; 0: no limit)."
        ),
    ] = None,
    max_disk_gb: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            help="Disk one episode may write, GB (default: the Docker root's free space over --max-sessions, 1–10 GB).",
        ),
    ] = None,
    drain_grace_s: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="On SIGTERM, seconds to finish running episodes (no new resets) before exiting (default 300).",
        ),
    ] = None,
    validated: Annotated[
        Path | None,
        typer.Option(
            "--validated",
            help="Validation file from `validate --out`: serve only its valid tasks (the others are listed and "
            "refused).",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Serve the tasks over HTTP until interrupted (SIGTERM drains first: see --drain-grace-s)."""
    import uvicorn

    from envserver.api import create_app
    from envserver.sandbox.docker_backend import DockerBackend
    from envserver.serving import DrainingServer
    from envserver.specs import SpecFileError, SpecTable
    from envserver.tasks import TaskFileError, load_task_sets

    flags: dict[str, Any] = {
        "tasks": tasks or None,
        "specs": specs or None,
        "host": host,
        "port": port,
        "server_name": server_name,
        "auth_token": auth_token,
        "allow_unauthenticated": allow_unauthenticated,
        "max_sessions": max_sessions,
        "warm_pool_size": warm_pool_size,
        "warm_pool_tasks": warm_pool_task or None,
        "session_ttl_s": session_ttl_s,
        "default_max_steps": default_max_steps,
        "grade_cache_size": grade_cache_size,
        "patch_policy": patch_policy,
        "max_patch_bytes": max_patch_bytes,
        "memory_overcommit": memory_overcommit,
        "validated": validated,
        "drain_grace_s": drain_grace_s,
    }
    # The sandbox flags reach into their section the way `--set` does, after it (flags win).
    overrides = list(set_ or [])
    if network is not None:
        overrides.append(f"sandbox.network={str(network).lower()}")
    if max_disk_gb is not None:
        overrides.append(f"sandbox.max_disk_gb={max_disk_gb}")
    cfg = _config_or_exit(config, overrides, flags)
    if not cfg.is_loopback() and not cfg.auth_token and not cfg.allow_unauthenticated:
        raise typer.BadParameter(
            f"listening on {cfg.host} (not loopback) requires --auth-token or ENVSERVER_AUTH_TOKEN", param_hint="--host"
        )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        task_map = load_task_sets(cfg.tasks, SpecTable.load(cfg.specs))
    except (TaskFileError, SpecFileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    validation = None
    if cfg.validated is not None:
        from envserver.validate import ValidationFileError, load_validation

        try:
            validation = load_validation(cfg.validated)
        except ValidationFileError as exc:
            typer.echo(f"error: --validated {exc}", err=True)
            raise typer.Exit(2) from None
    backend = DockerBackend(cfg.sandbox.docker_url, max_workers=cfg.sandbox.max_workers)
    application = create_app(cfg, backend, task_map, validation)
    server_config = uvicorn.Config(
        application,
        host=cfg.host,
        port=cfg.port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=int(cfg.keep_alive_s),
    )
    DrainingServer(server_config, application.state.manager, cfg.drain_grace_s).run()


@app.command()
def validate(
    tasks: Annotated[
        list[Path] | None,
        typer.Option("--tasks", help="Task file(s): JSON, JSONL or parquet. Default: the bundled sample tasks."),
    ] = None,
    specs: Annotated[
        list[Path] | None,
        typer.Option(
            "--specs", help="Spec table file(s) for repositories the bundled tables do not know (as for `serve`)."
        ),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Instances validated concurrently.")] = 1,
    repeat: Annotated[
        int,
        typer.Option(
            "--repeat",
            min=1,
            help="Grading runs per patch (gold and empty); outcomes that differ across runs make an instance `flaky`.",
        ),
    ] = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the JSON report here (rewritten as instances finish); `serve --validated` reads it."
        ),
    ] = None,
    instance: Annotated[
        list[str] | None, typer.Option("--instance", help="Validate only these instance ids (repeatable).")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds one grading run may take (default: the server's grade_timeout_s)."),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")] = True,
) -> None:
    """Grade every instance's gold patch and an empty patch through the server's own grading path (the server's
    settings: same limits and image templates) and report which instances are valid (gold resolves, empty does
    not) and why the others are not."""
    from envserver.specs import SpecFileError, SpecTable
    from envserver.tasks import TaskFileError, load_task_sets
    from envserver.validate import validate_command

    flags = {"tasks": tasks or None, "specs": specs or None, "grade_timeout_s": timeout}
    cfg = _config_or_exit(config, list(set_ or []), flags)
    try:
        # Loaded exactly as `serve` loads them: a row validated here is the row the server grades.
        task_map = load_task_sets(cfg.tasks, SpecTable.load(cfg.specs))
    except (TaskFileError, SpecFileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    selected = list(task_map.values())
    if instance:
        unknown = [i for i in instance if i not in task_map]
        if unknown:
            typer.echo(f"error: --instance: not in the task files: {', '.join(unknown)}", err=True)
            raise typer.Exit(2)
        wanted = set(instance)
        selected = [task for task in selected if task.instance_id in wanted]
    validate_command(cfg, selected, jobs=jobs, repeat=repeat, out=out, progress=progress)


@app.command()
def drain(
    url: Annotated[str, typer.Argument(help="The env server, e.g. http://10.0.0.5:8000.")],
    undo: Annotated[bool, typer.Option("--undo", help="End the drain: the server takes new resets again.")] = False,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to wait for the running sessions to end (0: do not wait).")
    ] = 0.0,
    token: Annotated[
        str | None, typer.Option(envvar="ENVSERVER_AUTH_TOKEN", help="Bearer token (or ENVSERVER_AUTH_TOKEN).")
    ] = None,
) -> None:
    """Take a running env server out of rotation for maintenance: new resets answer 503 `draining` (fleet clients
    send them elsewhere) while its running episodes go on. With --wait, exit 0 once none runs (1 if time runs out),
    e.g. `python -m envserver drain URL --wait 600 && docker compose down`."""
    import time

    from envserver.client import EnvClient, EnvServerError
    from envserver.wire import DrainState

    try:
        with EnvClient(url, token=token) as client:
            state = client.drain(not undo)
            deadline = time.monotonic() + wait
            while state.draining and wait > 0 and state.sessions > 0 and time.monotonic() < deadline:
                typer.echo(f"{url}: draining, {state.sessions} session(s) running", err=True)
                time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
                health = client.health()  # polled, not drained again: an undrain meanwhile ends the wait
                state = DrainState(draining=health.draining, sessions=health.sessions)
    except (EnvServerError, OSError) as exc:
        typer.echo(f"error: {url}: {exc}", err=True)
        raise typer.Exit(2) from None
    if not state.draining:
        typer.echo(f"{url}: in rotation ({state.sessions} session(s) running)")
        return
    typer.echo(f"{url}: draining, {state.sessions} session(s) running")
    if wait > 0 and state.sessions > 0:
        raise typer.Exit(1)


@app.command()
def demo(port: Annotated[int, typer.Option(help="Loopback port for the demo server.")] = 8765) -> None:
    """Build the sample images if needed, start a local server, play every sample task with its gold patch and
    with no change, and print the rewards (the embedded default of the env server)."""
    from envserver.demo import run_demo

    raise typer.Exit(run_demo(port))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
