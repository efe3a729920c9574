"""An env server as a local subprocess on loopback: the one way the demo, the trainer's embedded default, the tests
and the benchmarks start one (`python -m envserver serve`, in its own process group, waited for on /healthz)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Self

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """A running `python -m envserver serve` subprocess; `stop()` (or the context manager) ends it."""

    def __init__(
        self,
        log_dir: Path,
        *args: str,
        name: str | None = None,
        port: int | None = None,
        wait_s: float = 120.0,
        cwd: Path | None = None,
        own_process_group: bool = True,
    ):
        """`args`: extra `serve` flags; `name`: the server name on its containers (a restart with the same name
        removes what a killed predecessor left); `own_process_group`: False keeps the server in the caller's
        process group, so that a `kill -9` of the caller's group takes the server down with it."""
        self.name = name or f"local-{uuid.uuid4().hex[:10]}"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"server-{self.name}-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "envserver",
                    "serve",
                    "--port",
                    str(self.port),
                    "--server-name",
                    self.name,
                    *args,
                ],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=own_process_group,
            )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the env server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.process.kill()
        raise RuntimeError(f"the env server did not answer within {wait_s:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGINT: stop now, without the drain a SIGTERM starts (the server removes its containers on the way out);
        SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
