"""Turn a unified git diff into the tool calls an agent would make: editor operations or a bash `git apply`."""

from __future__ import annotations

import re
from typing import Any

_FILE = re.compile(r"^diff --git a/(\S+) b/(\S+)$")
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")


def editor_calls(patch: str, workdir: str) -> list[dict[str, Any]]:
    """str_replace_editor calls (create for new files, one str_replace per hunk) that apply `patch`."""
    calls: list[dict[str, Any]] = []
    path = None
    new_file = False
    old: list[str] = []
    new: list[str] = []
    in_hunk = False

    def flush() -> None:
        nonlocal old, new
        if path is None or not (old or new):
            return
        if new_file:
            calls.append({"command": "create", "path": f"{workdir}/{path}", "file_text": "".join(new)})
        else:
            calls.append(
                {
                    "command": "str_replace",
                    "path": f"{workdir}/{path}",
                    "old_str": "".join(old),
                    "new_str": "".join(new),
                }
            )
        old, new = [], []

    for line in patch.splitlines(keepends=True):
        match = _FILE.match(line.rstrip("\n"))
        if match:
            flush()
            path, new_file, in_hunk = match.group(2), False, False
            continue
        if line.startswith("new file mode"):
            new_file = True
            continue
        if _HUNK.match(line):
            if not new_file:
                flush()
            in_hunk = True
            continue
        if not in_hunk or line.startswith("\\"):
            continue
        tag, body = line[:1], line[1:]
        if tag in (" ", "\n"):
            body = body if tag == " " else "\n"
            old.append(body)
            new.append(body)
        elif tag == "-":
            old.append(body)
        elif tag == "+":
            new.append(body)
    flush()
    return calls


def bash_apply_command(patch: str, workdir: str) -> str:
    """One execute_bash command that writes the patch with a here-document and applies it with git."""
    return f"cd {workdir} && cat > /tmp/gold.patch <<'ENVSERVER_PATCH_EOF'\n{patch}ENVSERVER_PATCH_EOF\ngit apply /tmp/gold.patch && echo APPLIED"
