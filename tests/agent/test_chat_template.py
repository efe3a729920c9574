"""Our Qwen3-style chat template: exact renderings, tool calls, grouped tool results, reasoning, prefix stability."""

from __future__ import annotations

import json

import pytest

from agent.chat_template import CHAT_TEMPLATE, EMPTY_THINK, render
from agent.tokenizer import build_qwen3_tokenizer
from agent.toolcalls import parse_assistant

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "execute_bash",
            "description": "Run a bash command — ünïcode",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        },
    },
    {
        "type": "function",
        "function": {"name": "finish", "description": "Stop.", "parameters": {"type": "object", "properties": {}}},
    },
]

TOOLS_TEXT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + "\n".join(json.dumps(tool, ensure_ascii=False) for tool in TOOLS)
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>"
)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_qwen3_tokenizer()


def call(call_id: str, name: str, arguments: object) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_system_user_generation_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🐛"}]
    assert render(tokenizer, messages, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 🐛<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tokenizer, messages, add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n" + EMPTY_THINK
    )
    assert render(tokenizer, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 🐛<|im_end|>\n"
    )


def test_tools_in_system_turn(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with_system = render(
        tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], TOOLS
    )
    assert with_system == (
        "<|im_start|>system\nBe brief.\n\n" + TOOLS_TEXT + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    without_system = render(tokenizer, [{"role": "user", "content": "Hi"}], TOOLS)
    assert without_system == "<|im_start|>system\n" + TOOLS_TEXT + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    assert render(tokenizer, [{"role": "user", "content": "Hi"}]) == "<|im_start|>user\nHi<|im_end|>\n"


def test_assistant_tool_calls_and_grouped_results(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                call("a", "execute_bash", '{"command": "ls"}'),  # OpenAI string arguments: as given
                call("b", "execute_bash", {"command": "echo 'é' \"q\""}),  # dict arguments: JSON, unicode kept
            ],
        },
        {"role": "tool", "tool_call_id": "a", "name": "execute_bash", "content": "a.py\nb.py"},
        {"role": "tool", "tool_call_id": "b", "name": "execute_bash", "content": 'é "q"'},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "finish", "arguments": {}}]},  # bare form
        {"role": "tool", "tool_call_id": "c", "name": "finish", "content": ""},
        {"role": "user", "content": "thanks"},
    ]
    assert render(tokenizer, messages) == (
        "<|im_start|>user\ngo<|im_end|>\n"
        "<|im_start|>assistant\nLooking.\n"
        '<tool_call>\n{"name": "execute_bash", "arguments": {"command": "ls"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "execute_bash", "arguments": {"command": "echo \'é\' \\"q\\""}}\n</tool_call>'
        "<|im_end|>\n"
        '<|im_start|>user\n<tool_response>\na.py\nb.py\n</tool_response>\n<tool_response>\né "q"\n</tool_response>'
        "<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "finish", "arguments": {}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n\n</tool_response><|im_end|>\n"
        "<|im_start|>user\nthanks<|im_end|>\n"
    )


def test_missing_arguments_render_as_empty_object(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = render(
        tokenizer,
        [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "x", "type": "function", "function": {"name": "finish"}}],
            }
        ],
    )
    assert text == '<|im_start|>assistant\n<tool_call>\n{"name": "finish", "arguments": {}}\n</tool_call><|im_end|>\n'


