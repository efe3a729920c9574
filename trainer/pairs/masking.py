"""A trajectory as a pair's context: rendered as text, with patch contents masked, so that a model cannot pick the
positive by matching strings of the answer's change (DESIGN.md, "The method": patch contents are masked).

Masking, in order:
1. Structure (`mask_messages`), on the messages before rendering:
   - a tool call's string arguments named like edit contents (`EDIT_KEYS`: `file_text`, `old_str`, `new_str`,
     `content`, …: str_replace_editor create / str_replace / insert and its look-alikes) become PLACEHOLDER;
   - shell commands (a call's `command` / `cmd` / `code` argument): the body of a heredoc that writes a file
     (`cat > f <<EOF`, `tee`, `patch`, `git apply`, or a body that calls `.write(`), SWE-agent's
     `edit N:M … end_of_edit` and `insert N … end_of_insert` bodies, and any line that edits in place (`sed -i`,
     `perl -pi`) or writes a file with `echo` / `printf` redirected to it;
   - the output of such an edit call, and of a command that prints diffs (`git diff`, `git show`, `diff -u`, …), is
     replaced whole (editors echo the edited snippet; diffs are the patch);
   - in every message's text, each block of unified-diff lines (`diff --git`, `---` + `+++`, `@@ -a,b +c,d @@` and
     the hunk lines after them) becomes one PLACEHOLDER line;
   - the task's issue text inside the first user message becomes ISSUE_PLACEHOLDER (`omit_issue`): the query *is* that
     text, and a context that quotes the query verbatim would give the label away.
2. Rendering (`render`): one `[role]` header per message, tool calls as `[assistant → NAME]` and their arguments,
   outputs as `[NAME output]`; long outputs keep their head and tail (`max_output_chars`); `\\r\\n` becomes `\\n`.
3. Lines (`scrub.LineScrubber`), on the rendered text: any line that still contains a non-trivial patch line (of the
   anchor's or the confounder's patch; `diffs.patch_lines`) becomes LINE_PLACEHOLDER; `scrub` also masks quoted
   stretches and issue terms, and states the guarantee that this pass makes checkable.
"""

from __future__ import annotations

import json
import re
from typing import Any

from trainer.pairs.diffs import normalize_newlines

PLACEHOLDER = "[patch content masked]"
LINE_PLACEHOLDER = "[line masked]"
ISSUE_PLACEHOLDER = "[issue text omitted]"
OUTPUT_MARKER = "\n[… middle of this output omitted …]\n"

EDIT_KEYS = frozenset(
    {"file_text", "old_str", "new_str", "content", "new_content", "patch", "diff", "code_edit", "replacement", "text"}
)
"""Tool-call arguments that carry file contents or edits."""
SHELL_KEYS = ("command", "cmd", "code")
"""Tool-call arguments that carry shell (or script) text."""

_ISSUE_SPANS = [
    # mini-swe-agent frames the issue with a fixed sentence inside the tags: the issue is what follows it
    re.compile(r"<pr_description>\nConsider the following PR description:\n(.*?)\n?</pr_description>", re.DOTALL),
    re.compile(r"<pr_description>\n?(.*?)\n?</pr_description>", re.DOTALL),
    re.compile(r"<issue_description>\n?(.*?)\n?</issue_description>", re.DOTALL),
    re.compile(r"<issue>\n?(.*?)\n?</issue>", re.DOTALL),
    re.compile(r"ISSUE:\n(.*?)\n+INSTRUCTIONS:", re.DOTALL),
]

# ------------------------------------------------------------------------------------------------------- issue text


