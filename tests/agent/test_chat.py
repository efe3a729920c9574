"""The token-exact conversation: for every turn the engine's input is the prefix of the recorded training sequence,
sampled ids are kept exactly, template suffixes tokenize as the whole text would, and both think modes hold.

Assistant turns are scripted texts tokenized with the real tokenizer, as if sampled (a random tiny model cannot be
made to emit reasoning and tool calls on cue); the ids then flow through exactly as an engine's would.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest

from agent.chat import ConversationError, TokenConversation
from agent.chat_template import render
from agent.tokenizer import build_qwen3_tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "execute_bash",
            "description": "Run a command.",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        },
    },
    {
        "type": "function",
        "function": {"name": "finish", "description": "Stop.", "parameters": {"type": "object", "properties": {}}},
    },
]
START = [
    {"role": "system", "content": "You are a careful agent."},
    {"role": "user", "content": "Fix the ünïcode bug in a.py 🐛"},
]


@pytest.fixture(scope="module", params=["qwen3", "code-bpe"])
def tok(request):  # type: ignore[no-untyped-def]
    """Both tokenizers the agent ships: the real Qwen3 one and the code BPE of the CPU trainer's tiny model."""
    if request.param == "qwen3":
        return build_qwen3_tokenizer()
    from agent.code_tokenizer import build_code_tokenizer

    return build_code_tokenizer()


def im_end(tok) -> int:  # type: ignore[no-untyped-def]
    return tok.convert_tokens_to_ids("<|im_end|>")


def tool_call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def sampled(tok, text: str, finished: bool = True) -> list[int]:  # type: ignore[no-untyped-def]
    return tok.encode(text, add_special_tokens=False) + ([im_end(tok)] if finished else [])


def logprobs_for(ids: list[int], turn: int) -> list[float]:
    return [-(turn + 1) - i / 1000 for i in range(len(ids))]


# (text, finished, what the environment answers: "tools" → one result per call, str → a user message)
EPISODE = [
    (
        "<think>\nI will list the files first.\n</think>\n\nLet me look.\n" + tool_call("execute_bash", command="ls"),
        True,
        "tools",
    ),
    (
        "<think>\nTwo things at once.\n</think>\n\n"
        + tool_call("execute_bash", command="cat a.py")
        + "\n"
        + tool_call("execute_bash", command="echo 'é' > b.txt"),
        True,
        "tools",
    ),
    ("<think>\nThis reasoning goes on and on and never", False, "You ran out of tokens. Continue."),
    ("No think here; text only, with ünïcode 🐛 and  double  spaces.", True, "Please call a tool."),
    ("<think>\nfix it\n</think>\n\n" + tool_call("execute_bash", command="sed -i 's/x/y/' a.py"), True, "tools"),
    (
        '<think>\ncall cut\n</think>\n\n<tool_call>\n{"name": "execute_bash", "argu',
        False,
        "Your tool call was cut off.",
    ),
    ("<think>\ndone\n</think>\n\n" + tool_call("finish"), True, None),
]


def play(tok, think_mode: str, enable_thinking: bool, episode=EPISODE):  # type: ignore[no-untyped-def]
    """Run a scripted episode; returns the conversation and per turn (engine input, sampled ids, logprobs)."""
    conv = TokenConversation(tok, START, TOOLS, think_mode=think_mode, enable_thinking=enable_thinking)
    turns = []
    for number, (text, finished, answer) in enumerate(episode):
        if not enable_thinking:
            text = text.split("</think>\n\n")[-1] if "</think>" in text else text.replace("<think>\n", "")
        prompt = conv.engine_input()
        assert conv.num_tokens == len(prompt)
        ids = sampled(tok, text, finished)
        lps = logprobs_for(ids, number)
        conv.add_assistant(ids, lps)
        turns.append((prompt, ids, lps))
        parsed_calls = conv.messages[-1].get("tool_calls", [])
        if answer == "tools":
            conv.add_tool_results(
                [
                    {
                        "tool_call_id": c["id"],
                        "name": c["function"]["name"],
                        "content": f"output of {c['function']['arguments']} ✓",
                    }
                    for c in parsed_calls
                ]
            )
        elif answer is not None:
            conv.add_user(answer)
    return conv, turns


