"""The token-exact conversation: the ids the engine reads and writes, kept as ids, never re-tokenized.

Why (DESIGN.md, decision 6): rendering the chat as text and tokenizing it again each turn does not give back the
ids the model sampled (BPE merges differently across turn boundaries, decode∘encode is not the identity), and a
policy-gradient step on ids the policy never produced is a known cause of RL runs that do not converge. So:

- the prompt (system + user) is rendered once with our template (agent/chat_template.py) and tokenized;
- an assistant turn appends exactly the sampled ids (loss mask 1, their logprobs);
- tool results and user messages append the ids of the template's rendering of those messages *in context*: the
  text render(all messages, add_generation_prompt=True) has after render(messages before them) — from the end of
  the last assistant turn's `<|im_end|>` — tokenized on its own (mask 0). That suffix starts right after the
  special token `<|im_end|>`; the tokenizer splits special tokens out before BPE, so no merge crosses the
  boundary and tokenizing the suffix alone equals tokenizing the whole text there (checked at run time on each
  suffix, and in tests on whole conversations). This needs the template to be prefix-stable, which ours is.

A turn cut by `max_tokens` (its ids do not end with `<|im_end|>`) gets the template's end-of-turn id `<|im_end|>`
appended with mask 0, so the next suffix (which begins with the `\\n` after it) renders as for any finished turn.
The model never sampled that id, so it carries no loss.

think_mode:
- "keep": one growing sequence; earlier turns' reasoning stays in context exactly as sampled. One training
  sequence per episode, every turn's engine input a prefix of it.
- "drop": as Qwen3 does in chat, earlier turns' reasoning leaves the context: the input for a turn is the sequence
  with the `<think>…</think>` span (and the newlines after it) of every earlier assistant turn cut out as token
  spans — the rest of those turns' sampled ids kept exactly. Inputs then stop being prefixes of one sequence, so
  training data is one sequence per turn: that turn's exact input (mask 0) + its sampled ids (mask 1).
  (Qwen3's official template keeps reasoning for the tool-calling turns after the last user message; "keep" is
  that behaviour for single-query agent episodes, "drop" is the stricter one.)

Whatever the mode: for every turn, the ids handed to the engine equal the prefix of that turn's training sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .chat_template import render
from .toolcalls import ParsedAssistant, parse_assistant
from .trajectory import TokenSequence

ThinkMode = Literal["keep", "drop"]

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ConversationError(RuntimeError):
    """The conversation was driven out of order, or the template broke an invariant."""


@dataclass
class _Turn:
    start: int
    """Index in the full (keep-mode) sequence of the turn's first sampled id."""
    end: int
    """Index after its last sampled id."""
    think: tuple[int, int] | None
    """The token span that think_mode "drop" cuts from later turns' inputs (full-sequence indices)."""
    finished: bool
    """The sampled ids ended with <|im_end|> (else `max_tokens` cut the turn)."""


