"""Git diffs as text, byte for byte: split into per-file parts (`FilePatch`), git's C-quoted paths read and written,
and one file's diff written from two versions of its text.

The patch policy (envserver/patch_policy.py) works on these parts; grading and the submission read paths with them.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class FilePatch:
    """One file's part of a git diff, from its `diff --git` line to the next."""

    old_path: str | None
    """Path before the change; None for a new file."""
    new_path: str | None
    """Path after the change; None for a deleted file."""
    text: str
    """The exact text of this part of the diff."""

    @property
    def path(self) -> str:
        """The path to name it by (the new one unless deleted)."""
        return self.new_path or self.old_path or ""

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for p in (self.old_path, self.new_path) if p))


# --- reading a git diff ----------------------------------------------------------------------------------------

_FILE_START = re.compile(r"^diff --git ", re.MULTILINE)
_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def unquote(text: str) -> str:
    """A path as git prints it: C-quoted (with octal escapes for non-ASCII bytes) when it has special characters."""
    text = text.rstrip("\t")
    if not (len(text) >= 2 and text[0] == '"' and text[-1] == '"'):
        return text
    raw = bytearray()
    body, i = text[1:-1], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]):
                raw.append(int(body[i + 1 : i + 4], 8))
                i += 4
                continue
            raw += _ESCAPES.get(nxt, nxt).encode()
            i += 2
            continue
        raw += char.encode()
        i += 1
    return raw.decode("utf-8", errors="replace")


def _strip_prefix(path: str) -> str | None:
    path = unquote(path)
    if path == "/dev/null":
        return None
    return path[2:] if path[:2] in ("a/", "b/") else path


def _header_paths(header: str) -> tuple[str | None, str | None]:
    """Paths from `diff --git a/X b/Y` (only needed for parts without ---/+++ lines: binary, mode-only, empty)."""
    rest = header[len("diff --git ") :].rstrip("\n")
    if rest.startswith('"'):
        match = re.match(r'("(?:[^"\\]|\\.)*")\s+(.*)$', rest)
        if match:
            return _strip_prefix(match.group(1)), _strip_prefix(match.group(2))
    # Unquoted: "a/X b/X" for anything but a rename/copy (those carry `rename from/to` lines); split in the middle.
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[2:half] == rest[half + 3 :]:
        return _strip_prefix(rest[:half]), _strip_prefix(rest[half + 1 :])
    old, _, new = rest.partition(" b/")
    return _strip_prefix(old), new or None


def _file_patch(text: str) -> FilePatch:
    lines = text.split("\n")
    old, new = _header_paths(lines[0])
    created = deleted = False
    for line in lines[1:]:
        if line.startswith(("@@", "GIT binary patch", "Binary files ")):
            break
        if line.startswith("new file mode"):
            created = True
        elif line.startswith("deleted file mode"):
            deleted = True
        elif line.startswith(("rename from ", "copy from ")):
            old = unquote(line.split(" ", 2)[2])
        elif line.startswith(("rename to ", "copy to ")):
            new = unquote(line.split(" ", 2)[2])
        elif line.startswith("--- "):
            old = _strip_prefix(line[4:])
        elif line.startswith("+++ "):
            new = _strip_prefix(line[4:])
            break
    return FilePatch(old_path=None if created else old, new_path=None if deleted else new, text=text)


def split_patch(diff: str) -> tuple[str, list[FilePatch]]:
    """(text before the first file, the file parts) of a git diff; joining them gives the diff back exactly.

    Split on `diff --git` lines rather than through a diff parser: the parts must come back byte for byte, binary
    patches included, and no content line of a git diff can start with `diff --git ` (context and change lines
    start with ' ', '+', '-', '\\'; base85 lines have no space)."""
    starts = [match.start() for match in _FILE_START.finditer(diff)]
    if not starts:
        return diff, []
    ends = [*starts[1:], len(diff)]
    return diff[: starts[0]], [_file_patch(diff[start:end]) for start, end in zip(starts, ends)]


# --- writing one file's diff -----------------------------------------------------------------------------------


def git_lines(text: str) -> list[str]:
    """Lines with their `\\n` (git's notion of a line: `str.splitlines` also splits at \\r, \\f, \\x1c…)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _hunks(old: str, new: str) -> str:
    """Unified-diff hunks (git apply's format, `\\ No newline at end of file` included) from `old` to `new`."""
    lines = list(difflib.unified_diff(git_lines(old), git_lines(new), n=3, lineterm="\n"))[2:]  # minus ---/+++ lines
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def _quote(path: str) -> str:
    """A path as git writes it in a diff header: C-quoted when it has control, quote, backslash or non-ASCII
    characters (bytes as octal escapes)."""
    if not re.search(r'[\x00-\x1f"\\\x7f-\U0010ffff]', path):
        return path
    special = {ord('"'): '\\"', ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n"}
    out = [special.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}") for b in path.encode()]
    return '"' + "".join(out) + '"'


def file_diff(path: str, base: str | None, new: str, original: FilePatch) -> str:
    """A git diff of one file from `base` to `new`, keeping the original part's mode lines (not its index line:
    the blob ids no longer match, and git apply does not need them for text)."""
    header = original.text.split("\n@@", 1)[0].split("\n")
    modes = [line for line in header[1:] if line.startswith(("old mode", "new mode", "new file mode"))]
    if base is None and not any(line.startswith("new file mode") for line in modes):
        modes.append("new file mode 100644")
    if base is not None:
        modes = [line for line in modes if not line.startswith("new file mode")]
    quoted = _quote(f"a/{path}"), _quote(f"b/{path}")
    lines = [f"diff --git {quoted[0]} {quoted[1]}", *modes]
    lines += ["--- /dev/null" if base is None else f"--- {quoted[0]}", f"+++ {quoted[1]}"]
    return "\n".join(lines) + "\n" + _hunks(base or "", new)
