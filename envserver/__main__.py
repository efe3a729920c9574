"""`python -m envserver serve` — start an env server. Flags override a YAML config file, which overrides defaults."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import ValidationError

from envserver.config import ServerConfig

app = typer.Typer(add_completion=False, help="SWE-Gym / SWE-bench tasks as multi-turn tool environments over HTTP.")


class ConfigFileError(ValueError):
    """A config file that cannot be read or is not YAML: one line naming the file and what is wrong."""


def load_config(config_file: Path | None, overrides: dict[str, Any]) -> ServerConfig:
    """Defaults < the YAML file < flags. Raises ConfigFileError (unreadable, not YAML, not a mapping) and pydantic's
    ValidationError (a field unknown or out of range)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigFileError(f"{config_file}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigFileError(f"{config_file}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise ConfigFileError(
                f"{config_file}: expected a mapping of ServerConfig fields, got {type(data).__name__}"
            )
    token = os.environ.get("ENVSERVER_AUTH_TOKEN")
    if token and "auth_token" not in data:
        data["auth_token"] = token
    data.update({key: value for key, value in overrides.items() if value is not None})
    return ServerConfig.model_validate(data)


def _config_or_exit(config_file: Path | None, overrides: dict[str, Any]) -> ServerConfig:
    """load_config, or exit 2 with what is wrong (file, field) instead of a traceback."""
    try:
        return load_config(config_file, overrides)
    except ConfigFileError as exc:
        typer.echo(f"error: --config {exc}", err=True)
    except ValidationError as exc:
        source = f"{config_file} or the flags" if config_file else "the flags"
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        typer.echo(f"error: settings from {source}: {problems}", err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    tasks: list[Path] | None = typer.Option(
        None, "--tasks", help="Task file(s): JSON, JSONL or parquet. Default: the bundled sample tasks."
    ),
    specs: list[Path] | None = typer.Option(
        None,
        "--specs",
        help="Spec file(s), YAML or JSON (repeatable): "
        "repositories/versions for classic rows, read after the bundled "
        "SWE-bench and SWE-Gym tables (format: envserver/specs/__init__.py).",
    ),
    host: str | None = typer.Option(None, help="Listen address (default 127.0.0.1; others need a token)."),
    port: int | None = typer.Option(None, help="TCP port (default 8000)."),
    server_name: str | None = typer.Option(
        None,
        help="Name on this server's containers; a restart with the "
        "same name removes the containers a crashed predecessor left.",
    ),
    auth_token: str | None = typer.Option(None, help="Bearer token clients must send (or ENVSERVER_AUTH_TOKEN)."),
    allow_unauthenticated: bool | None = typer.Option(
        None,
        "--allow-unauthenticated",
        help="Listen off loopback without a token (only behind a loopback-only port mapping).",
    ),
    max_sessions: int | None = typer.Option(None, help="Concurrent session cap (429 beyond it)."),
    warm_pool_size: int | None = typer.Option(None, help="Started containers kept ready per task image."),
    warm_pool_task: list[str] | None = typer.Option(
        None, help="Only these tasks' images get a warm pool (repeatable; default: every task)."
    ),
    session_ttl_s: float | None = typer.Option(None, help="Idle seconds before a session is closed."),
    default_max_steps: int | None = typer.Option(None, help="Steps per episode before it is truncated."),
    grade_cache_size: int | None = typer.Option(
        None, help="Grades kept so identical patches of a task are graded once (0: grade every episode)."
    ),
    network: bool | None = typer.Option(
        None, "--network/--no-network", help="Give episode containers a network (off by default)."
    ),
    patch_policy: str | None = typer.Option(
        None,
        help="Changes to test infrastructure (conftest.py, pytest configuration, …): strip (default) | keep | reject.",
    ),
    max_patch_bytes: int | None = typer.Option(
        None, help="Largest diff graded (default 2 MiB); a bigger one grades 0 as patch_too_large."
    ),
    memory_overcommit: float | None = typer.Option(
        None, help="Sessions' memory limits may add up to this multiple of the host's memory (default 4; 0: no limit)."
    ),
    max_disk_gb: float | None = typer.Option(
        None,
        min=0.01,
        help="Disk one episode may write, GB (default: the Docker root's free space over --max-sessions, 1–10 GB).",
    ),
    drain_grace_s: float | None = typer.Option(
        None, min=0, help="On SIGTERM, seconds to finish running episodes (no new resets) before exiting (default 300)."
    ),
    validated: Path | None = typer.Option(
        None,
        "--validated",
        help="Validation file from `validate --out`: serve only its valid tasks (the others are listed and refused).",
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file with ServerConfig fields."),
    log_level: str = typer.Option("info", help="Logging level."),
) -> None:
    """Serve the tasks over HTTP until interrupted."""
    import uvicorn

    from envserver.api import create_app
    from envserver.sandbox.docker_backend import DockerBackend
    from envserver.serving import DrainingServer
    from envserver.specs import SpecFileError, SpecTable
    from envserver.tasks import TaskFileError, load_task_sets

    overrides: dict[str, Any] = dict(
        tasks=tasks or None,
        specs=specs or None,
        host=host,
        port=port,
        server_name=server_name,
        auth_token=auth_token,
        allow_unauthenticated=allow_unauthenticated,
        max_sessions=max_sessions,
        warm_pool_size=warm_pool_size,
        warm_pool_tasks=warm_pool_task or None,
        session_ttl_s=session_ttl_s,
        default_max_steps=default_max_steps,
        grade_cache_size=grade_cache_size,
        patch_policy=patch_policy,
        max_patch_bytes=max_patch_bytes,
        memory_overcommit=memory_overcommit,
        validated=validated,
        drain_grace_s=drain_grace_s,
    )
    cfg = _config_or_exit(config, overrides)
    if network is not None:
        cfg.sandbox.network = network
    if max_disk_gb is not None:
        cfg.sandbox.max_disk_gb = max_disk_gb
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
    tasks: list[Path] | None = typer.Option(
        None, "--tasks", help="Task file(s): JSON, JSONL or parquet. Default: the bundled sample tasks."
    ),
    specs: list[Path] | None = typer.Option(
        None, "--specs", help="Spec table file(s) for repositories the bundled tables do not know (as for `serve`)."
    ),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Instances validated concurrently."),
    repeat: int = typer.Option(
        1,
        "--repeat",
        min=1,
        help="Grading runs per patch (gold and empty); outcomes that differ across runs make an instance `flaky`.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write the JSON report here (rewritten as instances finish); `serve --validated` reads it."
    ),
    instance: list[str] | None = typer.Option(
        None, "--instance", help="Validate only these instance ids (repeatable)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Seconds one grading run may take (default: the server's grade_timeout_s)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file with ServerConfig fields (the server's: same limits and image templates)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
) -> None:
    """Grade every instance's gold patch and an empty patch through the server's own grading path and report
    which instances are valid (gold resolves, empty does not) and why the others are not."""
    from envserver.specs import SpecFileError, SpecTable
    from envserver.tasks import TaskFileError, load_task_sets
    from envserver.validate import validate_command

    cfg = _config_or_exit(config, dict(tasks=tasks or None, specs=specs or None, grade_timeout_s=timeout))
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
    url: str = typer.Argument(..., help="The env server, e.g. http://10.0.0.5:8000."),
    undo: bool = typer.Option(False, "--undo", help="End the drain: the server takes new resets again."),
    wait: float = typer.Option(
        0.0, "--wait", min=0, help="Seconds to wait for the running sessions to end (0: do not wait)."
    ),
    token: str | None = typer.Option(
        None, envvar="ENVSERVER_AUTH_TOKEN", help="Bearer token (or ENVSERVER_AUTH_TOKEN)."
    ),
) -> None:
    """Take a running env server out of rotation for maintenance: new resets answer 503 `draining` (fleet clients
    send them elsewhere) while its running episodes go on. With --wait, exit 0 once none runs (1 if time runs out),
    e.g. `python -m envserver drain URL --wait 600 && docker compose down`."""
    import time

    from envserver.client import EnvClient, EnvServerError

    try:
        with EnvClient(url, token=token) as client:
            state = client.drain(not undo)
            deadline = time.monotonic() + wait
            while state.draining and wait > 0 and state.sessions > 0 and time.monotonic() < deadline:
                typer.echo(f"{url}: draining, {state.sessions} session(s) running", err=True)
                time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
                state = client.drain(True)
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
def demo(
    port: int = typer.Option(8765, help="Loopback port for the demo server."),
) -> None:
    """Build the sample images if needed, start a local server, play every sample task with its gold patch and
    with no change, and print the rewards (the embedded default of the env server)."""
    from envserver.demo import run_demo

    raise typer.Exit(run_demo(port))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