def test_reasoning(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "\nA1", "reasoning_content": "\nthink 1\n"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "<think>\nthink 2\n</think>\n\nA2"},  # reasoning inline in content
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "A3", "reasoning_content": ""},  # empty: rendered (no-think turns)
        {"role": "assistant", "content": "A4"},  # none: no block
        {"role": "assistant", "content": "A5", "reasoning": "vllm field"},
    ]
    kept = render(tokenizer, messages)
    assert kept == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nthink 1\n</think>\n\nA1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n<think>\nthink 2\n</think>\n\nA2<|im_end|>\n"
        "<|im_start|>user\nq3<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA3<|im_end|>\n"
        "<|im_start|>assistant\nA4<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nvllm field\n</think>\n\nA5<|im_end|>\n"
    )
    dropped = render(tokenizer, messages, keep_reasoning=False)
    assert dropped == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n"
        "<|im_start|>user\nq3<|im_end|>\n<|im_start|>assistant\nA3<|im_end|>\n"
        "<|im_start|>assistant\nA4<|im_end|>\n<|im_start|>assistant\nA5<|im_end|>\n"
    )


def test_content_parts_and_unknown_role(tokenizer) -> None:  # type: ignore[no-untyped-def]
    parts = [{"type": "text", "text": "one "}, {"type": "image_url", "image_url": "x"}, {"type": "text", "text": "two"}]
    assert render(tokenizer, [{"role": "user", "content": parts}]) == "<|im_start|>user\none two<|im_end|>\n"
    with pytest.raises(Exception, match="unexpected message role"):
        render(tokenizer, [{"role": "narrator", "content": "x"}])


def test_later_system_message_is_a_turn(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = render(tokenizer, [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    assert text == "<|im_start|>user\na<|im_end|>\n<|im_start|>system\nb<|im_end|>\n"


def test_tokenizer_applies_the_same_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "reasoning_content": "r"}]
    direct = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=False)
    assert tokenizer.chat_template == CHAT_TEMPLATE and direct == render(tokenizer, messages, TOOLS)


CONVERSATION = [
    {"role": "system", "content": "You fix bugs."},
    {"role": "user", "content": "Fix the ünïcode bug"},
    {
        "role": "assistant",
        "content": "Look.",
        "reasoning_content": "plan",
        "tool_calls": [call("c0", "execute_bash", '{"command": "ls"}')],
    },
    {"role": "tool", "tool_call_id": "c0", "name": "execute_bash", "content": "a.py"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            call("c1", "execute_bash", '{"command": "cat a.py"}'),
            call("c2", "execute_bash", '{"command": "pwd"}'),
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "name": "execute_bash", "content": "print('x')"},
    {"role": "tool", "tool_call_id": "c2", "name": "execute_bash", "content": "/repo"},
    {"role": "user", "content": "Hurry."},
    {"role": "assistant", "content": "Done.", "reasoning_content": "ok"},
]


@pytest.mark.parametrize("keep_reasoning", [True, False])
@pytest.mark.parametrize("enable_thinking", [True, False])
def test_prefix_stable(tokenizer, keep_reasoning, enable_thinking) -> None:  # type: ignore[no-untyped-def]
    """Rendering messages[:k] is a prefix of rendering messages — except inside a run of tool messages, whose
    turn closes only after the last of them; with the generation prompt, every cut after a non-assistant message
    extends the same way."""
    options = {"keep_reasoning": keep_reasoning, "enable_thinking": enable_thinking}
    full = render(tokenizer, CONVERSATION, TOOLS, **options)
    for k in range(1, len(CONVERSATION)):
        inside_tool_run = CONVERSATION[k - 1]["role"] == "tool" and CONVERSATION[k]["role"] == "tool"
        prefix = render(tokenizer, CONVERSATION[:k], TOOLS, **options)
        assert full.startswith(prefix) != inside_tool_run, k


def test_parse_of_rendered_assistant_round_trips(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The text the template renders for an assistant message parses back to the same message."""
    for message in (m for m in CONVERSATION if m["role"] == "assistant"):
        text = render(tokenizer, [message])
        body = text[len("<|im_start|>assistant\n") : -len("<|im_end|>\n")]
        parsed = parse_assistant(body)
        assert parsed.errors == []
        assert parsed.content == message["content"] and parsed.reasoning == message.get("reasoning_content")
        assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
            (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls", [])
        ]
        assert render(tokenizer, [parsed.to_message()]) == text
