"""The agent's change as it leaves its container: its size first, its text only when under the server's cap, and
the file contents the patch policy needs (envserver/patch_policy.py).

Why the size first: the runtime's `exec` keeps at most 50 MB of a stream, so a 50 MB diff read whole is cut without
a word and then fails to apply as a corrupt patch (reward 0, and a 50 MB HTTP answer). The diff is measured in the
container (`git diff … | wc -c`); over `max_patch_bytes` it is never read: the grade says `patch_too_large`, with the
size and the sha256 the container computed.
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from envserver.git_diff import unquote
from envserver.patch_policy import FileVersions
from envserver.runtime_client import RuntimeClient, RuntimeDied, RuntimeRequestError
from envserver.sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from envserver.tasks import TaskInstance

Exec = Callable[[list[str], float, int], Awaitable[tuple[int | None, str]]]
"""Runs argv in a container: (argv, timeout in s, most stdout bytes kept) → (exit status, stdout)."""

READ_SLACK_BYTES = 64 * 2**10
"""Room for the header lines in front of the patch when it is read."""
POLICY_PATCH_PATH = "/.envserver/policy/model.patch"
"""Where a patch is put in a container started only to read file versions."""


class SubmissionError(RuntimeError):
    """The change could not be read out of the container (e.g. the agent deleted git or the repository)."""


@dataclass(frozen=True)
class Submission:
    """The agent's change against base_commit, as read from its container (or as given, for validation)."""

    patch: str | None
    """The diff without the hidden test files; None when it was over the cap and not read."""
    size: int
    """Its size in bytes, measured where it was made."""
    sha256: str | None
    """Its sha256 (None when the container could not compute it)."""
    hidden_paths: tuple[str, ...] = ()
    """Hidden test files the agent changed (left out of `patch`)."""

    @classmethod
    def of(cls, patch: str) -> Submission:
        data = patch.encode("utf-8")
        return cls(patch=patch, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def session_exec(runtime: RuntimeClient | None, sandbox: Sandbox, slack_s: float = 30.0) -> Exec:
    """Run commands through the session's runtime (one stream, stdout apart from stderr) and, when the runtime is
    gone or the command fails there, through `docker exec` (stdout and stderr together)."""

    async def run(argv: list[str], timeout: float, max_bytes: int) -> tuple[int | None, str]:
        if runtime is not None and runtime.alive:
            try:
                result = await runtime.request(
                    "exec", {"argv": argv, "timeout": timeout, "max_output_bytes": max_bytes}, timeout=timeout + slack_s
                )
                if result.get("exit_code") == 0:
                    return 0, str(result.get("stdout", ""))
            except (RuntimeDied, RuntimeRequestError, TimeoutError):
                pass
        outcome = await sandbox.exec(argv, timeout=timeout)
        return outcome.exit_code, outcome.output

    return run


def _pathspecs(paths: Sequence[str], magic: str) -> str:
    # `literal`: a test file named tests/test_[x].py is a name, not a glob.
    return " ".join(shlex.quote(f":({magic}){path}") for path in paths)


def submission_script(task: TaskInstance, max_bytes: int, base: str | None = None) -> str:
    """Prints the diff's size, the hidden test files it changes (count, then one per line, git-quoted), then the
    diff itself when it is at most `max_bytes`, else its sha256.

    `base`: the commit the episode started from (default: the task's base_commit). An official-layout image's HEAD is
    a setup commit on top of base_commit (the harness's `SWE-bench` commit, holding what install steps edited); the
    grading container starts there too, so a diff against base_commit would carry those edits and fail to apply."""
    base = base or task.base_commit
    hidden = task.test_files()
    excludes = _pathspecs(hidden, "exclude,literal")
    diff = f"git -c core.fileMode=false diff --cached --binary --no-color {shlex.quote(base)} -- . {excludes}"
    hidden_names = (
        f"git diff --cached --name-only --no-renames {shlex.quote(base)} -- {_pathspecs(hidden, 'literal')} 2>/dev/null"
        if hidden
        else "true"
    )
    return "\n".join(
        [
            "set -o pipefail",
            f"cd {shlex.quote(task.workdir)} || exit 90",
            "git add -A >/dev/null 2>&1",
            # A failed size pass is run again with its stderr shown, for the error message.
            f"size=$({diff} 2>/dev/null | wc -c) || {{ {diff} >/dev/null; exit 91; }}",
            f"names=$({hidden_names})",
            'echo "$size"',
            'if [ -n "$names" ]; then printf "%s\\n" "$names" | wc -l; printf "%s\\n" "$names"; else echo 0; fi',
            (
                f'if [ "$size" -le {int(max_bytes)} ]; then {diff} 2>/dev/null; '
                f"else {{ {diff} | sha256sum 2>/dev/null || true; }} | cut -c1-64; fi"
            ),
        ]
    )


def parse_submission(output: str, max_bytes: int) -> Submission:
    """The Submission from `submission_script`'s output."""
    try:
        size_line, count_line, rest = output.split("\n", 2)
        size, count = int(size_line.strip()), int(count_line.strip())
    except ValueError:
        raise SubmissionError(f"unexpected output of the patch reader: {output[:300]!r}") from None
    lines = rest.split("\n", count)
    hidden = tuple(unquote(line) for line in lines[:count])
    body = lines[count] if len(lines) > count else ""
    if size > max_bytes:
        sha = body.strip()
        return Submission(patch=None, size=size, sha256=sha if len(sha) == 64 else None, hidden_paths=hidden)
    data = body.encode("utf-8")
    return Submission(patch=body, size=size, sha256=hashlib.sha256(data).hexdigest(), hidden_paths=hidden)


async def read_submission(
    run: Exec, task: TaskInstance, max_bytes: int, timeout: float, base: str | None = None
) -> Submission:
    """`git add -A` and the diff against `base` (the episode's starting commit; default base_commit) in the episode
    container, measured before it is read."""
    exit_code, output = await run(
        ["bash", "-c", submission_script(task, max_bytes, base)], timeout, max_bytes + READ_SLACK_BYTES
    )
    if exit_code != 0:
        raise SubmissionError(f"git diff failed in the episode container (exit {exit_code}): {output[-500:]}")
    return parse_submission(output, max_bytes)


async def read_file_versions(
    run: Exec, task: TaskInstance, paths: Sequence[str], timeout: float, max_bytes: int, base: str | None = None
) -> dict[str, FileVersions]:
    """Each path's content at `base` (the episode's starting commit; default base_commit) and in the index (where
    `git add -A` put the change)."""

    async def show(revision: str) -> str | None:
        exit_code, output = await run(["git", "-C", task.workdir, "show", revision], timeout, max_bytes)
        return output if exit_code == 0 else None

    versions = {}
    for path in paths:
        versions[path] = FileVersions(base=await show(f"{base or task.base_commit}:{path}"), new=await show(f":{path}"))
    return versions


async def image_file_versions(
    backend: SandboxBackend,
    spec: SandboxSpec,
    task: TaskInstance,
    patch: str,
    paths: Sequence[str],
    timeout: float,
    max_bytes: int,
) -> dict[str, FileVersions]:
    """The same as `read_file_versions` for a patch with no episode container (validation's gold patch): in a
    container of the task image that only applies the patch to its index. {} when the patch does not apply."""
    sandbox = await backend.create(
        replace(spec, command=None, network=False, files={POLICY_PATCH_PATH: patch.encode("utf-8")})
    )
    try:

        async def run(argv: list[str], run_timeout: float, _max_bytes: int) -> tuple[int | None, str]:
            outcome = await sandbox.exec(argv, timeout=run_timeout)
            return outcome.exit_code, outcome.output

        exit_code, _ = await run(["git", "-C", task.workdir, "apply", "--cached", POLICY_PATCH_PATH], timeout, 0)
        if exit_code != 0:
            return {}
        # The patch went onto the image's HEAD (its setup commit, for an official-layout image).
        return await read_file_versions(run, task, paths, timeout, max_bytes, base="HEAD")
    finally:
        await asyncio.shield(sandbox.remove())


def patch_fields(patch: str, inline_bytes: int) -> dict[str, Any]:
    """GradeReport fields describing the graded patch: the whole of it when small, else its head (cut at a line)."""
    data = patch.encode("utf-8")
    fields: dict[str, Any] = {"patch_bytes": len(data), "patch_sha256": hashlib.sha256(data).hexdigest()}
    if len(data) <= inline_bytes:
        return {**fields, "model_patch": patch, "model_patch_truncated": False}
    head = data[:inline_bytes].decode("utf-8", errors="ignore")
    head = head[: head.rfind("\n") + 1] or head
    return {**fields, "model_patch": head, "model_patch_truncated": True}
