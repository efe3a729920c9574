"""One tool call in an episode's container: bash or the editor through the tool runtime, a runtime the agent's
command killed started again (and the agent told so), and the container's disk use watched against the episode's
budget while the call runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from envserver import tools
from envserver.config import ServerConfig
from envserver.runtime_client import (
    RUNTIME_SLACK_S,
    EpisodeContainer,
    RuntimeClient,
    RuntimeDied,
    RuntimeRequestError,
)
from envserver.sandbox.base import Sandbox
from envserver.wire import StepInfo

T = TypeVar("T")

DISK_CHECK_S = 2.0
"""How often a running step's sandbox disk use is checked against the budget."""
EDIT_TIMEOUT_S = 120.0
"""Limit of one editor operation."""


class ToolFailure(RuntimeError):
    """A tool call that could not run; the message is the observation the agent gets."""


class ToolRunner:
    """Runs an episode's tool calls (one runner per episode: it keeps the episode's disk watch state)."""

    def __init__(
        self,
        config: ServerConfig,
        workdir: str,
        start_runtime: Callable[[Sandbox], Awaitable[RuntimeClient]],
        disk_budget: int,
    ):
        self.config = config
        self.workdir = workdir
        self.start_runtime = start_runtime
        """Starts a new tool runtime in the sandbox (after the agent's command killed the old one)."""
        self.disk_budget = disk_budget
        """Bytes the episode may write."""
        self.disk_used: int | None = None
        """Bytes written when the episode went over its disk budget (None: it has not)."""
        self._disk_checked_at = 0.0

    async def run(self, container: EpisodeContainer, tool: str, args: Any) -> tuple[str, StepInfo]:
        """The observation and step info of one call (`info.step` and `duration_s` are the caller's to set). When
        it returns with `disk_used` set, the container was removed for writing past the budget."""
        return await self._with_disk_watch(container.live_sandbox(), self._run_tool(container, tool, args))

    async def _run_tool(self, container: EpisodeContainer, tool: str, args: Any) -> tuple[str, StepInfo]:
        config = self.config
        try:
            if tool == tools.EXECUTE_BASH:
                timeout = min(args.timeout or config.command_timeout_s, config.max_command_timeout_s)
                request = {
                    "command": args.command,
                    "is_input": args.is_input,
                    "timeout": timeout,
                    "no_output_timeout": config.no_output_timeout_s,
                    "max_output_chars": config.max_output_chars,
                }
                result = await self._runtime_call(container, "bash", request, timeout + config.no_output_timeout_s)
                return tools.format_bash_observation(result), StepInfo(
                    step=0, tool=tool, exit_code=result.get("exit_code"), status=result.get("status")
                )
            edit = args.model_dump(exclude_none=True)
            result = await self._runtime_call(container, "edit", edit, EDIT_TIMEOUT_S)
        except ToolFailure as exc:
            return str(exc), StepInfo(step=0, tool=tool, status="error", error=str(exc))
        output = result.get("output", "")
        if len(output) > config.max_output_chars:
            output = output[: config.max_output_chars] + "\n<response clipped>"
        status = result.get("status") or ("error" if result.get("error") else "completed")
        return output, StepInfo(step=0, tool=tool, status=status)

    async def _runtime_call(
        self, container: EpisodeContainer, op: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Run one runtime op. If the agent's command killed the runtime, start a new one and say so in the
        result; raise ToolFailure (its text is the observation) when the runtime refused the op or cannot come back."""
        sandbox, runtime = container.live_sandbox(), container.runtime
        if runtime is None:
            why = "could not be restarted after an earlier failure"
        else:
            try:
                return await runtime.request(op, args, timeout=timeout + RUNTIME_SLACK_S)
            except RuntimeRequestError as exc:
                raise ToolFailure(f"ERROR: {exc}") from None
            except (TimeoutError, RuntimeDied) as exc:
                why = "stopped answering" if isinstance(exc, asyncio.TimeoutError) else f"was killed ({exc})"
            container.live_sandbox()  # closed (DELETE, expiry) while the call ran: its runtime died with it
            await runtime.close()
            container.runtime = None
        try:
            container.runtime = await self.start_runtime(sandbox)
        except Exception as exc:  # noqa: BLE001 - the agent is told; `finish` still grades what is there
            raise ToolFailure(
                f"ERROR: the sandbox is no longer usable: the tool runtime {why} and could not be "
                f"restarted ({exc}). Call `finish` to end the episode."
            ) from None
        note = (
            f"[The tool runtime {why} during this call. A new shell was started in {self.workdir}; "
            "environment variables and background jobs of the old shell are gone.]"
        )
        return {
            "output": note if op == "edit" else "",
            "error": True,
            "exit_code": None,
            "status": "shell_restarted",
            "cwd": self.workdir,
            "note": note,
        }

    async def _with_disk_watch(self, sandbox: Sandbox, call: Awaitable[T]) -> T:
        """`call` while the sandbox's disk use is checked every DISK_CHECK_S: past the budget, the container is
        removed at once (that ends the call; the host loses at most the budget and what one check period wrote)."""
        budget = self.disk_budget

        async def watch() -> None:
            while True:
                await asyncio.sleep(DISK_CHECK_S)
                used = await sandbox.disk_usage()
                if used is not None and used > budget:
                    self.disk_used = used
                    await sandbox.remove()
                    return

        watcher = asyncio.create_task(watch())
        try:
            result = await call
        finally:
            watcher.cancel()
        if self.disk_used is None and time.monotonic() - self._disk_checked_at >= DISK_CHECK_S:
            # What short commands wrote between checks; at most one check per period, so quick steps stay quick.
            self._disk_checked_at = time.monotonic()
            used = await sandbox.disk_usage()
            if used is not None and used > budget:
                self.disk_used = used
        return result
