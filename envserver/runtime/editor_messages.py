"""The editor's messages that are not a command's own, worded as openhands-aci's: its errors (ToolError and the
parameter and file-validation errors, `openhands_aci.editor.exceptions`; `Editor.run` turns them into the
`ERROR:\\n...` observation) and the truncation of long outputs with its notices.

Part of the in-container runtime (stdlib only, run with the task image's own python3 >= 3.8): editor.py,
editor_files.py and directory_view.py use them.
"""

from __future__ import annotations

MAX_RESPONSE_LEN_CHAR = 16000
"""Outputs longer than this are cut and end with a notice."""

CONTENT_TRUNCATED_NOTICE = (
    "<response clipped><NOTE>Due to the max output limit, only part of the full response has been shown to you.</NOTE>"
)
TEXT_FILE_CONTENT_TRUNCATED_NOTICE = (
    "<response clipped><NOTE>Due to the max output limit, only part of this file has been shown to you. "
    "You should retry this tool after you have searched inside the file with `grep -n` in order to find "
    "the line numbers of what you are looking for.</NOTE>"
)
DIRECTORY_CONTENT_TRUNCATED_NOTICE = (
    "<response clipped><NOTE>Due to the max output limit, only part of this directory has been shown to "
    "you. You should use `ls -la` instead to view large directories incrementally.</NOTE>"
)


class ToolError(Exception):
    """An error whose message is shown to the agent (openhands-aci's ToolError)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


def missing_param(command, parameter) -> ToolError:
    return ToolError(f"Parameter `{parameter}` is required for command: {command}.")


def invalid_param(parameter, value, hint=None) -> ToolError:
    if hint:
        return ToolError(f"Invalid `{parameter}` parameter: {value}. {hint}")
    return ToolError(f"Invalid `{parameter}` parameter: {value}.")


def file_validation_error(path, reason) -> ToolError:
    return ToolError(f"File validation failed for {path}: {reason}")


def maybe_truncate(content, truncate_after=MAX_RESPONSE_LEN_CHAR, truncate_notice=CONTENT_TRUNCATED_NOTICE):
    """`content`, cut after `truncate_after` characters with `truncate_notice` appended when it is longer."""
    if not truncate_after or len(content) <= truncate_after:
        return content
    return content[:truncate_after] + truncate_notice
