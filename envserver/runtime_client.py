"""Host side of the in-container runtime protocol (envserver/runtime/PROTOCOL.md): JSON lines over one stream."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from envserver.sandbox.base import ByteStream, Sandbox

_SURROGATE = re.compile("[\ud800-\udfff]")
"""Lone surrogates: valid in a JSON string, not encodable as UTF-8."""

RUNTIME_SOURCE_DIR = Path(__file__).parent / "runtime"
FRAME_MARK = b"\x1e"
"""Starts every signed response line (the runtime's own copy: envserver/runtime/server.py, stdlib-only; a unit test
keeps them equal)."""
RUNTIME_DIR_IN_SANDBOX = "/.envserver/runtime"
# Same python lookup as the keep-alive init: the image's own python3, else conda's.
_PYTHON = 'exec "$(command -v python3 || echo /opt/miniconda3/bin/python3)"'
# SWE-bench / SWE-Gym images keep the task's environment in a conda env named testbed.
DEFAULT_INIT_SCRIPT = "if [ -f /opt/miniconda3/bin/activate ]; then . /opt/miniconda3/bin/activate testbed; fi"
RUNTIME_SLACK_S = 30.0
"""Host-side slack over the runtime's own limits before a request counts as lost."""


class EpisodeContainer(Protocol):
    """An episode's container and the tool runtime in it, as a session holds them: the runtime is replaced when the
    agent's command kills it, and the sandbox is gone once the session is closed."""

    runtime: RuntimeClient | None

    def live_sandbox(self) -> Sandbox:
        """The container; raises once the session was closed."""
        ...


def runtime_files() -> dict[str, bytes]:
    """The runtime's source files, keyed by their path inside the sandbox."""
    return {
        f"{RUNTIME_DIR_IN_SANDBOX}/{path.name}": path.read_bytes() for path in sorted(RUNTIME_SOURCE_DIR.glob("*.py"))
    }


def runtime_argv(cwd: str, init_script: str, max_output_chars: int, hard_timeout_s: float) -> list[str]:
    args = [
        f"{RUNTIME_DIR_IN_SANDBOX}/server.py",
        "--cwd",
        cwd,
        "--init-script",
        init_script,
        "--max-output-chars",
        str(max_output_chars),
        "--hard-timeout",
        str(hard_timeout_s),
    ]
    quoted = " ".join(_shell_quote(arg) for arg in args)
    return ["/bin/sh", "-c", f"{_PYTHON} -u {quoted}"]


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


class RuntimeDied(RuntimeError):
    """The runtime process exited or its stream broke (e.g. the agent ran `kill -9 -1`)."""


class RuntimeRequestError(RuntimeError):
    """The runtime answered `ok: false`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class RuntimeClient:
    """Sends requests to one runtime process and matches responses by id. Requests may be issued concurrently,
    but the runtime serves them in order, so callers serialise per session."""

    MAX_LINE_BYTES = 256 * 2**20

    def __init__(self, stream: ByteStream, on_rejected: Callable[[str], None] | None = None):
        """`on_rejected(why)`: called for each line that is not a true response (forged, corrupted, stray)."""
        self._stream = stream
        self._key = secrets.token_bytes(32)
        self._signed = False
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._dead_reason: str | None = None
        self.rejected_frames = 0
        self._on_rejected = on_rejected
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def start(
        cls, sandbox: Sandbox, argv: list[str], on_rejected: Callable[[str], None] | None = None
    ) -> RuntimeClient:
        return cls(await sandbox.open_stream(argv), on_rejected)

    async def handshake(self, timeout: float) -> dict[str, Any]:
        """The first request: `ping` with this client's key; every response after it must carry the key's MAC."""
        self._signed = True
        result = await self.request("ping", {"key": self._key.hex()}, timeout=timeout)
        if not result.get("signed"):
            raise RuntimeRequestError(
                "internal",
                f"the runtime does not sign its responses (it speaks protocol "
                f"{result.get('protocol')}; this server needs 2)",
            )
        return result

    @property
    def alive(self) -> bool:
        return self._dead_reason is None

    def stderr_tail(self) -> str:
        return self._stream.stderr_tail()

    async def _read_loop(self) -> None:
        buffer = bytearray()
        try:
            while True:
                chunk = await self._stream.read()
                if not chunk:
                    break
                buffer += chunk
                while (newline := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    self._dispatch(line)
                if len(buffer) > self.MAX_LINE_BYTES:
                    self._fail(f"runtime sent a line longer than {self.MAX_LINE_BYTES} bytes")
                    return
        except Exception as exc:  # noqa: BLE001 - the stream broke in a way the backend did not map to EOF
            self._fail(f"runtime stream error: {exc}")
            return
        tail = self._stream.stderr_tail().strip()
        self._fail("runtime process exited" + (f"; its last stderr: {tail[-500:]}" if tail else ""))

    def _reject(self, why: str) -> None:
        self.rejected_frames += 1
        if self._on_rejected is not None:
            self._on_rejected(why)

    def _dispatch(self, line: bytes) -> None:
        """One line of the runtime's stdout. Only the runtime should write there, but the agent is root in the same
        container and can write into it (/proc/<pid>/fd): after the handshake a true response is FRAME_MARK + MAC +
        JSON; anything else is rejected and counted, and junk written ahead of a frame without a newline is cut off
        at the frame's mark (the last one on the line)."""
        payload = line
        if self._signed:
            start = line.rfind(FRAME_MARK)
            if start < 0:
                self._reject("unsigned line")
                return
            if start > 0:
                self._reject("junk ahead of a frame")
            mac, _, payload = line[start + len(FRAME_MARK) :].partition(b" ")
            expected = hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode("ascii")
            if not hmac.compare_digest(mac, expected):
                self._reject("bad signature")
                return
        try:
            message = json.loads(payload)
        except json.JSONDecodeError:
            self._reject("not JSON")
            return
        request_id = message.get("id") if isinstance(message, dict) else None
        future = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
        if future is None:
            self._reject("no request waits for this id")
        elif not future.done():
            future.set_result(message)

    def _fail(self, reason: str) -> None:
        if self._dead_reason is None:
            self._dead_reason = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeDied(self._dead_reason))
        self._pending.clear()

    async def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Send one request and wait for its result. Raises RuntimeDied, RuntimeRequestError, asyncio.TimeoutError."""
        if self._dead_reason is not None:
            raise RuntimeDied(self._dead_reason)
        request_id = secrets.token_hex(8)  # unguessable: a forged answer cannot name a request
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        payload = json.dumps({"id": request_id, "op": op, "args": args or {}}, ensure_ascii=False)
        try:
            data = payload.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (JSON allows "\ud800"; no file or terminal can hold it): sent as U+FFFD instead.
            data = _SURROGATE.sub("\ufffd", payload).encode("utf-8")
        try:
            await self._stream.write(data + b"\n")
            message = await asyncio.wait_for(future, timeout=timeout)
        except (ConnectionError, OSError) as exc:
            self._fail(f"could not write to the runtime: {exc}")
            raise RuntimeDied(self._dead_reason or str(exc)) from exc
        finally:
            self._pending.pop(request_id, None)
        if not message.get("ok"):
            raise RuntimeRequestError(str(message.get("kind", "internal")), str(message.get("error", "")))
        return message.get("result") or {}

    async def close(self) -> None:
        self._fail("runtime closed")
        self._reader.cancel()
        await self._stream.close()
