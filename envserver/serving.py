"""uvicorn, told to drain on SIGTERM: the env server's way to leave a fleet without losing an episode.

On the first SIGTERM the server drains (`SessionManager.drain`: new resets answer 503 `draining`, `/healthz` answers
503, fleet clients route around it) and keeps serving steps until its last session ends or `drain_grace_s` has
passed; then uvicorn shuts down as usual and the lifespan removes every container. A second SIGTERM, or SIGINT
(Ctrl-C), shuts down at once. Subclassing `uvicorn.Server` is the documented way to change its signal handling; the
drain check runs on uvicorn's own 0.1 s tick, so nothing happens inside the signal handler but setting a flag.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from envserver.sessions import SessionManager

log = logging.getLogger(__name__)

ENDED_LINGER_S = 5.0
"""Once no session runs, how long a draining server still waits for clients to read and delete ended sessions."""


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM drains `manager` for up to `grace_s` seconds before it shuts down."""

    def __init__(self, config: uvicorn.Config, manager: SessionManager, grace_s: float):
        super().__init__(config)
        self.manager = manager
        self.grace_s = grace_s
        self.drain_deadline: float | None = None
        """`time.monotonic()` at which a SIGTERM drain gives up waiting; None until SIGTERM."""
        self._drain_requested = False
        self._idle_since: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.grace_s > 0 and not self._drain_requested and not self.should_exit:
            self._drain_requested = True  # acted on in on_tick, in the event loop
            self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does (exit status 143)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.grace_s
            state = self.manager.drain(True)
            log.warning(
                "SIGTERM: draining for up to %.0f s (%d session(s) running); send SIGTERM again to stop at once",
                self.grace_s,
                state.sessions,
            )
        if self.drain_deadline is not None and not self.should_exit:
            running = self.manager.active_count()
            now = time.monotonic()
            if running:
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = now
            # Ended sessions are kept a moment for their clients' last reads (the patch, the state, the delete).
            if running == 0 and (not self.manager.sessions or now - (self._idle_since or now) >= ENDED_LINGER_S):
                log.warning("drained: no session running; shutting down")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.warning(
                    "drain grace of %.0f s over with %d session(s) running; shutting down", self.grace_s, running
                )
                self.should_exit = True
        return await super().on_tick(counter)
