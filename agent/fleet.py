"""Moved to `envserver.fleet` (a client of env servers, usable without the agent); kept while imports move."""

from envserver.fleet import (
    Fleet,
    FleetConfig,
    FleetUnavailable,
    Replica,
    RoutedEnv,
    failure_text,
    is_draining,
    status_line,
    summary_lines,
    takes_replica_down,
)

__all__ = [
    "Fleet",
    "FleetConfig",
    "FleetUnavailable",
    "Replica",
    "RoutedEnv",
    "failure_text",
    "is_draining",
    "status_line",
    "summary_lines",
    "takes_replica_down",
]