class TokenConversation:
    """One episode's conversation as token ids, with the OpenAI-format messages alongside for the record."""

    def __init__(
        self,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        think_mode: ThinkMode = "keep",
        enable_thinking: bool = True,
    ) -> None:
        """`messages`: the initial messages (system, user); `tools`: OpenAI function schemas shown in the system
        turn; `enable_thinking=False` opens every assistant turn with an empty think block (Qwen3's no-think)."""
        if think_mode not in ("keep", "drop"):
            raise ValueError(f"think_mode must be 'keep' or 'drop', got {think_mode!r}")
        if not messages:
            raise ValueError("a conversation needs its initial messages (system, user)")
        self.tokenizer = tokenizer
        self.tools = list(tools or [])
        self.think_mode: ThinkMode = think_mode
        self.enable_thinking = enable_thinking
        self._im_start = self._token_id(IM_START)
        self._im_end = self._token_id(IM_END)
        self._think_open = self._token_id(THINK_OPEN)
        self._think_close = self._token_id(THINK_CLOSE)
        self._messages: list[dict[str, Any]] = [dict(message) for message in messages]
        # The full sequence: every id in order, as the engine would see it in think_mode "keep".
        self._ids: list[int] = []
        self._mask: list[int] = []
        self._logprobs: list[float] = []
        self._turns: list[_Turn] = []
        self._turn_sequences: list[TokenSequence] = []  # think_mode "drop"
        # The anchor: the end of the last assistant turn (or the start). Only ids after it are template output not
        # yet followed by a sampled turn; they are re-rendered when messages are added after it.
        self._anchor_messages = 0
        self._anchor_len = 0
        self._anchor_text = ""
        self._engine_input: list[int] | None = None
        self._render_suffix()

    # ------------------------------------------------------------------ public interface

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation in OpenAI chat format (assistant turns with `reasoning_content` and `tool_calls`)."""
        return list(self._messages)

    @property
    def num_turns(self) -> int:
        """Assistant turns added so far."""
        return len(self._turns)

    @property
    def num_tokens(self) -> int:
        """Length of the current context: what engine_input() returns (before any tool results or user message
        are added after an assistant turn, the context without a generation prompt)."""
        return len(self._context())

    def engine_input(self) -> list[int]:
        """The exact ids the model must read for the next turn (ends with the generation prompt)."""
        if self._messages[-1].get("role") == "assistant":
            raise ConversationError(
                "the conversation ends with an assistant turn: add tool results or a user "
                "message before asking for the next turn"
            )
        return list(self._context())

    def add_assistant(self, token_ids: list[int], logprobs: list[float] | None = None) -> ParsedAssistant:
        """Append exactly the sampled ids (mask 1) and the parsed assistant message; returns the parse.

        `logprobs`: one per sampled id (zeros when the engine gave none). Tool-call ids are `call_{turn}_{i}`.
        With enable_thinking=False the parse's `reasoning` is "" rather than None (the generation prompt's empty
        think block belongs to this turn), so the recorded message renders back to the turn's ids.
        """
        token_ids = [int(token) for token in token_ids]
        logprobs = [0.0] * len(token_ids) if logprobs is None else [float(value) for value in logprobs]
        if len(logprobs) != len(token_ids):
            raise ValueError(f"{len(token_ids)} token ids but {len(logprobs)} logprobs")
        prompt = self.engine_input()
        start = len(self._ids)
        self._append(token_ids, 1, logprobs)
        end = len(self._ids)
        finished = bool(token_ids) and token_ids[-1] == self._im_end
        if not finished:
            self._append([self._im_end], 0)  # the template's end of turn; see the module docstring
        turn = _Turn(start=start, end=end, think=self._think_span(start, end), finished=finished)
        self._turns.append(turn)
        if self.think_mode == "drop":
            self._turn_sequences.append(
                TokenSequence(
                    token_ids=prompt + token_ids,
                    loss_mask=[0] * len(prompt) + [1] * len(token_ids),
                    logprobs=[0.0] * len(prompt) + logprobs,
                )
            )

        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        parsed = parse_assistant(text, turn=len(self._turns) - 1)
        if parsed.reasoning is None and not self.enable_thinking:
            parsed.reasoning = ""  # the generation prompt's empty think block is part of this turn
        self._messages.append(parsed.to_message())
        self._anchor_messages = len(self._messages)
        self._anchor_len = len(self._ids)
        self._anchor_text = self._render(self._messages, add_generation_prompt=False)
        self._engine_input = None
        return parsed

    def add_tool_results(self, results: list[dict[str, Any]]) -> None:
        """Append tool messages (each {"tool_call_id", "name", "content"}); they render as one user turn of
        <tool_response> blocks together with any other tool messages since the last assistant turn."""
        for result in results:
            content = result.get("content")
            if not isinstance(content, str):
                raise TypeError(f"tool result content must be a string, got {type(content).__name__}")
            self._messages.append(
                {
                    "role": "tool",
                    "tool_call_id": result.get("tool_call_id", ""),
                    "name": result.get("name", ""),
                    "content": content,
                }
            )
        self._render_suffix()

    def add_user(self, text: str) -> None:
        """Append a user message (e.g. a nudge after a turn without tool calls)."""
        self._messages.append({"role": "user", "content": text})
        self._render_suffix()

    def sequences(self) -> list[TokenSequence]:
        """Training sequences. "keep": one, the full sequence up to the last sampled id; "drop": one per turn.
        Empty before the first assistant turn."""
        if not self._turns:
            return []
        if self.think_mode == "drop":
            return list(self._turn_sequences)
        end = self._turns[-1].end
        return [TokenSequence(token_ids=self._ids[:end], loss_mask=self._mask[:end], logprobs=self._logprobs[:end])]

    # ------------------------------------------------------------------ internals

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token} token: not a Qwen-style tokenizer")
        return token_id

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return render(
            self.tokenizer,
            messages,
            self.tools,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=self.enable_thinking,
            keep_reasoning=self.think_mode == "keep",
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _append(self, ids: list[int], mask: int, logprobs: list[float] | None = None) -> None:
        self._ids.extend(ids)
        self._mask.extend([mask] * len(ids))
        self._logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
        self._engine_input = None

    def _render_suffix(self) -> None:
        """(Re)build the template ids after the anchor from all messages since it, ending with the generation
        prompt. Ids before the anchor are never touched."""
        full = self._render(self._messages, add_generation_prompt=True)
        before = self._anchor_text
        if not full.startswith(before):
            raise ConversationError(
                "the chat template is not prefix-stable: rendering the conversation changed how earlier messages render"
            )
        if self._anchor_messages == 0:
            cut = 0
        else:
            cut = before.rfind(IM_END) + len(IM_END)
            if cut < len(IM_END) or before[cut:].strip():
                raise ConversationError("the last assistant turn does not render ending with <|im_end|>")
        suffix = full[cut:]
        ids = self._encode(suffix)
        if self._anchor_messages and self._encode(IM_END + suffix) != [self._im_end] + ids:
            raise ConversationError("tokenizing the suffix alone differs from tokenizing it after <|im_end|>")
        del self._ids[self._anchor_len :], self._mask[self._anchor_len :], self._logprobs[self._anchor_len :]
        self._append(ids, 0)

    def _context(self) -> list[int]:
        """The current context ids: the full sequence, minus earlier turns' think spans in think_mode "drop"."""
        if self._engine_input is None:
            if self.think_mode == "keep":
                self._engine_input = self._ids
            else:
                ids: list[int] = []
                position = 0
                for turn in self._turns:
                    if turn.think is not None:
                        ids.extend(self._ids[position : turn.think[0]])
                        position = turn.think[1]
                ids.extend(self._ids[position:])
                self._engine_input = ids
        return self._engine_input

    def _think_span(self, start: int, end: int) -> tuple[int, int] | None:
        """The span of the turn's leading think block: from <think> (in the sampled ids, or in the generation prompt
        when thinking is off) through </think> and the newline-only tokens after it, or through the last sampled id
        when the block is unclosed. None when the turn does not open with a think block."""
        ids = self._ids
        header = start - 1
        while header >= 0 and ids[header] != self._im_start:
            header -= 1
        if header < 0:
            return None
        try:
            open_at = ids.index(self._think_open, header + 1, end)
        except ValueError:
            return None
        if self.tokenizer.decode(ids[header + 1 : open_at]).strip() != "assistant":
            return None  # <think> that is not at the start of the turn is content, not reasoning
        try:
            close_at = ids.index(self._think_close, open_at + 1, end)
        except ValueError:  # unclosed: the turn ran out of tokens (or stopped) while reasoning
            return open_at, end - 1 if ids[end - 1] == self._im_end else end
        stop = close_at + 1
        while stop < end and set(self.tokenizer.decode([ids[stop]])) <= {"\n"} and ids[stop] != self._im_end:
            stop += 1
        return open_at, stop
