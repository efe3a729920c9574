"""SWE-smith trajectories (SWE-bench/SWE-smith-trajectories; SWE-agent runs on synthesized bugs).

A record: `messages`, `instance_id`, `resolved`, `model`, `traj_id`, `patch` (+ `id` in the agent-data-protocol
export, which is `traj_id` plus `_<n>`). `messages` may be a JSON-encoded string. The set holds the same runs in three
action formats (its splits `tool`, `xml`, `ticks`); the reader detects the format per record (extra key
`action_format`):

- `tool`: assistant messages carry OpenAI `tool_calls`, results are `tool` messages: kept as they are.
- `xml`: actions are text, `<function=NAME>` / `<parameter=P>value</parameter>` / `</function>` (the OpenHands
  text encoding of a tool call; the system prompt lists the functions). An assistant message gets a tool call when,
  from some `<function=NAME>` on, the rest of the message is exactly one call: `<parameter=…>` blocks, `</function>`,
  then only whitespace (the first such position wins). Its content is the text before, right-stripped. A multi-line
  value loses the one newline the encoder puts on each side; values of parameters the system prompt types as
  integer/number/boolean/array/object are JSON-decoded (kept as text when that fails). `tools` are rebuilt from the
  system prompt's function list (the model got them as that text, which stays in the system message).
- `ticks`: SWE-agent's ``` blocks, read as in the nebius reader (one `bash` tool).

In the text formats the user message right after a parsed action is its output (role `tool`, verbatim, its
`OBSERVATION:` prefix included); an assistant turn without a parsable action stays text and counts as malformed.

- task_id: `instance_id`; episode_id: `id`, else `traj_id`, else a content hash; resolved: `resolved`.
- patch: `patch`, unless it touches no file the conversation mentions (`common.checked_patch`): then it is kept as
  `mismatched_patch`. In the sample set every non-empty `patch` is a diff of another repository (autograd, deepdiff,
  astroid for arrow, dataset, sqlfluff tasks), and two resolved runs have an empty one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.readers.common import (
    SHELL_TOOL,
    ParsedAction,
    checked_patch,
    content_hash,
    count_turns,
    link_text_actions,
    malformed_structured_calls,
    normalize_message,
    parse_fenced_action,
    read_with,
    require,
    reward_of,
)
from agent.trajectory import Trajectory

SOURCE = "swe-smith"

# ------------------------------------------------------------------------------------------ the system prompt's tools

_FUNCTION_BLOCK = re.compile(r"---- BEGIN FUNCTION #\d+: (\S+) ----\n(.*?)\n?---- END FUNCTION #\d+ ----", re.DOTALL)
_PARAM_LINE = re.compile(r"^ *\(\d+\) (\w+) \((\w+), (required|optional)\): ?", re.MULTILINE)
_ALLOWED = re.compile(r"\nAllowed values: \[(.*)\]\s*\Z", re.DOTALL)
_NO_PARAMS = "No parameters are required for this function."


def tools_from_prompt(system_prompt: str) -> list[dict[str, Any]]:
    """The OpenAI schemas behind OpenHands' text function list (`---- BEGIN FUNCTION #1: bash ----` …)."""
    tools = []
    for block in _FUNCTION_BLOCK.finditer(system_prompt):
        name, body = block.group(1), block.group(2)
        description, _, params_text = body.partition("\nParameters:\n")
        description = description.removeprefix("Description: ").replace("\n" + _NO_PARAMS, "").rstrip("\n")
        properties: dict[str, Any] = {}
        required: list[str] = []
        lines = list(_PARAM_LINE.finditer(params_text))
        for k, line in enumerate(lines):
            text = params_text[line.end() : lines[k + 1].start() if k + 1 < len(lines) else len(params_text)]
            schema: dict[str, Any] = {"type": line.group(2)}
            allowed = _ALLOWED.search(text)
            if allowed:
                text = text[: allowed.start()]
                schema["enum"] = re.findall(r"`([^`]*)`", allowed.group(1))
            schema["description"] = text.rstrip("\n")
            properties[line.group(1)] = schema
            if line.group(3) == "required":
                required.append(line.group(1))
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": description,
                    "parameters": {"type": "object", "properties": properties, "required": required},
                },
            }
        )
    return tools