def text_of(content: Any) -> str:
    """A message's content as text (a list of parts: their texts joined; anything else: JSON)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text", "") if isinstance(part, dict) else str(part) for part in content]
        if all(isinstance(part, dict) and part.get("type", "text") == "text" for part in content):
            return "\n".join(parts)
    return "" if content is None else json.dumps(content, ensure_ascii=False, sort_keys=True)


def first_user_index(messages: list[dict[str, Any]]) -> int | None:
    return next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)


def issue_span(text: str) -> tuple[int, int] | None:
    """Where the issue text sits inside a task prompt (SWE-smith / OpenHands `<pr_description>`, our env server's
    `<issue_description>`, SWE-agent's `ISSUE: … INSTRUCTIONS:`); None when no frame matches."""
    for pattern in _ISSUE_SPANS:
        match = pattern.search(text)
        if match and match.group(1).strip():
            return match.start(1), match.end(1)
    return None


def problem_statement(messages: list[dict[str, Any]], given: str | None = None) -> str:
    """The task's issue text: `given` (a record's own `problem_statement`), else the framed span of the first user
    message, else that whole message."""
    if given and given.strip():
        return normalize_newlines(given).strip()
    index = first_user_index(messages)
    if index is None:
        return ""
    text = text_of(messages[index].get("content"))
    span = issue_span(text)
    return normalize_newlines(text[span[0] : span[1]] if span else text).strip()


# ------------------------------------------------------------------------------------------------- shell commands

_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_FILE_REDIRECT = re.compile(r"(?:^|[^0-9&>])>>?\s*(?!&)(?!/dev/null\b)[^\s|;&<>]+")
_WRITES_FILE = re.compile(r"\btee\b|\bpatch\b|\bgit\s+apply\b")
_BODY_WRITES = re.compile(r"\.write(?:_text|_bytes|lines)?\(")
_IN_PLACE = re.compile(r"\bsed\b[^\n]*?\s(?:-i|--in-place)|\bperl\b[^\n]*?\s-[a-z]*i|\b(?:echo|printf)\b.*>")
_SWE_AGENT_EDIT = re.compile(r"^(edit\s+\d+(?::\d+)?|insert\s+\d+)\s*$")
_SWE_AGENT_END = re.compile(r"^end_of_(?:edit|insert)\s*$")
_PRINTS_DIFF = re.compile(r"\bgit\s+(?:diff|show|stash\s+show|format-patch|log\s+-p)\b|\bdiff\s+-[a-zA-Z]*u")


_QUOTED = re.compile(r"'[^']*'|\"(?:\\.|[^\"\\])*\"")
_PATH_TOKEN = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.[A-Za-z]\w{0,5})(?![\w/-])")


def _masked_edit_line(line: str) -> str:
    """An in-place edit line (`sed -i 's/…/…/' path`) as PLACEHOLDER, keeping the files it names outside quotes: the
    expression is patch content, which file was edited is not (it is the evidence that the trajectory made the
    answer's change)."""
    paths = [p for p in _PATH_TOKEN.findall(_QUOTED.sub(" ", line)) if not p.startswith("-")]
    return PLACEHOLDER + (f" (files: {', '.join(dict.fromkeys(paths))})" if paths else "")


def mask_shell(command: str) -> tuple[str, bool]:
    """(command with edit contents masked, whether it edits files): heredoc bodies that write files, SWE-agent edit
    bodies, in-place edit / redirected echo lines."""
    lines = normalize_newlines(command).split("\n")
    out: list[str] = []
    edits = False
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        edit = _SWE_AGENT_EDIT.match(line.strip())
        if edit and any(_SWE_AGENT_END.match(rest.strip()) for rest in lines[index:]):
            out += [line, PLACEHOLDER]
            while not _SWE_AGENT_END.match(lines[index].strip()):
                index += 1
            out.append(lines[index])
            index += 1
            edits = True
            continue
        heredocs = list(_HEREDOC.finditer(line))
        if not heredocs:
            if _IN_PLACE.search(line):
                out.append(_masked_edit_line(line))
                edits = True
            else:
                out.append(line)
            continue
        out.append(_masked_edit_line(line) if _IN_PLACE.search(line) else line)
        for heredoc in heredocs:
            strip_tabs, delimiter = heredoc.group(1) == "-", heredoc.group(3)
            body: list[str] = []
            while index < len(lines) and (lines[index].lstrip("\t") if strip_tabs else lines[index]) != delimiter:
                body.append(lines[index])
                index += 1
            writes = (
                _FILE_REDIRECT.search(line)
                or _WRITES_FILE.search(line)
                or any(_BODY_WRITES.search(text) for text in body)
            )
            if writes and body:
                out.append(PLACEHOLDER)
                edits = True
            else:
                out += body
            if index < len(lines):
                out.append(lines[index])
                index += 1
    return "\n".join(out), edits


# -------------------------------------------------------------------------------------------------------- diffs


_DIFF_START = re.compile(r"^(?:diff --git |diff -[a-zA-Z]*u|@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@)")
_ANY_DIFF = re.compile(r"^(?:diff |@@ -|--- )", re.MULTILINE)
_DIFF_BODY = re.compile(
    r"^(?:[ +\-\\]|@@ |diff |index |new file|deleted file|old mode|new mode|similarity |rename |"
    r"Binary files )"
)


