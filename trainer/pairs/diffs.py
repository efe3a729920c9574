"""A trajectory's final patch, read as a unified diff (the `unidiff` package): which files and functions it edits,
what it changes (for the pair's answer), and its lines (for masking and the masking check).

Edited files: every file the patch touches, except a file it *creates at the repository's top level* (no `/` in the
path): that is where agents leave their scratch scripts (`reproduce_error.py`, `test_fix.py`), which say nothing about
the fix (`drop_top_level_new_files`). A patch that cannot be parsed edits nothing.

Edited functions ("scopes"), per hunk:
- Python files (`.py`, `.pyi`): the scope stack starts from the hunk header's section (the text after the second
  `@@`) when it is a `def` / `async def` / `class` line, at the indentation it shows there. The hunk's lines are walked
  in order (context, removed and added alike); a non-blank line at indentation i closes every open scope whose
  `def` / `class` line is indented ≥ i (unless it starts with a closing bracket: the end of a multi-line signature or
  call), and a `def` / `class` line then opens a scope. A changed (added or removed)
  non-blank line belongs to the innermost open scope, named by the dotted path of the open scopes (`Class.method`,
  `outer.inner`); a changed `def` / `class` line belongs to the scope it opens. Changed lines with no open scope are
  module-level: the file counts as edited, no function does. The rule sees only what the hunk shows: a method whose
  `def` line is outside the hunk, under a header that names its class (git's default header shows unindented lines
  only), is reported as the class — kept in the answer's description, but not a function for the miner's
  same_function stage (`class_scopes`, `PatchSummary.scopes`).
  The answer's "names the new code uses" come from the code of added / removed lines, string literals and `#`
  comments left out.
- Other files: the header's section, when it holds an identifier followed by `(`, names the function (the identifier
  right before the first `(`); otherwise the hunk edits no named function.
Scopes are keyed `path::qualname`.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field

from unidiff import Hunk, PatchSet
from unidiff.errors import UnidiffParseError

_PY_SUFFIXES = (".py", ".pyi")
_SCOPE_LINE = re.compile(r"^(\s*)(?:async\s+def|def|class)\s+([A-Za-z_]\w*)")
_CALL_NAME = re.compile(r"([A-Za-z_]\w*)\s*\(")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_WORD_CHARS = re.compile(r"\w")
_CLOSERS = (")", "]", "}")
_STRING = re.compile(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"")


@dataclass
class FileEdit:
    """What a patch does to one file."""

    path: str
    status: str
    """`modified`, `added` or `removed`."""
    functions: list[str] = field(default_factory=list)
    """Qualified names of the edited scopes, in order of first appearance."""
    class_scopes: list[str] = field(default_factory=list)
    """The scopes of `functions` that are a class body as far as the hunk shows (a method whose `def` line is
    outside the hunk, under a header naming the class): not a function."""
    added: int = 0
    removed: int = 0
    new_names: list[str] = field(default_factory=list)
    """Names (identifiers, dotted) on added lines that no removed line of this file has, in order of appearance."""
    dropped_names: list[str] = field(default_factory=list)
    """Names on removed lines that no added line of this file has."""


@dataclass
class PatchSummary:
    """The edited files (scratch files left out) and a parse error, if any."""

    files: list[FileEdit] = field(default_factory=list)
    error: str | None = None

    @property
    def paths(self) -> list[str]:
        return [edit.path for edit in self.files]

    @property
    def scopes(self) -> list[str]:
        """`path::qualname` of every edited function or method (class bodies left out: two patches inside one big
        class, `Query` or `SQLCompiler`, need not touch the same code)."""
        return [
            f"{edit.path}::{name}" for edit in self.files for name in edit.functions if name not in edit.class_scopes
        ]


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _parse(patch: str) -> PatchSet:
    text = normalize_newlines(patch).strip("\n") + "\n"
    return PatchSet(text)


def _indent(text: str) -> int:
    return len(text.expandtabs(8)) - len(text.expandtabs(8).lstrip())


def _python_scopes(hunk: Hunk) -> list[tuple[str, bool]]:
    """(qualified name, whether the innermost scope is a function) per edited scope, in order."""
    stack: list[tuple[int, str, bool]] = []
    header = _SCOPE_LINE.match(hunk.section_header or "")
    if header:
        stack.append((_indent(header.group(1)), header.group(2), not header.group(0).lstrip().startswith("class")))
    found: dict[str, bool] = {}
    for line in hunk:
        text = line.value.rstrip("\n")
        if not text.strip():
            continue
        indent = _indent(text)
        # A line that starts with a closing bracket ends a multi-line signature or call: it closes nothing.
        while stack and stack[-1][0] >= indent and text.lstrip()[:1] not in _CLOSERS:
            stack.pop()
        opened = _SCOPE_LINE.match(text)
        if opened:
            stack.append((indent, opened.group(2), not opened.group(0).lstrip().startswith("class")))
        if (line.is_added or line.is_removed) and stack:
            found.setdefault(".".join(part for _, part, _ in stack), stack[-1][2])
    return list(found.items())


def _header_function(hunk: Hunk) -> list[tuple[str, bool]]:
    match = _CALL_NAME.search(hunk.section_header or "")
    return [(match.group(1), True)] if match else []


def _names(lines: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for text in lines:
        # Names in the code only: string literals and comments are prose, not what the code uses.
        code = _STRING.sub(" ", text).split("#", 1)[0]
        for name in _NAME.findall(code):
            if len(name) >= 2 and not keyword.iskeyword(name):
                seen.setdefault(name, None)
    return list(seen)


def summarize_patch(patch: str | None, drop_top_level_new_files: bool = True) -> PatchSummary:
    """Files and functions a patch edits (rules in the module docstring); an empty or missing patch edits none."""
    if not patch or not patch.strip():
        return PatchSummary()
    try:
        patch_set = _parse(patch)
    except UnidiffParseError as exc:
        return PatchSummary(error=f"unparseable patch: {exc}")
    edits: list[FileEdit] = []
    for patched in patch_set:
        path = patched.path  # unidiff has taken the a/ and b/ prefixes off already
        status = "added" if patched.is_added_file else "removed" if patched.is_removed_file else "modified"
        if drop_top_level_new_files and status == "added" and "/" not in path:
            continue
        edit = FileEdit(path=path, status=status)
        added_lines: list[str] = []
        removed_lines: list[str] = []
        for hunk in patched:
            scopes = _python_scopes(hunk) if path.endswith(_PY_SUFFIXES) else _header_function(hunk)
            if not path.endswith(_PY_SUFFIXES) and not any(line.is_added or line.is_removed for line in hunk):
                scopes = []
            for name, is_function in scopes:
                if name not in edit.functions:
                    edit.functions.append(name)
                    if not is_function:
                        edit.class_scopes.append(name)
                elif is_function and name in edit.class_scopes:
                    edit.class_scopes.remove(name)
            for line in hunk:
                if line.is_added:
                    added_lines.append(line.value)
                elif line.is_removed:
                    removed_lines.append(line.value)
        edit.added, edit.removed = len(added_lines), len(removed_lines)
        new, old = _names(added_lines), _names(removed_lines)
        edit.new_names = [name for name in new if name not in set(old)]
        edit.dropped_names = [name for name in old if name not in set(new)]
        edits.append(edit)
    return PatchSummary(files=edits)


def patch_lines(patch: str | None, min_chars: int) -> list[str]:
    """The patch's non-trivial lines: every added or removed line (all files, scratch files too), without its `+` /
    `-` marker, whitespace runs collapsed to one space and stripped, kept when it has at least `min_chars` characters
    and one letter, digit or underscore. Unique, in order of appearance. Falls back to a line scan (`+` / `-` lines
    outside `+++` / `---` headers) when the patch does not parse, so masking never depends on a clean diff."""
    if not patch:
        return []
    raw: list[str] = []
    try:
        for patched in _parse(patch):
            for hunk in patched:
                raw.extend(line.value for line in hunk if line.is_added or line.is_removed)
    except UnidiffParseError:
        raw = [
            line[1:]
            for line in normalize_newlines(patch).split("\n")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
    seen: dict[str, None] = {}
    for text in raw:
        norm = collapse(text)
        if len(norm) >= min_chars and _WORD_CHARS.search(norm):
            seen.setdefault(norm, None)
    return list(seen)


def collapse(text: str) -> str:
    """Whitespace runs as one space, stripped: the form in which patch lines and context lines are compared."""
    return " ".join(text.split())


def describe(summary: PatchSummary, max_names: int = 6) -> str:
    """The answer A: the change at the level of files and functions and what it does, without any diff line.

    One line per file: its path, the functions it edits, how many lines are added / removed, and the names the new
    code introduces and the ones it stops using (at most `max_names` each)."""

    def names(items: list[str]) -> str:
        shown = ", ".join(f"`{name}`" for name in items[:max_names])
        return shown + (f" and {len(items) - max_names} more" if len(items) > max_names else "")

    count = len(summary.files)
    lines = [f"The fix edits {count} file{'s' if count != 1 else ''}."]
    for edit in summary.files:
        if edit.status == "added":
            what = f"creates `{edit.path}` ({_lines(edit.added)})"
        elif edit.status == "removed":
            what = f"deletes `{edit.path}` ({_lines(edit.removed)})"
        else:
            where = (
                (" in " + ", ".join(f"`{name}`" for name in edit.functions)) if edit.functions else " at module level"
            )
            what = f"changes `{edit.path}`{where}: {_counts(edit.added, edit.removed)}"
        details = []
        if edit.new_names and edit.status != "removed":
            details.append(f"the new code uses {names(edit.new_names)}")
        if edit.dropped_names and edit.status == "modified":
            details.append(f"it no longer uses {names(edit.dropped_names)}")
        lines.append(f"- It {what}" + ("; " + "; ".join(details) if details else "") + ".")
    return "\n".join(lines)


def _lines(k: int) -> str:
    return f"{k} line{'s' if k != 1 else ''}"


def _counts(added: int, removed: int) -> str:
    if added and removed:
        return f"replaces {_lines(removed)} with {_lines(added)}"
    if added:
        return f"adds {_lines(added)}"
    return f"removes {_lines(removed)}"
