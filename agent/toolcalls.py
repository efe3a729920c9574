"""Parse an assistant completion (Qwen3 / Hermes format) into content, reasoning and tool calls.

The format our chat template teaches (agent/chat_template.py):

    <think>\\nreasoning\\n</think>\\n\\ncontent\\n<tool_call>\\n{"name": "execute_bash", "arguments": {...}}\\n</tool_call>

Parsing never raises on model output: every malformed `<tool_call>` block becomes one human-readable entry in
`errors` (the agent loop shows them to the model), the well-formed ones are still returned. Being strict here is a
training signal — a call the parser guessed at would reward sloppy output — with two tolerances real models need:
`arguments` missing means no arguments, and `arguments` given as a JSON *string* holding an object is accepted
(OpenAI's wire format, which models trained on OpenAI-style data imitate).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

_TAG = re.compile(re.escape(CALL_OPEN) + "|" + re.escape(CALL_CLOSE))


@dataclass
class ToolCall:
    """One parsed call."""

    id: str
    """Deterministic: `call_{turn}_{index}` (index among this turn's valid calls), unless the source gave one."""
    name: str
    arguments: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        """OpenAI chat format (`arguments` as a JSON string), as recorded in trajectory messages."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass
class ParsedAssistant:
    """What an assistant completion says."""

    content: str
    """Text outside the leading think block and the tool-call blocks, stripped at both ends."""
    reasoning: str | None
    """Text of a leading <think>…</think> block (newlines at its ends stripped); None when there is none. An
    unclosed leading <think> (the turn ran out of tokens) counts: everything after it is reasoning."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """One message per malformed tool-call block."""

    def to_message(self) -> dict[str, Any]:
        """The OpenAI-format assistant message (`reasoning_content` only when there was reasoning)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        return message


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, rest) for a completion that may start (after whitespace) with a <think> block."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return None, text
    body = stripped[len(THINK_OPEN) :]
    end = body.find(THINK_CLOSE)
    if end < 0:
        return body.strip("\n"), ""
    return body[:end].strip("\n"), body[end + len(THINK_CLOSE) :]


def _short(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _shorten(value: object, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


def _check_call(payload: Any, where: str) -> tuple[str, dict[str, Any]] | str:
    """(name, arguments), or the error message."""
    if not isinstance(payload, dict):
        return f'{where}: expected a JSON object with "name" and "arguments", got {type(payload).__name__}'
    name = payload.get("name")
    if name is None:
        return f'{where}: missing "name"'
    if not isinstance(name, str) or not name.strip():
        return f'{where}: "name" must be a non-empty string, got {_shorten(name)}'
    arguments = payload.get("arguments", {})
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return f'{where} ({name}): "arguments" is a string that is not valid JSON ({exc.msg})'
        arguments = decoded
    if not isinstance(arguments, dict):
        return f'{where} ({name}): "arguments" must be a JSON object, got {type(arguments).__name__}'
    return name, arguments


def parse_tool_call_json(body: str, where: str) -> tuple[str, dict[str, Any]] | str:
    """One block's JSON body → (name, arguments), or the error message."""
    if not body.strip():
        return f"{where}: empty <tool_call> block"
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"{where}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {_short(body)}"
    return _check_call(payload, where)


def parse_assistant(text: str, turn: int = 0) -> ParsedAssistant:
    """Parse a completion's text (special tokens such as <|im_end|> already removed).

    `turn` only names the calls' ids. Blocks are scanned left to right: a <tool_call> that meets another
    <tool_call> or the end of the text before its </tool_call> is unclosed; a </tool_call> with no open block is
    stray. Both are errors, like bad JSON, a missing name, or arguments that are not an object.
    """
    reasoning, rest = split_reasoning(text)
    outside: list[str] = []
    calls: list[ToolCall] = []
    errors: list[str] = []
    block = 0
    position = 0
    open_at: int | None = None  # index just after the currently open <tool_call>
    for match in _TAG.finditer(rest):
        if match.group() == CALL_OPEN:
            if open_at is None:
                outside.append(rest[position : match.start()])
            else:
                block += 1
                errors.append(
                    f"tool call {block}: <tool_call> is not closed before the next <tool_call>: "
                    f"{_short(rest[open_at : match.start()])}"
                )
            open_at = match.end()
        else:
            if open_at is None:
                outside.append(rest[position : match.start()])
                errors.append(
                    f"stray </tool_call> without a matching <tool_call> (after "
                    f"{_short(rest[max(0, match.start() - 40) : match.start()])})"
                )
            else:
                block += 1
                result = parse_tool_call_json(rest[open_at : match.start()], f"tool call {block}")
                if isinstance(result, str):
                    errors.append(result)
                else:
                    calls.append(ToolCall(id=f"call_{turn}_{len(calls)}", name=result[0], arguments=result[1]))
                open_at = None
        position = match.end()
    if open_at is not None:
        block += 1
        errors.append(f"tool call {block}: <tool_call> is not closed (missing </tool_call>): {_short(rest[open_at:])}")
    else:
        outside.append(rest[position:])
    content = "\n".join(piece.strip() for piece in outside if piece.strip())
    return ParsedAssistant(content=content, reasoning=reasoning, tool_calls=calls, errors=errors)


def from_openai_tool_calls(
    message_tool_calls: list[dict[str, Any]] | None, turn: int = 0
) -> tuple[list[ToolCall], list[str]]:
    """Calls from an OpenAI-format message's `tool_calls` (`function.arguments` a JSON string, or already a dict).

    Ids are kept when given, else `call_{turn}_{index}`. Malformed entries become errors, as in `parse_assistant`.
    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    for number, entry in enumerate(message_tool_calls or [], start=1):
        where = f"tool call {number}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected an object, got {type(entry).__name__}")
            continue
        function = entry.get("function")
        if not isinstance(function, dict):
            errors.append(f'{where}: missing "function" object')
            continue
        result = _check_call(function, where)
        if isinstance(result, str):
            errors.append(result)
            continue
        call_id = entry.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{turn}_{len(calls)}"
        calls.append(ToolCall(id=call_id, name=result[0], arguments=result[1]))
    return calls, errors
