"""Parsing assistant completions: content, reasoning, tool calls, and one error per malformed block."""

from __future__ import annotations

import json

import pytest

from agent.toolcalls import ParsedAssistant, ToolCall, from_openai_tool_calls, parse_assistant, split_reasoning


def block(payload: object) -> str:
    body = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


BASH = {"name": "execute_bash", "arguments": {"command": "ls -la"}}


def test_plain_text() -> None:
    parsed = parse_assistant("Hello there.\n")
    assert parsed == ParsedAssistant(content="Hello there.", reasoning=None, tool_calls=[], errors=[])


def test_canonical_turn_with_reasoning_and_two_calls() -> None:
    text = (
        "<think>\nI should look first.\nThen edit.\n</think>\n\nLet me look.\n"
        + block(BASH)
        + "\n"
        + block({"name": "str_replace_editor", "arguments": {"command": "view", "path": "/repo/ü.py"}})
    )
    parsed = parse_assistant(text, turn=3)
    assert parsed.reasoning == "I should look first.\nThen edit."
    assert parsed.content == "Let me look."
    assert parsed.errors == []
    assert parsed.tool_calls == [
        ToolCall(id="call_3_0", name="execute_bash", arguments={"command": "ls -la"}),
        ToolCall(id="call_3_1", name="str_replace_editor", arguments={"command": "view", "path": "/repo/ü.py"}),
    ]
    message = parsed.to_message()
    assert message["role"] == "assistant" and message["reasoning_content"] == parsed.reasoning
    assert message["tool_calls"][1] == {
        "id": "call_3_1",
        "type": "function",
        "function": {"name": "str_replace_editor", "arguments": '{"command": "view", "path": "/repo/ü.py"}'},
    }


def test_message_omits_absent_fields() -> None:
    assert parse_assistant("ok").to_message() == {"role": "assistant", "content": "ok"}
    assert parse_assistant("<think></think>ok").to_message() == {
        "role": "assistant",
        "content": "ok",
        "reasoning_content": "",
    }


@pytest.mark.parametrize(
    "text, reasoning, rest",
    [
        ("no think", None, "no think"),
        ("<think>\nr\n</think>\n\nc", "r", "\n\nc"),
        ("  \n<think>r</think>c", "r", "c"),
        ("<think>\nunclosed, cut by max_tokens", "unclosed, cut by max_tokens", ""),
        ("<think></think>", "", ""),
        ("text first <think>r</think>", None, "text first <think>r</think>"),  # not leading: content
        ("<think>a</think>b</think>c", "a", "b</think>c"),
    ],
)
def test_split_reasoning(text: str, reasoning: str | None, rest: str) -> None:
    assert split_reasoning(text) == (reasoning, rest)


def test_think_only_leading_block_is_reasoning() -> None:
    parsed = parse_assistant("Answer <think>not reasoning</think>")
    assert parsed.reasoning is None and parsed.content == "Answer <think>not reasoning</think>"


def test_tool_call_inside_reasoning_is_not_a_call() -> None:
    parsed = parse_assistant("<think>\nmaybe " + block(BASH) + "\n</think>\n\nNo call after all.")
    assert parsed.tool_calls == [] and parsed.errors == [] and parsed.content == "No call after all."


def test_unclosed_think_has_no_calls() -> None:
    parsed = parse_assistant("<think>\nplanning " + block(BASH))
    assert parsed.tool_calls == [] and parsed.content == ""
    assert parsed.reasoning is not None and parsed.reasoning.startswith("planning")


def test_content_between_and_after_calls() -> None:
    parsed = parse_assistant("before\n" + block(BASH) + "\nmiddle\n" + block(BASH) + "\nafter")
    assert parsed.content == "before\nmiddle\nafter"
    assert [call.id for call in parsed.tool_calls] == ["call_0_0", "call_0_1"]


def test_compact_and_spaced_bodies() -> None:
    compact = parse_assistant('<tool_call>{"name":"finish","arguments":{}}</tool_call>')
    spaced = parse_assistant('<tool_call>\n\n  {"name": "finish", "arguments": {}}  \n\n</tool_call>')
    assert compact.tool_calls == spaced.tool_calls == [ToolCall("call_0_0", "finish", {})]


def test_missing_or_null_arguments_mean_none() -> None:
    assert parse_assistant(block({"name": "finish"})).tool_calls == [ToolCall("call_0_0", "finish", {})]
    assert parse_assistant(block({"name": "finish", "arguments": None})).tool_calls[0].arguments == {}


def test_arguments_as_json_string_are_accepted() -> None:
    parsed = parse_assistant(block({"name": "execute_bash", "arguments": json.dumps({"command": "pwd"})}))
    assert parsed.errors == [] and parsed.tool_calls[0].arguments == {"command": "pwd"}
    assert parse_assistant(block({"name": "finish", "arguments": ""})).tool_calls[0].arguments == {}