# -------------------------------------------------------------------------------------------------- the xml actions

_FUNCTION_OPEN = re.compile(r"<function=([^>\s]+)>")
_PARAM_OPEN = re.compile(r"\s*<parameter=([^>\s]+)>")
_PARAM_CLOSE = re.compile(r"</parameter>(?=\s*(?:<parameter=[^>\s]+>|</function>\s*\Z))")
_FUNCTION_CLOSE = re.compile(r"\s*</function>\s*\Z")
_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
}


def _decode_value(raw: str, json_type: str | None) -> Any:
    if "\n" in raw and len(raw) >= 2 and raw[0] == "\n" and raw[-1] == "\n":
        raw = raw[1:-1]  # the encoder wraps a multi-line value in one newline each side
    expected = _JSON_TYPES.get(json_type or "")
    if expected is None:
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return value if isinstance(value, expected) and not (json_type != "boolean" and isinstance(value, bool)) else raw


def parse_xml_action(text: str, param_types: dict[str, dict[str, str]] | None = None) -> ParsedAction | None:
    """(content before the call, function name, arguments), or None when the message does not end in one call."""
    for opening in _FUNCTION_OPEN.finditer(text):
        name, pos = opening.group(1), opening.end()
        types = (param_types or {}).get(name, {})
        arguments: dict[str, Any] = {}
        while not _FUNCTION_CLOSE.match(text, pos):
            param = _PARAM_OPEN.match(text, pos)
            close = _PARAM_CLOSE.search(text, param.end()) if param else None
            if param is None or close is None or param.group(1) in arguments:
                break
            arguments[param.group(1)] = _decode_value(text[param.end() : close.start()], types.get(param.group(1)))
            pos = close.end()
        else:
            return text[: opening.start()].rstrip(), name, arguments
    return None


# ------------------------------------------------------------------------------------------------------- the record


def _messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    raw = record["messages"]
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not isinstance(raw, list):
        raise ValueError("'messages' must be a list (or a JSON string holding one)")
    return [normalize_message(message, index) for index, message in enumerate(raw)]


def action_format(messages: list[dict[str, Any]]) -> str:
    """`tool` (structured calls), `xml` (`<function=…>` text) or `ticks` (``` blocks)."""
    if any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return "tool"
    if any(
        m["role"] == "assistant" and isinstance(m["content"], str) and "<function=" in m["content"] for m in messages
    ):
        return "xml"
    return "ticks"


def convert(record: dict[str, Any]) -> Trajectory:
    require(record, "instance_id", "messages")
    messages = _messages(record)
    fmt = action_format(messages)
    tools: list[dict[str, Any]] = []
    if fmt == "tool":
        malformed = malformed_structured_calls(messages)
    elif fmt == "xml":
        system = next((m["content"] for m in messages if m["role"] == "system" and isinstance(m["content"], str)), "")
        tools = tools_from_prompt(system)
        types = {
            t["function"]["name"]: {
                p: s.get("type", "string") for p, s in t["function"]["parameters"]["properties"].items()
            }
            for t in tools
        }
        malformed = link_text_actions(messages, lambda text: parse_xml_action(text, types))
    else:
        tools = [SHELL_TOOL]
        malformed = link_text_actions(messages, parse_fenced_action)
    turns, calls = count_turns(messages)
    resolved = record.get("resolved")
    extra: dict[str, Any] = {"action_format": fmt}
    if record.get("traj_id") and record.get("id"):
        extra["traj_id"] = record["traj_id"]
    patch, patch_extra = checked_patch(record.get("patch"), messages)
    extra.update(patch_extra)
    return Trajectory(
        task_id=record["instance_id"],
        episode_id=record.get("id") or record.get("traj_id") or f"{record['instance_id']}/{content_hash(messages)}",
        messages=messages,
        tools=tools,
        reward=reward_of(resolved),
        resolved=resolved,
        num_turns=turns,
        num_tool_calls=calls,
        malformed_tool_calls=malformed,
        model=record.get("model") or "",
        source=SOURCE,
        patch=patch,
        **extra,
    )


def read(path: str | Path) -> Iterator[Trajectory]:
    return read_with(path, convert)
