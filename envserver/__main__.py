"""`python -m envserver serve` — start an env server. Flags override a YAML config file, which overrides defaults."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from envserver.config import ServerConfig

app = typer.Typer(add_completion=False, help="SWE-Gym / SWE-bench tasks as multi-turn tool environments over HTTP.")


def load_config(config_file: Path | None, overrides: dict[str, Any]) -> ServerConfig:
    data: dict[str, Any] = {}
    if config_file is not None:
        data = yaml.safe_load(config_file.read_text()) or {}
    token = os.environ.get("ENVSERVER_AUTH_TOKEN")
    if token and "auth_token" not in data:
        data["auth_token"] = token
    data.update({key: value for key, value in overrides.items() if value is not None})
    return ServerConfig.model_validate(data)


@app.command()
def serve(
    tasks: Optional[list[Path]] = typer.Option(None, "--tasks", help="Task file(s): JSON, JSONL or parquet. "
                                                "Default: the bundled sample tasks."),
    host: Optional[str] = typer.Option(None, help="Listen address (default 127.0.0.1; others need a token)."),
    port: Optional[int] = typer.Option(None, help="TCP port (default 8000)."),
    server_name: Optional[str] = typer.Option(None, help="Name on this server's containers; a restart with the "
                                              "same name removes the containers a crashed predecessor left."),
    auth_token: Optional[str] = typer.Option(None, help="Bearer token clients must send (or ENVSERVER_AUTH_TOKEN)."),
    allow_unauthenticated: Optional[bool] = typer.Option(None, "--allow-unauthenticated", help="Listen off "
                                                         "loopback without a token (only behind a loopback-only "
                                                         "port mapping)."),
    max_sessions: Optional[int] = typer.Option(None, help="Concurrent session cap (429 beyond it)."),
    warm_pool_size: Optional[int] = typer.Option(None, help="Started containers kept ready per task image."),
    warm_pool_task: Optional[list[str]] = typer.Option(None, help="Only these tasks' images get a warm pool "
                                                       "(repeatable; default: every task)."),
    session_ttl_s: Optional[float] = typer.Option(None, help="Idle seconds before a session is closed."),
    default_max_steps: Optional[int] = typer.Option(None, help="Steps per episode before it is truncated."),
    grade_cache_size: Optional[int] = typer.Option(None, help="Grades kept so identical patches of a task are "
                                                   "graded once (0: grade every episode)."),
    network: Optional[bool] = typer.Option(None, "--network/--no-network", help="Give episode containers a "
                                           "network (off by default)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with ServerConfig fields."),
    log_level: str = typer.Option("info", help="Logging level."),
) -> None:
    """Serve the tasks over HTTP until interrupted."""
    import uvicorn

    from envserver.api import create_app
    from envserver.sandbox.docker_backend import DockerBackend
    from envserver.tasks import TaskFileError, load_task_sets

    overrides: dict[str, Any] = dict(
        tasks=tasks or None, host=host, port=port, server_name=server_name, auth_token=auth_token,
        allow_unauthenticated=allow_unauthenticated,
        max_sessions=max_sessions, warm_pool_size=warm_pool_size, warm_pool_tasks=warm_pool_task or None,
        session_ttl_s=session_ttl_s, default_max_steps=default_max_steps, grade_cache_size=grade_cache_size,
    )
    cfg = load_config(config, overrides)
    if network is not None:
        cfg.sandbox.network = network
    if not cfg.is_loopback() and not cfg.auth_token and not cfg.allow_unauthenticated:
        raise typer.BadParameter(f"listening on {cfg.host} (not loopback) requires --auth-token or "
                                 "ENVSERVER_AUTH_TOKEN", param_hint="--host")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        task_map = load_task_sets(cfg.tasks)
    except TaskFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    backend = DockerBackend(cfg.sandbox.docker_url, max_workers=cfg.sandbox.max_workers)
    uvicorn.run(create_app(cfg, backend, task_map), host=cfg.host, port=cfg.port, log_level=log_level,
                timeout_graceful_shutdown=30)


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
