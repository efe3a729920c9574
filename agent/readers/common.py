"""What the readers share: streaming records out of a file, chat-message normalization, the SWE-agent action parser
and the error every reader raises (it names the file and the record index)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from agent.trajectory import Trajectory

CHUNK_CHARS = 1 << 20
"""Characters read per chunk when streaming a file; a record larger than this grows the read (doubling)."""


class ReaderError(ValueError):
    """A record (or the file) could not be read; the message starts with `PATH: record INDEX`."""


# ---------------------------------------------------------------------------------------------------------- streaming

_WS = re.compile(r"\s*")


def _skip_ws(text: str, pos: int) -> int:
    """The first non-whitespace position at or after pos (len(text) if none)."""
    match = _WS.match(text, pos)  # \s* matches everywhere
    return match.end() if match else pos


def iter_records(path: str | Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, Any]]:
    """Yield `(index, value)` for each top-level record of a JSON list, a JSONL file (or any whitespace-separated
    JSON values), optionally gzipped (`.gz`), holding about one record in memory at a time."""
    opener: Callable[..., Any] = gzip.open if str(path).endswith(".gz") else open
    decoder = json.JSONDecoder()
    with opener(path, "rt", encoding="utf-8") as handle:
        buf, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            chunk = "" if eof else handle.read(max(chunk_chars, len(buf) - pos))
            if not chunk:
                eof = True
                return False
            buf, pos = buf[pos:] + chunk, 0
            return True

        def skip_ws() -> bool:
            """Move past whitespace; False at the end of the file."""
            nonlocal pos
            while True:
                pos = _skip_ws(buf, pos)
                if pos < len(buf):
                    return True
                if not more():
                    return False

        def fail(index: int, reason: str) -> ReaderError:
            return ReaderError(f"{path}: record {index}: {reason}")

        if not skip_ws():
            return  # an empty file holds no records
        in_list = buf[pos] == "["
        if in_list:
            pos += 1
            if not skip_ws():
                raise fail(0, "unexpected end of file: the JSON list is not closed")
            if buf[pos] == "]":
                return
        index = 0
        while True:
            if not skip_ws():
                if in_list:
                    raise fail(index, "unexpected end of file: the JSON list is not closed")
                return
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    # An error at the end of the buffer (or inside a string running to it) may just mean the record
                    # continues in the next chunk; anywhere else the record is malformed.
                    maybe_cut = exc.pos >= len(buf) - 16 or exc.msg.startswith("Unterminated string")
                    if not maybe_cut:
                        raise fail(index, f"invalid JSON: {exc}") from None
                    if not more():
                        raise fail(index, f"invalid JSON (the file ends inside this record): {exc}") from None
            pos = end
            yield index, value
            index += 1
            if in_list:
                if not skip_ws():
                    raise fail(index, "unexpected end of file: the JSON list is not closed")
                sep = buf[pos]
                pos += 1
                if sep == "]":
                    return
                if sep != ",":
                    raise fail(index, f"invalid JSON: expected ',' or ']' after record {index - 1}, found {sep!r}")


def read_with(
    path: str | Path, convert: Callable[[dict[str, Any]], Trajectory], records: Iterable[tuple[int, Any]] | None = None
) -> Iterator[Trajectory]:
    """Stream `convert(record)` over a file's records (or over `records`, already read from `path`); any failure
    raises ReaderError naming the file and the record."""
    for index, record in iter_records(path) if records is None else records:
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, found {type(record).__name__}")
            trajectory = convert(record)
        except (KeyError, TypeError, ValueError) as exc:
            label = record.get("instance_id") if isinstance(record, dict) else None
            where = f"record {index}" + (f" ({label})" if isinstance(label, str) else "")
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ReaderError(f"{path}: {where}: {reason}") from exc
        yield trajectory


# ---------------------------------------------------------------------------------------------------- record helpers


def require(record: dict[str, Any], *fields: str) -> None:
    missing = [name for name in fields if record.get(name) is None]
    if missing:
        raise ValueError(f"missing required field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")


_ADP_SUFFIX = re.compile(r"(.+-\d+)_(\d+)")


def split_instance_id(instance_id: str) -> tuple[str, int | None]:
    """`owner__repo-123_4` -> (`owner__repo-123`, 4): the agent-data-protocol export appends `_<n>` (the n-th
    trajectory of that instance) to SWE-bench-style ids; a plain id comes back unchanged with None."""
    match = _ADP_SUFFIX.fullmatch(instance_id)
    return (match.group(1), int(match.group(2))) if match else (instance_id, None)


def reward_of(resolved: bool | None) -> float | None:
    return None if resolved is None else float(resolved)


def content_hash(*parts: Any) -> str:
    """A short stable digest, for records whose source gives no unique id."""
    digest = hashlib.sha1()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def drop_none(value: Any) -> Any:
    """Recursively remove None-valued keys (pydantic dumps of OpenHands tool schemas carry `"enum": null`, …)."""
    if isinstance(value, dict):
        return {key: drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_none(item) for item in value]
    return value


_DIFF_FILE = re.compile(r"^diff --git a/(\S+) b/", re.MULTILINE)


def checked_patch(patch: Any, messages: list[dict[str, Any]]) -> tuple[str | None, dict[str, Any]]:
    """(patch, extra keys). A patch none of whose files the conversation ever mentions, by path or by file name, is
    not this episode's diff (SWE-smith rows carry diffs of other repositories): it moves to the extra key
    `mismatched_patch`. An empty patch is None; text without `diff --git` headers is kept as it is."""
    if not isinstance(patch, str) or not patch.strip():
        return None, {}
    files = _DIFF_FILE.findall(patch)
    if not files:
        return patch, {}
    texts = [m["content"] if isinstance(m["content"], str) else json.dumps(m["content"]) for m in messages]
    texts += [c["function"]["arguments"] for m in messages for c in m.get("tool_calls", [])]
    names = {re.escape(path) for path in files} | {re.escape(path.rsplit("/", 1)[-1]) for path in files}
    mentioned = re.compile(r"(?<![\w.-])(?:" + "|".join(sorted(names)) + r")(?![\w-])")
    if any(mentioned.search(text) for text in texts):
        return patch, {}
    return None, {"mismatched_patch": patch}


# ----------------------------------------------------------------------------------------------------------- messages


def text_content(content: Any) -> Any:
    """None -> "", a single text part -> its text; strings and other part lists are kept as they are."""
    if content is None:
        return ""
    if (
        isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], dict)
        and content[0].get("type", "text") == "text"
        and isinstance(content[0].get("text"), str)
    ):
        return content[0]["text"]
    return content


def normalize_tool_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise ValueError(f"{where}: a tool call must be an object")
    function = call.get("function") or {}
    name, arguments = function.get("name"), function.get("arguments")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: tool call without a function name")
    if arguments is None:
        arguments = "{}"
    elif not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": call.get("id") or where.replace(" ", "_"),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def normalize_message(raw: Any, index: int) -> dict[str, Any]:
    """An OpenAI-format message with only the standard keys (role, content, tool_calls, tool_call_id, name,
    reasoning_content), None values dropped; SWE-agent's `tool_call_ids: [id]` becomes `tool_call_id`."""
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]  # some SWE-smith rows wrap a message in a one-element list
    if not isinstance(raw, dict) or not isinstance(raw.get("role"), str):
        raise ValueError(f"message {index}: not a chat message with a role")
    message: dict[str, Any] = {"role": raw["role"], "content": text_content(raw.get("content"))}
    if raw.get("tool_calls"):
        message["tool_calls"] = [
            normalize_tool_call(call, f"call {index} {k}") for k, call in enumerate(raw["tool_calls"])
        ]
    call_id = raw.get("tool_call_id")
    ids = raw.get("tool_call_ids")
    if not call_id and isinstance(ids, list) and len(ids) == 1:
        call_id = ids[0]
    if call_id:
        message["tool_call_id"] = call_id
    for key in ("name", "reasoning_content"):
        if isinstance(raw.get(key), str) and raw[key]:
            message[key] = raw[key]
    return message