def mask_diff_blocks(text: str) -> str:
    """Each block of unified-diff lines becomes one PLACEHOLDER line. A block starts at `diff --git`, at `--- X`
    followed by `+++ Y`, or at a hunk header, and runs while lines look like diff lines (blank lines inside it
    included when a diff line follows)."""
    text = normalize_newlines(text)
    if not _ANY_DIFF.search(text):
        return text  # most messages: one C-level search instead of a walk over their lines
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        starts = _DIFF_START.match(line) or (
            line.startswith("--- ") and index + 1 < len(lines) and lines[index + 1].startswith("+++ ")
        )
        if not starts:
            out.append(line)
            index += 1
            continue
        index += 1
        while index < len(lines):
            if (
                _DIFF_BODY.match(lines[index])
                or lines[index] == ""
                and index + 1 < len(lines)
                and _DIFF_BODY.match(lines[index + 1])
            ):
                index += 1
            else:
                break
        out.append(PLACEHOLDER)
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------- messages


def _arguments(call: dict[str, Any]) -> Any:
    raw = call.get("function", {}).get("arguments")
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _mask_call(call: dict[str, Any]) -> tuple[str, Any, bool, bool]:
    """(tool name, masked arguments, edits files, prints a diff)."""
    name = call.get("function", {}).get("name", "?")
    arguments = _arguments(call)
    if isinstance(arguments, str):
        masked, edits = mask_shell(arguments)
        return name, mask_diff_blocks(masked), edits, bool(_PRINTS_DIFF.search(arguments))
    if not isinstance(arguments, dict):
        return name, arguments, False, False
    masked_args: dict[str, Any] = {}
    edits = diff = False
    for key, value in arguments.items():
        if key in EDIT_KEYS and isinstance(value, str):
            masked_args[key] = PLACEHOLDER
            edits = True
        elif key in SHELL_KEYS and isinstance(value, str):
            text, shell_edits = mask_shell(value)
            masked_args[key] = mask_diff_blocks(text)
            edits = edits or shell_edits
            diff = diff or bool(_PRINTS_DIFF.search(value))
        elif isinstance(value, str):
            masked_args[key] = mask_diff_blocks(value)
        else:
            masked_args[key] = value
    return name, masked_args, edits, diff


def mask_messages(messages: list[dict[str, Any]], omit_issue: bool = True) -> list[dict[str, Any]]:
    """Masked copies of the messages (step 1 of the module docstring); tool calls come back with their arguments
    decoded (a dict, or the raw string when it is not JSON)."""
    masked: list[dict[str, Any]] = []
    hidden_outputs: set[str] = set()
    first_user = first_user_index(messages)
    for index, message in enumerate(messages):
        role = message.get("role", "?")
        text = normalize_newlines(text_of(message.get("content")))
        if index == first_user and omit_issue:
            span = issue_span(text)
            if span:
                text = text[: span[0]] + ISSUE_PLACEHOLDER + text[span[1] :]
        item: dict[str, Any] = {"role": role, "name": message.get("name")}
        if role == "tool" and message.get("tool_call_id") in hidden_outputs:
            item["content"] = PLACEHOLDER
        else:
            item["content"] = mask_diff_blocks(text)
        calls = []
        for k, call in enumerate(message.get("tool_calls") or []):
            name, arguments, edits, diff = _mask_call(call)
            if edits or diff:
                hidden_outputs.add(call.get("id") or f"call_{index}_{k}")
            calls.append({"name": name, "arguments": arguments})
        if calls:
            item["tool_calls"] = calls
        masked.append(item)
    return masked


def _cut(text: str, max_chars: int) -> str:
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = max_chars // 2
    return text[:head] + OUTPUT_MARKER + text[len(text) - (max_chars - head) :]


def _render_arguments(name: str, arguments: Any) -> str:
    if isinstance(arguments, dict):
        shell = [key for key in SHELL_KEYS if isinstance(arguments.get(key), str)]
        if shell and len(arguments) == 1:
            return arguments[shell[0]]
        parts = []
        for key, value in arguments.items():
            if isinstance(value, str) and "\n" in value:
                parts.append(f"{key}:\n{value}")
            else:
                parts.append(f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
        return "\n".join(parts)
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def render(messages: list[dict[str, Any]], include_system: bool = False, max_output_chars: int = 4000) -> str:
    """Masked messages (from `mask_messages`) as one text (step 2 of the module docstring)."""
    blocks: list[str] = []
    for message in messages:
        role = message["role"]
        if role == "system" and not include_system:
            continue
        content = message["content"]
        if role == "tool":
            blocks.append(f"[{message.get('name') or 'tool'} output]\n{_cut(content, max_output_chars)}")
            continue
        if content.strip():
            blocks.append(f"[{role}]\n{_cut(content, max_output_chars) if role != 'assistant' else content}")
        for call in message.get("tool_calls", []):
            blocks.append(f"[{role} → {call['name']}]\n{_render_arguments(call['name'], call['arguments'])}")
    return normalize_newlines("\n\n".join(blocks))
