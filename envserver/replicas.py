"""What a fleet knows of its replicas: its settings, each replica's state (live, draining or dead; capacity, load,
what it served), and which failures take a replica out of the rotation (envserver/fleet.py routes on them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from envserver.client import AsyncEnvClient, EnvServerError

UNAVAILABLE_STATUSES = {502, 503, 504}
"""Answers that say the replica (or the proxy in front of it) cannot serve now: it leaves the rotation."""


@dataclass
class FleetConfig:
    """How the fleet watches its replicas and how long it waits for one."""

    patience_s: float = 300.0
    """How long new episodes wait while no replica is live before the collection stops with `FleetUnavailable`."""
    probe_interval_s: float = 2.0
    """Seconds between `/healthz` probes of live replicas (a dead one is probed on its own backoff)."""
    probe_timeout_s: float = 5.0
    """Limit of one probe; a replica that does not answer within it leaves the rotation."""
    backoff_base_s: float = 0.5
    """First wait before a dead replica is probed again; it doubles with each failure in a row."""
    backoff_max_s: float = 15.0
    """Longest wait between probes of a dead replica."""
    reset_rounds: int = 3
    """Times an episode whose reset failed on every live replica goes back to waiting for one before it is recorded
    as an infra failure (a replica whose /healthz answers but whose resets fail would otherwise loop forever)."""
    reset_retries: int = 1
    """Retries of a reset on the same replica (a dropped keep-alive) before it is tried on another replica."""
    lost_replays: int = 2
    """Most replays of one episode lost with its replica (when the caller asks for replays); a bound, so that an
    episode that itself kills replicas cannot take the whole fleet down one replica at a time."""


@dataclass
class Replica:
    """One env server as the fleet sees it."""

    url: str
    live: bool = True
    """In the rotation: new episodes may go to it."""
    draining: bool = False
    """Out of the rotation because its operator drains it (`POST /v1/drain`, SIGTERM): it answers, finishes the
    episodes it holds, and takes no new ones. Not counted as a failure."""
    last_failure: str | None = None
    """The last connection failure or unavailable answer, as text."""
    failures_in_a_row: int = 0
    """Failures since the last success: the probe backoff grows with it."""
    next_probe_at: float = 0.0
    """`time.monotonic()` before which a dead replica is not probed again."""
    capacity: int | None = None
    """Its `max_sessions` (from /healthz); None until a probe answered."""
    others_sessions: int = 0
    """Sessions on it that are not this fleet's (other clients), as of the last probe."""
    in_flight: int = 0
    """This fleet's episodes on it now (a reset on its way counts)."""
    open_sessions: int = 0
    """This fleet's sessions on it that exist (reset answered, not yet released)."""
    served: int = 0
    """Episodes that ran on it without an env server failure."""
    failed: int = 0
    """Episodes that failed on it: lost mid-episode, or whose reset there failed (and went elsewhere)."""
    client: AsyncEnvClient | None = field(default=None, repr=False, compare=False)
    """Steps, patches and deletes (the client's own retries cover dropped connections)."""
    reset_client: AsyncEnvClient | None = field(default=None, repr=False, compare=False)
    """Resets, with few retries: another replica is the better retry."""

    @property
    def load(self) -> int:
        return self.in_flight + self.others_sessions

    @property
    def free(self) -> int:
        return (self.capacity or 1) - self.load

    @property
    def state(self) -> str:
        return "live" if self.live else "draining" if self.draining else "dead"

    def describe(self) -> str:
        text = f"{self.url}: {self.state}; {self.served} served, {self.failed} failed, {self.in_flight} in flight"
        return text + (f"; last failure: {self.last_failure}" if self.last_failure else "")


class FleetUnavailable(RuntimeError):
    """No replica was live for `patience_s`: the message names each replica and its last failure."""


def failure_text(error: BaseException) -> str:
    if isinstance(error, EnvServerError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def is_draining(error: BaseException) -> bool:
    """The replica refused a reset because it drains: it is fine, only out of the rotation."""
    return isinstance(error, EnvServerError) and error.status == 503 and error.type == "draining"


def takes_replica_down(error: BaseException) -> bool:
    """A connection failure or an unavailable answer: the replica, not the request, is the problem."""
    if isinstance(error, EnvServerError):
        return error.status in UNAVAILABLE_STATUSES
    return isinstance(error, httpx.TransportError)