def test_extra_keys_are_ignored() -> None:
    parsed = parse_assistant(block({"name": "finish", "arguments": {}, "id": "zzz", "type": "function"}))
    assert parsed.tool_calls == [ToolCall("call_0_0", "finish", {})]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('{"name": "execute_bash", "arguments": {"command": "ls"}', "invalid JSON"),
        ("{'name': 'execute_bash'}", "invalid JSON"),
        ('{"name": "x", "arguments": {}} trailing', "invalid JSON"),
        ("execute_bash ls", "invalid JSON"),
        ("", "empty <tool_call> block"),
        ("   \n ", "empty <tool_call> block"),
        ('["execute_bash", {"command": "ls"}]', "got list"),
        ('"execute_bash"', "got str"),
        ("42", "got int"),
        ("null", "got NoneType"),
        ('{"arguments": {"command": "ls"}}', 'missing "name"'),
        ('{"name": null, "arguments": {}}', 'missing "name"'),
        ('{"name": "", "arguments": {}}', '"name" must be a non-empty string'),
        ('{"name": 7, "arguments": {}}', '"name" must be a non-empty string'),
        ('{"name": ["a"], "arguments": {}}', '"name" must be a non-empty string'),
        ('{"name": "execute_bash", "arguments": ["ls"]}', '"arguments" must be a JSON object, got list'),
        ('{"name": "execute_bash", "arguments": "ls -la"}', '"arguments" is a string that is not valid JSON'),
        ('{"name": "execute_bash", "arguments": "[1, 2]"}', '"arguments" must be a JSON object, got list'),
        ('{"name": "execute_bash", "arguments": 3}', '"arguments" must be a JSON object, got int'),
        ('{"name": "execute_bash", "arguments": true}', '"arguments" must be a JSON object, got bool'),
    ],
)
def test_malformed_block(body: str, fragment: str) -> None:
    parsed = parse_assistant("text\n" + block(body) + "\n" + block(BASH), turn=2)
    assert len(parsed.errors) == 1 and fragment in parsed.errors[0], parsed.errors
    assert parsed.errors[0].startswith("tool call 1")
    # the well-formed call after it still parses, and ids count valid calls only
    assert parsed.tool_calls == [ToolCall("call_2_0", "execute_bash", {"command": "ls -la"})]
    assert parsed.content == "text"


def test_unclosed_at_end() -> None:
    parsed = parse_assistant("Running it.\n" + block(BASH) + '\n<tool_call>\n{"name": "execute_bash", "argu')
    assert [call.name for call in parsed.tool_calls] == ["execute_bash"]
    assert len(parsed.errors) == 1
    assert parsed.errors[0].startswith("tool call 2: <tool_call> is not closed (missing </tool_call>)")
    assert parsed.content == "Running it."


def test_complete_json_without_close_tag_is_still_unclosed() -> None:
    parsed = parse_assistant('<tool_call>\n{"name": "finish", "arguments": {}}')
    assert parsed.tool_calls == [] and len(parsed.errors) == 1 and "not closed" in parsed.errors[0]


def test_unclosed_before_next_open() -> None:
    parsed = parse_assistant('<tool_call>\n{"name": "finish"\n' + block(BASH))
    assert len(parsed.errors) == 1 and "not closed before the next <tool_call>" in parsed.errors[0]
    assert parsed.tool_calls == [ToolCall("call_0_0", "execute_bash", {"command": "ls -la"})]


def test_stray_close() -> None:
    parsed = parse_assistant('{"name": "finish"}\n</tool_call>\n' + block(BASH))
    assert len(parsed.errors) == 1 and parsed.errors[0].startswith("stray </tool_call>")
    assert len(parsed.tool_calls) == 1
    assert parsed.content == '{"name": "finish"}'


def test_every_problem_reported_once() -> None:
    text = (
        block("not json")
        + block({"arguments": {}})
        + "</tool_call>"
        + block({"name": "ok", "arguments": 1})
        + block(BASH)
        + "<tool_call>"
    )
    parsed = parse_assistant(text)
    assert len(parsed.errors) == 5, parsed.errors
    assert [error.split(":")[0] for error in parsed.errors if not error.startswith("stray")] == [
        "tool call 1",
        "tool call 2",
        "tool call 3 (ok)",
        "tool call 5",
    ]
    assert parsed.errors[2].startswith("stray </tool_call>")
    assert len(parsed.tool_calls) == 1


def test_long_bodies_are_shortened_in_errors() -> None:
    parsed = parse_assistant(block("x" * 5000))
    assert len(parsed.errors[0]) < 300


def test_from_openai_tool_calls() -> None:
    calls, errors = from_openai_tool_calls(
        [
            {"id": "abc", "type": "function", "function": {"name": "execute_bash", "arguments": '{"command": "ls"}'}},
            {"type": "function", "function": {"name": "finish", "arguments": "{}"}},
            {"id": "", "function": {"name": "finish", "arguments": {"already": "dict"}}},
            {"id": "bad1", "function": {"name": "x", "arguments": "{not json"}},
            {"id": "bad2", "function": {"arguments": "{}"}},
            {"id": "bad3", "function": {"name": "x", "arguments": "[1]"}},
            {"id": "bad4"},
            "nonsense",
        ],
        turn=4,
    )
    assert calls == [
        ToolCall("abc", "execute_bash", {"command": "ls"}),
        ToolCall("call_4_1", "finish", {}),
        ToolCall("call_4_2", "finish", {"already": "dict"}),
    ]
    assert len(errors) == 5
    assert "not valid JSON" in errors[0] and 'missing "name"' in errors[1] and "got list" in errors[2]
    assert 'missing "function"' in errors[3] and "got str" in errors[4]
    assert from_openai_tool_calls(None) == ([], [])


def test_to_openai_round_trip() -> None:
    call = ToolCall("call_1_0", "str_replace_editor", {"command": "create", "file_text": 'é\n"q"'})
    calls, errors = from_openai_tool_calls([call.to_openai()])
    assert calls == [call] and errors == []