@pytest.mark.parametrize("enable_thinking", [True, False])
@pytest.mark.parametrize("think_mode", ["keep", "drop"])
def test_engine_input_is_prefix_of_training_sequence(tok, think_mode, enable_thinking) -> None:  # type: ignore[no-untyped-def]
    conv, turns = play(tok, think_mode, enable_thinking)
    sequences = conv.sequences()
    assert len(sequences) == (1 if think_mode == "keep" else len(turns))
    for number, (prompt, ids, lps) in enumerate(turns):
        seq = sequences[0] if think_mode == "keep" else sequences[number]
        end = len(prompt) + len(ids)
        assert seq.token_ids[: len(prompt)] == prompt
        assert seq.token_ids[len(prompt) : end] == ids
        assert seq.loss_mask[len(prompt) : end] == [1] * len(ids)
        assert seq.logprobs[len(prompt) : end] == lps
        if think_mode == "drop":
            assert end == len(seq.token_ids) and seq.loss_mask[: len(prompt)] == [0] * len(prompt)
            assert seq.logprobs[: len(prompt)] == [0.0] * len(prompt)
    if think_mode == "keep":
        (seq,) = sequences
        assert sum(seq.loss_mask) == sum(len(ids) for _, ids, _ in turns)  # only sampled ids carry loss
        assert all(lp == 0.0 for lp, m in zip(seq.logprobs, seq.loss_mask) if m == 0)
        assert seq.token_ids[-1] == im_end(tok) and seq.loss_mask[-1] == 1  # ends with the last sampled id


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_keep_mode_inputs_only_grow(tok, enable_thinking) -> None:  # type: ignore[no-untyped-def]
    """A suffix never re-tokenizes earlier ids: each input extends the previous input + its sampled ids."""
    _, turns = play(tok, "keep", enable_thinking)
    for (prompt, ids, _), (next_prompt, _, _) in itertools.pairwise(turns):
        assert next_prompt[: len(prompt) + len(ids)] == prompt + ids


def test_truncated_turn_gets_end_of_turn_with_no_loss(tok) -> None:  # type: ignore[no-untyped-def]
    conv, turns = play(tok, "keep", True)
    (seq,) = conv.sequences()
    prompt, ids, _ = turns[2]  # cut by max_tokens
    assert ids[-1] != im_end(tok)
    position = len(prompt) + len(ids)
    assert seq.token_ids[position] == im_end(tok) and seq.loss_mask[position] == 0 and seq.logprobs[position] == 0.0
    assert tok.decode(seq.token_ids[position : position + 4]) == "<|im_end|>\n<|im_start|>user"


def test_drop_mode_cuts_think_spans_and_keeps_the_rest(tok) -> None:  # type: ignore[no-untyped-def]
    conv, turns = play(tok, "drop", True)
    last_prompt = tok.decode(turns[-1][0])
    assert "<think>" not in last_prompt and "</think>" not in last_prompt
    # the rest of an earlier turn's sampled ids is in the later input exactly, right after its role line
    _, first_ids, _ = turns[0]
    rest = first_ids[first_ids.index(tok.convert_tokens_to_ids("</think>")) + 2 :]  # </think>, "\n\n"
    assert tok.decode(first_ids[first_ids.index(tok.convert_tokens_to_ids("</think>")) + 1 :][:1]) == "\n\n"
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    later = turns[1][0]
    assert any(later[i : i + len(header) + len(rest)] == header + rest for i in range(len(later)))
    # the unclosed think of the truncated turn leaves an empty turn behind
    assert "<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\nYou ran out of tokens" in last_prompt
    # and each turn's own sequence keeps its own reasoning
    assert "<think>\ndone\n</think>" in tok.decode(conv.sequences()[-1].token_ids)


def test_drop_mode_with_thinking_off_cuts_the_empty_blocks(tok) -> None:  # type: ignore[no-untyped-def]
    _, turns = play(tok, "drop", False)
    prompt = tok.decode(turns[-1][0])
    assert prompt.count("<think>") == 1 and prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


# A canonical episode: the sampled texts are exactly what the template renders for the parsed messages.
CANONICAL = [
    ("<think>\nList first.\n</think>\n\nLet me look.\n" + tool_call("execute_bash", command="ls -la"), True, "tools"),
    (
        "<think>\nTwo calls.\n</think>\n\n"
        + tool_call("execute_bash", command="cat a.py")
        + "\n"
        + tool_call("execute_bash", command="printf 'é\\n'"),
        True,
        "tools",
    ),
    ("<think>\nText only.\n</think>\n\nI need to think about ünïcode 🐛.", True, "Go on, call a tool."),
    ("<think>\nDone.\n</think>\n\n" + tool_call("finish"), True, None),
]