def malformed_structured_calls(messages: list[dict[str, Any]]) -> int:
    """Assistant turns with a tool call whose arguments are not a JSON object."""

    def bad(call: dict[str, Any]) -> bool:
        try:
            return not isinstance(json.loads(call["function"]["arguments"]), dict)
        except json.JSONDecodeError:
            return True

    return sum(1 for m in messages if m["role"] == "assistant" and any(bad(c) for c in m.get("tool_calls", [])))


def count_turns(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(assistant turns, tool calls)."""
    turns = [m for m in messages if m["role"] == "assistant"]
    return len(turns), sum(len(m.get("tool_calls", [])) for m in turns)


ParsedAction = tuple[str, str, dict[str, Any]]
"""(the assistant text left as content, tool name, arguments)."""


def link_text_actions(messages: list[dict[str, Any]], parse: Callable[[str], ParsedAction | None]) -> int:
    """Turn text-format actions into tool calls, in place, and return the turns that carry none (malformed).

    Each assistant message whose text `parse` accepts gets one tool call (`call_<message index>`) and keeps the rest
    of its text as content; the user message right after it is that call's output and becomes role `tool`. Anything
    else stays as it is: an assistant turn without a parsable action keeps its full text (counted as malformed: the
    SWE-agent formats demand one action per turn) and the user message after it stays a user message."""
    malformed = 0
    pending: tuple[str, str] | None = None  # (call id, tool name) waiting for its output
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "assistant":
            pending = None
            parsed = parse(message["content"]) if isinstance(message["content"], str) else None
            if parsed is None:
                malformed += 1
                continue
            content, name, arguments = parsed
            pending = (f"call_{index}", name)
            message["content"] = content
            message["tool_calls"] = [
                {
                    "id": pending[0],
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
                }
            ]
        elif role == "user" and pending is not None:
            messages[index] = {
                "role": "tool",
                "tool_call_id": pending[0],
                "name": pending[1],
                "content": message["content"],
            }
            pending = None
        else:
            pending = None
    return malformed


# -------------------------------------------------------------------------------------- SWE-agent's ``` action blocks

SHELL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": (
            "Run one action in SWE-agent's shell: a bash command or one of the special commands the system "
            "prompt lists. (Synthesized by the reader: the model wrote the action in a ``` block.)"
        ),
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The action text, as written in the block."}},
            "required": ["command"],
        },
    },
}
"""The one tool of SWE-agent's backtick format, where every action is text run in its shell."""

_FENCE = re.compile(r"^```(\S*)\s*\n|^```\s*$", re.MULTILINE)


def parse_fenced_action(text: str) -> ParsedAction | None:
    """SWE-agent's ThoughtActionParser: the action is the last top-level ``` block (blocks may nest, e.g. a markdown
    file written by `edit`); the text around it is the thought. No complete block: None (SWE-agent's format error).
    The action keeps its text minus the newline before the closing fence; the thought is right-stripped."""
    stack: list[re.Match[str]] = []
    last: tuple[re.Match[str], re.Match[str]] | None = None
    for match in _FENCE.finditer(text):
        if stack and not match.group(1):
            start = stack.pop()
            if not stack:
                last = (start, match)
        elif match.group(1) is not None:
            stack.append(match)
    if last is None:
        return None
    start, end = last
    action = text[start.end() : end.start()].removesuffix("\n")
    thought = (text[: start.start()] + text[end.end() :]).rstrip()
    return thought, SHELL_TOOL["function"]["name"], {"command": action}
