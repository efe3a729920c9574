"""Fitting a pair's two contexts into the prompt's token budget (`record.prompt_text`): the middle cut of a context
over its budget (`truncate_middle`) and the opening both contexts share (`shared_opening`: left out, shown once or
kept, `SharedPrefix`). The layout (`fit_contexts`) depends only on the two texts and the budget, never on which one is
the positive, so both orders of a pair are cut by the same rule; it also says which characters of each context are
shown (`Spans`, for `record.shown_fractions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

SharedPrefix = Literal["omit", "once", "keep"]
"""How the opening both contexts share is shown (`record.prompt_text`)."""

TRUNCATION_MARKER = "\n[… middle of this context omitted …]\n"
"""Replaces the middle of a context over its budget. Fixed text (no count of omitted tokens), so it says nothing
about how long the hidden part was."""

SHARED_OPENING_MARKERS: dict[str, str] = {
    "omit": "[… the opening both options share is omitted …]\n",
    "once": "[… the opening both options share is shown once, above …]\n",
}
"""The first line of each option when the shared opening is left out of it. Fixed text, identical in both options
(no count, nothing of either context), so it carries no information about which one is the positive."""

SHARED_OPENING_BLOCK = "<shared_opening>\n{text}</shared_opening>\n\n"
"""shared_prefix="once": the shared opening, before the options (its text ends with a newline: whole lines)."""

MIN_SHARED_LINES = 3
MIN_SHARED_CHARS = 200
"""A shared opening shorter than this (in whole lines, or in characters) is left in both contexts: the marker line
would cost about as much as it saves, and a line or two in common is ordinary look-alike text."""

SHARED_OPENING_SHARE = 8
"""shared_prefix="once": the shared opening gets at most max_context_tokens // SHARED_OPENING_SHARE tokens (cut in the
middle beyond that); the two options split what is left."""


def encode_content(tokenizer: Any, text: str, offsets: bool = False) -> Any:
    """Content ids with control tokens split (a literal `<|im_end|>` in a trajectory is text, not a turn's end)."""
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=offsets)
    return (list(encoded["input_ids"]), list(encoded["offset_mapping"])) if offsets else list(encoded["input_ids"])


Spans = list[tuple[int, int]]
"""Character ranges [start, end) of a text that the prompt shows."""


def cut_middle(tokenizer: Any, text: str, max_tokens: int) -> tuple[str, Spans]:
    """`truncate_middle`'s result and the character ranges of `text` it keeps."""
    ids, offsets = encode_content(tokenizer, text, offsets=True)
    if len(ids) <= max_tokens or not ids:
        return text, [(0, len(text))]
    keep = max_tokens - len(encode_content(tokenizer, TRUNCATION_MARKER))
    while keep >= 2:
        head, tail = (keep + 1) // 2, keep // 2
        head_end, tail_start = offsets[head - 1][1], offsets[len(ids) - tail][0]
        cut = text[:head_end] + TRUNCATION_MARKER + text[tail_start:]
        excess = len(encode_content(tokenizer, cut)) - max_tokens
        if excess <= 0:
            return cut, [(0, head_end), (tail_start, len(text))]
        keep -= excess
    raise ValueError(f"a context budget of {max_tokens} tokens leaves no room around the truncation marker")


def truncate_middle(tokenizer: Any, text: str, max_tokens: int) -> str:
    """`text`, or when it is over max_tokens tokens, its head and tail around TRUNCATION_MARKER.

    The result tokenizes (on its own) to at most max_tokens tokens: the head keeps about ⌈k/2⌉ and the tail
    ⌊k/2⌋ of the k tokens left after the marker, cut at token boundaries in the text (characters are never split);
    when the re-tokenized result comes out longer, k shrinks until it fits. It depends only on the text and the
    budget, so both options of a pair are cut by the same rule.
    """
    return cut_middle(tokenizer, text, max_tokens)[0]


def shared_opening(first: str, second: str) -> int:
    """The length in characters of the opening `first` and `second` share in whole lines (each ending with "\\n" in
    both), or 0 when it is under MIN_SHARED_LINES lines or MIN_SHARED_CHARS characters. Symmetric in its arguments."""
    end = lines = 0
    while (newline := first.find("\n", end)) >= 0 and first[end : newline + 1] == second[end : newline + 1]:
        end, lines = newline + 1, lines + 1
    return end if lines >= MIN_SHARED_LINES and end >= MIN_SHARED_CHARS else 0


@dataclass(frozen=True)
class ContextLayout:
    """How a pair's contexts fill the prompt (the same whichever order they are shown in)."""

    shared_block: str
    """SHARED_OPENING_BLOCK filled in, or empty."""
    shared_chars: int
    """Length of the opening both contexts share (0: none, or shared_prefix="keep")."""
    options: dict[str, str]
    """The option text of each context, by "positive" / "negative"."""
    rest_spans: dict[str, Spans]
    """Character ranges shown of each context after its shared opening."""
    whole_spans: dict[str, Spans]
    """Character ranges shown of each whole context (the shared opening's, when shown once, included)."""


def fit_contexts(
    positive: str, negative: str, tokenizer: Any, max_context_tokens: int, shared_prefix: SharedPrefix
) -> ContextLayout:
    """How the contexts `positive` and `negative` fill `max_context_tokens` (the same in both orders)."""
    if shared_prefix not in ("omit", "once", "keep"):
        raise ValueError(f"shared_prefix must be 'omit', 'once' or 'keep', not {shared_prefix!r}")
    shared = 0 if shared_prefix == "keep" else shared_opening(positive, negative)
    budget, block, marker = max_context_tokens, "", ""
    shared_spans: Spans = []
    if shared:
        if shared_prefix == "once":
            text, shared_spans = cut_middle(tokenizer, positive[:shared], max_context_tokens // SHARED_OPENING_SHARE)
            block = SHARED_OPENING_BLOCK.format(text=text)
            budget -= len(encode_content(tokenizer, text))  # the block is context too: out of the same budget
        marker = SHARED_OPENING_MARKERS[shared_prefix]
    # The marker line counts against its option's half, so the prompt stays within what max_context_tokens promises.
    half = budget // 2 - (len(encode_content(tokenizer, marker)) if marker else 0)
    options, rest_spans, whole_spans = {}, {}, {}
    for name, context in (("positive", positive), ("negative", negative)):
        text, spans = cut_middle(tokenizer, context[shared:], half)
        options[name] = marker + text
        rest_spans[name] = spans
        whole_spans[name] = shared_spans + [(shared + start, shared + end) for start, end in spans]
    return ContextLayout(block, shared, options, rest_spans, whole_spans)


def shown_tokens(offsets: Sequence[tuple[int, int]], spans: Spans) -> int:
    """How many tokens (by their character offsets) lie wholly inside the shown ranges (adjacent ranges joined, so a
    token across the end of a shown shared opening and the start of the shown rest counts)."""
    merged: Spans = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return sum(any(start <= a and b <= end for start, end in merged) for a, b in offsets)