@pytest.mark.parametrize("enable_thinking", [True, False])
@pytest.mark.parametrize("think_mode", ["keep", "drop"])
def test_ids_equal_tokenizing_the_whole_rendering(tok, think_mode, enable_thinking) -> None:  # type: ignore[no-untyped-def]
    """With canonical sampled texts, every engine input equals tokenizing the template's rendering of the
    messages so far in one piece (keep: with reasoning; drop: without earlier reasoning), so the incremental
    suffixes split exactly where whole-text tokenization does."""
    conv, turns = play(tok, think_mode, enable_thinking, CANONICAL)
    messages = conv.messages
    assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for (prompt, _, _), index in zip(turns, assistant_at):
        text = render(
            tok,
            messages[:index],
            TOOLS,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
            keep_reasoning=think_mode == "keep",
        )
        assert tok.decode(prompt) == text
        assert prompt == tok.encode(text, add_special_tokens=False)
    if think_mode == "keep":
        (seq,) = conv.sequences()
        full = render(tok, messages, TOOLS, enable_thinking=enable_thinking)
        assert tok.decode(seq.token_ids) + "\n" == full
        assert seq.token_ids == tok.encode(full, add_special_tokens=False)[:-1]


def test_messages_record(tok) -> None:  # type: ignore[no-untyped-def]
    conv, _ = play(tok, "keep", True)
    messages = conv.messages
    assert messages[:2] == START
    first = messages[2]
    assert first == {
        "role": "assistant",
        "content": "Let me look.",
        "reasoning_content": "I will list the files first.",
        "tool_calls": [
            {
                "id": "call_0_0",
                "type": "function",
                "function": {"name": "execute_bash", "arguments": '{"command": "ls"}'},
            }
        ],
    }
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "call_0_0",
        "name": "execute_bash",
        "content": 'output of {"command": "ls"} ✓',
    }
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert [c["id"] for c in messages[4]["tool_calls"]] == ["call_1_0", "call_1_1"]
    assert messages[7]["reasoning_content"] == "This reasoning goes on and on and never"
    assert messages[7]["content"] == ""
    assert "tool_calls" not in messages[13]
    assert conv.num_turns == 7


def test_parse_result_is_returned(tok) -> None:  # type: ignore[no-untyped-def]
    conv = TokenConversation(tok, START, TOOLS)
    parsed = conv.add_assistant(sampled(tok, "<tool_call>\n{bad json}\n</tool_call>"))
    assert parsed.tool_calls == [] and len(parsed.errors) == 1
    assert conv.messages[-1] == {"role": "assistant", "content": ""}


