"""The editor's `view` of a directory, made by the very same `find ... | sort` shell commands as openhands-aci's (so
that find, sort and the locale behave exactly alike), and its shell helper (`openhands_aci.utils.shell`).

Part of the in-container runtime (stdlib only, run with the task image's own python3 >= 3.8); editor.py uses it.
"""

from __future__ import annotations

import io
import locale
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks this directory as the envserver.runtime package; the container runs it flat
    from envserver.runtime.editor_messages import (
        CONTENT_TRUNCATED_NOTICE,
        DIRECTORY_CONTENT_TRUNCATED_NOTICE,
        MAX_RESPONSE_LEN_CHAR,
        ToolError,
        maybe_truncate,
    )
else:
    from editor_messages import (
        CONTENT_TRUNCATED_NOTICE,
        DIRECTORY_CONTENT_TRUNCATED_NOTICE,
        MAX_RESPONSE_LEN_CHAR,
        ToolError,
        maybe_truncate,
    )


def view_directory(path: Path) -> str:
    """The `view` of a directory: what is in it up to 2 levels deep, hidden items left out and counted."""
    # The same shell commands as openhands-aci (path unquoted, as there), so that find/sort/locale
    # behave exactly alike.
    _, hidden_stdout, _ = run_shell_cmd(f"find -L {path} -mindepth 1 -maxdepth 1 -name '.*'")
    hidden_count = len(hidden_stdout.strip().split("\n")) if hidden_stdout.strip() else 0

    _, stdout, stderr = run_shell_cmd(
        f"find -L {path} -maxdepth 2 -not \\( -path '{path}/\\.*' -o -path '{path}/*/\\.*' \\) | sort",
        truncate_notice=DIRECTORY_CONTENT_TRUNCATED_NOTICE,
    )
    if stderr:
        raise ToolError(stderr)
    paths = stdout.strip().split("\n") if stdout.strip() else []
    formatted_paths = []
    for p in paths:
        formatted_paths.append(p + "/" if Path(p).is_dir() else p)
    msg = [
        f"Here's the files and directories up to 2 levels deep in {path}, excluding hidden items:\n"
        + "\n".join(formatted_paths)
    ]
    if hidden_count > 0:
        msg.append(
            f"\n{hidden_count} hidden files/directories in this directory are excluded. You can use "
            f"'ls -la {path}' to see them."
        )
    return "\n".join(msg)


def run_shell_cmd(
    cmd: str, timeout=120.0, truncate_after=MAX_RESPONSE_LEN_CHAR, truncate_notice=CONTENT_TRUNCATED_NOTICE
):
    """openhands_aci.utils.shell.run_shell_cmd: (returncode, stdout, stderr), each output truncated."""
    start_time = time.time()
    process = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ToolError(f"Command '{cmd}' timed out after {time.time() - start_time:.2f} seconds")
    stdout = decode_text(out)
    stderr = decode_text(err)
    return (
        process.returncode or 0,
        maybe_truncate(stdout, truncate_after=truncate_after, truncate_notice=truncate_notice),
        maybe_truncate(stderr, truncate_after=truncate_after, truncate_notice=CONTENT_TRUNCATED_NOTICE),
    )


def decode_text(data: bytes) -> str:
    """Decode like subprocess's text mode (locale encoding, universal newlines); undecodable bytes are
    replaced instead of raising (openhands-aci would crash on them)."""
    encoding = locale.getpreferredencoding(False)
    try:
        return io.TextIOWrapper(io.BytesIO(data), encoding=encoding).read()
    except UnicodeDecodeError:
        return io.TextIOWrapper(io.BytesIO(data), encoding=encoding, errors="replace").read()
