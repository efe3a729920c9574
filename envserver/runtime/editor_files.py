"""The editor's file access, as openhands-aci's editor reads and writes: each access checks the file first (size
limit, binary content; FIFOs, sockets and devices are refused) and uses the file's detected encoding
(file_encoding.py); every failure is a ToolError worded as openhands-aci's.

Part of the in-container runtime (stdlib only, run with the task image's own python3 >= 3.8); editor.py uses it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks this directory as the envserver.runtime package; the container runs it flat
    from envserver.runtime import file_encoding
    from envserver.runtime.editor_messages import ToolError, file_validation_error
else:
    import file_encoding
    from editor_messages import ToolError, file_validation_error

SUPPORTED_BINARY_EXTENSIONS = (".docx", ".xlsx", ".pptx", ".pdf", ".mp3", ".wav", ".m4a", ".flac")
"""Documents openhands-aci converts to markdown for `view` (not converted here: see the editor's docstring)."""


def is_supported_binary_file(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_BINARY_EXTENSIONS


def refuse_special_file(path: Path) -> None:
    """Refuse FIFOs, sockets and devices: reading one could block the runtime forever or never end
    (openhands-aci would hang on them)."""
    try:
        mode = os.stat(str(path)).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise file_validation_error(
            path, "File is not a regular file (FIFO, socket or device) and cannot be read or edited by this tool."
        )


def encoding_of(path: Path) -> str:
    """The encoding used to read and write an existing file (file_encoding.detect_encoding), once a special file
    was refused. Every read and write of an existing file asks this first."""
    if path.exists():
        refuse_special_file(path)
    return file_encoding.detect_encoding(path)


def validate_file(path: Path, max_size: int) -> None:
    """Refuse a file over `max_size` bytes and a binary one (openhands-aci's checks before each read and write)."""
    if not path.exists() or not path.is_file():
        return
    file_size = os.path.getsize(str(path))
    if file_size > max_size:
        raise file_validation_error(
            path,
            f"File is too large ({file_size / 1024 / 1024:.1f}MB). "
            f"Maximum allowed size is {int(max_size / 1024 / 1024)}MB.",
        )
    if is_supported_binary_file(path):
        return
    if file_encoding.is_binary(str(path)):
        raise file_validation_error(
            path, "File appears to be binary and this file type cannot be read or edited by this tool."
        )


def count_lines(path: Path) -> int:
    encoding = encoding_of(path)
    try:
        with open(str(path), encoding=encoding) as f:
            return sum(1 for _ in f)
    except Exception as e:  # noqa: BLE001 - openhands-aci crashes here on undecodable files
        raise ToolError(f"Ran into {e} while trying to read {path}")


def read_file(path: Path, max_size: int, start_line=None, end_line=None) -> str:
    """The file's text, or its lines `start_line`..`end_line` (1-based, inclusive)."""
    encoding = encoding_of(path) if not path.is_dir() else "utf-8"
    validate_file(path, max_size)
    try:
        if start_line is not None and end_line is not None:
            lines = []
            with open(str(path), "r", encoding=encoding) as f:
                for i, line in enumerate(f, 1):
                    if i > end_line:
                        break
                    if i >= start_line:
                        lines.append(line)
            return "".join(lines)
        elif start_line is not None or end_line is not None:
            raise ValueError("Both start_line and end_line must be provided together")
        else:
            with open(str(path), "r", encoding=encoding) as f:
                return "".join(f)
    except ToolError:
        raise
    except Exception as e:  # noqa: BLE001 - as openhands-aci: any read error is reported
        raise ToolError(f"Ran into {e} while trying to read {path}")


def write_file(path: Path, file_text, max_size: int) -> None:
    encoding = encoding_of(path) if not path.is_dir() else "utf-8"
    validate_file(path, max_size)
    try:
        with open(path, "w", encoding=encoding) as f:
            f.write(file_text)
    except Exception as e:  # noqa: BLE001 - as openhands-aci: any write error is reported
        raise ToolError(f"Ran into {e} while trying to write to {path}")


def write_in_place(path: Path, text: str, encoding: str) -> None:
    """Rewrite the file's content, keeping its mode, owner and symlinks (`insert`: see the editor's docstring)."""
    try:
        with open(str(path), "w", encoding=encoding) as f:
            f.write(text)
    except Exception as e:  # noqa: BLE001 - as openhands-aci: any write error is reported
        raise ToolError(f"Ran into {e} while trying to write to {path}")