def test_tool_results_added_in_pieces_equal_added_at_once(tok) -> None:  # type: ignore[no-untyped-def]
    results = [
        {"tool_call_id": "call_0_0", "name": "execute_bash", "content": "one"},
        {"tool_call_id": "call_0_1", "name": "execute_bash", "content": "two"},
    ]
    text = tool_call("execute_bash", command="a") + "\n" + tool_call("execute_bash", command="b")
    together = TokenConversation(tok, START, TOOLS)
    together.add_assistant(sampled(tok, text))
    together.add_tool_results(results)
    pieces = TokenConversation(tok, START, TOOLS)
    pieces.add_assistant(sampled(tok, text))
    before = pieces.num_tokens
    pieces.add_tool_results(results[:1])
    pieces.add_tool_results(results[1:])
    pieces.add_user("and a user note")
    together.add_user("and a user note")
    assert pieces.engine_input() == together.engine_input()
    assert pieces.engine_input()[:before] == together.engine_input()[:before]
    assert tok.decode(pieces.engine_input()).endswith(
        "<|im_end|>\n<|im_start|>user\n<tool_response>\none\n</tool_response>\n<tool_response>\ntwo\n"
        "</tool_response><|im_end|>\n<|im_start|>user\nand a user note<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_is_rendered_once_and_exact(tok) -> None:  # type: ignore[no-untyped-def]
    conv = TokenConversation(tok, START, TOOLS, enable_thinking=False)
    text = render(tok, START, TOOLS, add_generation_prompt=True, enable_thinking=False)
    assert conv.engine_input() == tok.encode(text, add_special_tokens=False)
    assert conv.sequences() == []


def test_misuse_is_refused(tok) -> None:  # type: ignore[no-untyped-def]
    conv = TokenConversation(tok, START, TOOLS)
    with pytest.raises(ValueError, match="logprobs"):
        conv.add_assistant([1, 2, 3], [0.0])
    conv.add_assistant(sampled(tok, "hi"))
    with pytest.raises(ConversationError, match="ends with an assistant turn"):
        conv.engine_input()
    with pytest.raises(ConversationError):
        conv.add_assistant(sampled(tok, "again"))
    with pytest.raises(TypeError):
        conv.add_tool_results([{"tool_call_id": "x", "name": "y", "content": None}])
    with pytest.raises(ValueError):
        TokenConversation(tok, [], TOOLS)
    with pytest.raises(ValueError):
        TokenConversation(tok, START, TOOLS, think_mode="sometimes")  # type: ignore[arg-type]


def test_empty_generation_is_a_truncated_turn(tok) -> None:  # type: ignore[no-untyped-def]
    conv = TokenConversation(tok, START, TOOLS)
    prompt = conv.engine_input()
    parsed = conv.add_assistant([], [])
    assert parsed.content == "" and parsed.tool_calls == []
    conv.add_user("say something")
    assert conv.engine_input()[len(prompt)] == im_end(tok)
    (seq,) = conv.sequences()
    assert seq.token_ids == prompt and sum(seq.loss_mask) == 0


def test_other_stop_token_is_kept_and_turn_closed(tok) -> None:  # type: ignore[no-untyped-def]
    """A turn that stopped on <|endoftext|> keeps it (it was sampled) and gets <|im_end|> appended."""
    conv = TokenConversation(tok, START, TOOLS)
    prompt = conv.engine_input()
    ids = tok.encode("bye", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|endoftext|>")]
    assert conv.add_assistant(ids).content == "bye"
    conv.add_user("more")
    assert conv.engine_input()[len(prompt) : len(prompt) + len(ids) + 2] == ids + [
        im_end(tok),
        *tok.encode("\n", add_special_tokens=False),
    ]


def test_late_think_is_content_not_cut(tok) -> None:  # type: ignore[no-untyped-def]
    conv = TokenConversation(tok, START, TOOLS, think_mode="drop")
    conv.add_assistant(sampled(tok, "Answer first <think>\nnot reasoning\n</think> end"))
    conv.add_user("next")
    assert "Answer first <think>\nnot reasoning\n</think> end<|im_end|>" in tok.decode(conv.engine_input())


def test_whitespace_after_think_only_newlines_are_cut(tok) -> None:  # type: ignore[no-untyped-def]
    conv = TokenConversation(tok, START, TOOLS, think_mode="drop")
    conv.add_assistant(sampled(tok, "<think>\nr\n</think>\n\n    indented code"))
    conv.add_user("next")
    assert "<|im_start|>assistant\n    indented code<|im_end|>" in tok.decode(conv.engine_input())


def test_special_token_boundary_property(tok) -> None:  # type: ignore[no-untyped-def]
    """BPE never merges across a special token: tokenizing X + <|im_end|> + S whole equals tokenizing the two
    sides apart, whatever X and S hold (whitespace runs, unicode, combining marks, other special tokens)."""
    rng = random.Random(1)
    alphabet = "ab Z9_\n\n\t  .,'s\"{}<>|/" + "é\u0301中😀" + "\u00a0"
    pieces = ["<|im_start|>", "<think>", "</tool_call>", "\n\n", "   ", "'ll"]
    for _ in range(300):

        def text() -> str:
            parts = [
                rng.choice(pieces) if rng.random() < 0.15 else rng.choice(alphabet) for _ in range(rng.randint(0, 40))
            ]
            return "".join(parts)

        left, right = text(), text()
        whole = tok.encode(left + "<|im_end|>" + right, add_special_tokens=False)
        apart = tok.encode(left + "<|im_end|>", add_special_tokens=False) + tok.encode(right, add_special_tokens=False)
        assert whole == apart, (left, right)
        # …which is not true at an arbitrary text boundary (why suffixes are cut only after <|im_end|>)
    assert tok.encode("a\n\nb", add_special_tokens=False) != (
        tok.encode("a\n", add_special_tokens=False) + tok.encode("\nb", add_special_tokens=False)
    )
