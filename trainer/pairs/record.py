"""Contrastive pairs: the pair record (JSONL contract) and how a pair is shown to the model.

A contrastive instance z = (Q, A, C+, C−) (DESIGN.md, "The method"): a query, an answer, a context that supports the
answer and a look-alike confounder that does not. The model sees Q, A and the two contexts as options 1 and 2 in one
chat prompt that ends with the opened assistant turn; the logits at the prompt's last token predict the option token,
so one teacher-forced forward pass gives both option logits and the margin Δθ(z) = ℓ+ − ℓ−
(`Presentation.positive_token_id` / `negative_token_id` say which logit is which).

Every pair is shown in both orders (`balanced_presentations`), so a model that favours a position cannot win, and the
two contexts are truncated by the same rule whichever is the positive, so their shown lengths cannot carry the label
beyond what the untruncated texts already do. The opening both contexts share (in mined pairs, the agent's
instructions) is by default left out of both options behind one fixed marker line, so the token budget goes to where
the contexts differ (`prompt_text`, `shown_fractions`; the cut and the shared opening: `context_budget`).

Tokenization: the prompt is our Qwen3 chat template (agent.chat_template) with `enable_thinking=False`, so the opened
assistant turn ends `<think>\\n\\n</think>\\n\\n` and the option digit is the first token the model would emit (Qwen's
pre-tokenizer splits digits one by one, so "1" and "2" are single tokens with no leading-space variant in play:
`option_token_ids` checks this). The template's own text is tokenized as usual; the user turn's text (the prompt
with the query, answer and contexts) is tokenized with control tokens split (`split_special_tokens=True`), so a
trajectory that contains a literal `<|im_end|>` cannot close the turn early.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.pairs.context_budget import SharedPrefix, encode_content, fit_contexts, shown_tokens

RECORD_VERSION: Final = 1

FunnelStage = Literal["same_repo_commit", "same_file", "same_function", "related_issue", "synthetic"]
"""Where in the mining cascade the negative was found (same repo/commit → same file → same function → related
issues), or `synthetic` for hand-made / generated pairs (tests, probes)."""


class PairRecord(BaseModel):
    """One contrastive pair (JSONL, one per line). Version 1."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = RECORD_VERSION
    pair_id: str = Field(min_length=1)
    """Unique within a file."""
    query: str = Field(min_length=1)
    """Q: what was asked (e.g. the issue / problem statement)."""
    answer: str = Field(min_length=1)
    """A: the answer the positive context supports (e.g. the resolving patch's description, patch contents masked)."""
    positive: str = Field(min_length=1)
    """C+: the context that supports the answer (in the agentic setting, an agent trajectory rendered as text)."""
    negative: str = Field(min_length=1)
    """C−: the look-alike confounder that does not."""
    provenance: dict[str, Any] = Field(default_factory=dict)
    """Where the pair came from: source set, the trajectories' ids, repo, commit, file, function, …"""
    funnel_stage: FunnelStage
    judge: dict[str, Any] | None = None
    """The LLM judge's verdict (accepted, reasons, model, …); None when the pair was not judged."""

    @field_validator("query", "answer", "positive", "negative")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _contexts_differ(self) -> PairRecord:
        if self.positive == self.negative:
            raise ValueError("positive and negative are identical: the label would be arbitrary")
        return self


def load_pairs(path: str | Path) -> list[PairRecord]:
    """Read a JSONL file of pair records. Blank lines are skipped; any bad line (not JSON, a missing or invalid field,
    an unknown field, a duplicate pair_id) fails the load with one error that lists every problem by line and field."""
    path = Path(path)
    pairs: list[PairRecord] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {lineno}: not JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(data, dict):
                problems.append(f"line {lineno}: expected a JSON object, got {type(data).__name__}")
                continue
            try:
                pair = PairRecord.model_validate(data)
            except ValidationError as exc:
                for error in exc.errors():
                    field = ".".join(str(part) for part in error["loc"]) or "(record)"
                    problems.append(f"line {lineno}: field '{field}': {error['msg']}")
                continue
            if pair.pair_id in seen:
                problems.append(
                    f"line {lineno}: field 'pair_id': {pair.pair_id!r} already used on line {seen[pair.pair_id]}"
                )
                continue
            seen[pair.pair_id] = lineno
            pairs.append(pair)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{path}: {len(problems)} bad pair record(s):\n  {shown}{more}")
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[PairRecord]) -> None:
    """Write pair records as JSONL (one per line, UTF-8)."""
    with Path(path).open("w", encoding="utf-8") as handle:
        handle.writelines(pair.model_dump_json() + "\n" for pair in pairs)


# ---------------------------------------------------------------------------------------------------- presentation

QUESTION = "Which option supports the answer? Reply with 1 or 2."

PROMPT = (
    "Below are a query, an answer to it, and two contexts. Exactly one of the contexts supports the answer; the "
    "other looks similar but does not.\n\n"
    "<query>\n{query}\n</query>\n\n"
    "<answer>\n{answer}\n</answer>\n\n"
    "{shared_opening}"
    "<option_1>\n{option_1}\n</option_1>\n\n"
    "<option_2>\n{option_2}\n</option_2>\n\n" + QUESTION
)
"""The user turn. `shared_opening` is empty unless the shared opening is shown once (SHARED_OPENING_BLOCK). Change the
prompt only with a new PROMPT_VERSION: probe accuracies are comparable under one prompt only."""
PROMPT_VERSION = 2
"""2: the opening both contexts share is left out of the options by default (`prompt_text`, shared_prefix="omit"), so
the same pair reads differently from version 1 — in mined pairs whole instructions (~944 tokens of a mini-swe-agent
trajectory) came out of a 1,024-token budget — and its accuracies are not comparable with version 1's. A pair with no
shared opening (and shared_prefix="keep", for any pair) gives version 1's text exactly."""


_PLACEHOLDER = "\ue000"  # a private-use character, never produced by the template itself


@dataclass(frozen=True)
class Presentation:
    """One forward pass's input for one pair in one order."""

    input_ids: list[int]
    """The whole prompt, ending with the opened assistant turn (`…<think>\\n\\n</think>\\n\\n`)."""
    answer_position: int
    """Index of the prompt's last token: the logits there predict the option token (= len(input_ids) − 1)."""
    option_token_ids: tuple[int, int]
    """Token ids of "1" and "2"."""
    positive_is_first: bool
    """Option 1 is the positive context."""
    pair_id: str = ""

    @property
    def positive_token_id(self) -> int:
        """The option token of the positive context: ℓ+ is the logit of this id at answer_position."""
        return self.option_token_ids[0 if self.positive_is_first else 1]

    @property
    def negative_token_id(self) -> int:
        """The option token of the negative context: ℓ− is the logit of this id at answer_position."""
        return self.option_token_ids[1 if self.positive_is_first else 0]


def option_token_ids(tokenizer: Any) -> tuple[int, int]:
    """The ids of "1" and "2", checked to be single tokens that the model emits as the first token of its reply (the
    generation prompt followed by "1" tokenizes as the generation prompt's ids plus this id)."""
    from agent.chat_template import EMPTY_THINK

    ids: list[int] = []
    prompt_ids = tokenizer.encode(EMPTY_THINK, add_special_tokens=False)
    for option in ("1", "2"):
        encoded = tokenizer.encode(option, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"option {option!r} is not a single token for this tokenizer: {encoded}")
        if tokenizer.encode(EMPTY_THINK + option, add_special_tokens=False) != prompt_ids + encoded:
            raise ValueError(f"option {option!r} does not tokenize as its own token after the generation prompt")
        ids.append(encoded[0])
    return ids[0], ids[1]


def prompt_text(
    pair: PairRecord,
    tokenizer: Any,
    positive_first: bool,
    max_context_tokens: int,
    shared_prefix: SharedPrefix = "omit",
) -> str:
    """The user turn's text for `pair` with the positive as option 1 (positive_first) or option 2: PROMPT filled in.
    `present` tokenizes it; engines that take chat messages (the probe's `openai`) send it as the user message, so
    both see the same prompt.

    max_context_tokens: the contexts' budget together; each option gets half, and a context over its half is cut in
    the middle (`truncate_middle`; the half bounds the option's own token count — inside the prompt a token at its
    edges may merge with the surrounding newline). The query and the answer are not cut.

    shared_prefix: what to do with the opening both contexts share (`shared_opening`: whole lines, at least a few;
    in mined pairs the agent's instructions and the masked task, identical in C+ and C−):
    - "omit" (the default, used by the probe and L_CA): left out of both options, each of which starts with the fixed
      SHARED_OPENING_MARKERS line instead; the budget goes to what differs. Nothing is lost for the choice: identical
      text is evidence for neither option, and the query and the answer already say what the task is.
    - "once": shown once before the options (SHARED_OPENING_BLOCK), cut in the middle to at most
      max_context_tokens // SHARED_OPENING_SHARE tokens; what it uses comes out of the options' budget. For a model
      that needs the instructions to read the trajectory's format.
    - "keep": left in both options (version 1's presentation).
    Either way the cut depends only on the two texts (the shared opening is symmetric in them) and the budget: the
    same rule whichever context is the positive.
    """
    layout = fit_contexts(pair.positive, pair.negative, tokenizer, max_context_tokens, shared_prefix)
    first, second = ("positive", "negative") if positive_first else ("negative", "positive")
    return PROMPT.format(
        query=pair.query,
        answer=pair.answer,
        shared_opening=layout.shared_block,
        option_1=layout.options[first],
        option_2=layout.options[second],
    )


def shown_fractions(
    pair: PairRecord, tokenizer: Any, max_context_tokens: int, shared_prefix: SharedPrefix = "omit"
) -> dict[str, float | int]:
    """How much of each context the prompt shows (the same in both orders), as shares of the context's own tokens
    (tokenized alone; a token counts when all its characters are shown):
    `positive_rest` / `negative_rest`: of the context after the opening both share (the whole context when there is
    none, or with shared_prefix="keep"; 1.0 when nothing is left after it); `positive_whole` / `negative_whole`: of
    the whole context (a shared opening shown once counts as shown for both); `shared_opening_tokens`: the shared
    opening's length in tokens (0 when none)."""
    layout = fit_contexts(pair.positive, pair.negative, tokenizer, max_context_tokens, shared_prefix)
    shared = layout.shared_chars
    fractions: dict[str, float | int] = {
        "shared_opening_tokens": len(encode_content(tokenizer, pair.positive[:shared])) if shared else 0
    }
    for name, context in (("positive", pair.positive), ("negative", pair.negative)):
        for part, text, spans in (
            ("rest", context[shared:], layout.rest_spans[name]),
            ("whole", context, layout.whole_spans[name]),
        ):
            _, offsets = encode_content(tokenizer, text, offsets=True)
            fractions[f"{name}_{part}"] = shown_tokens(offsets, spans) / len(offsets) if offsets else 1.0
    return fractions


def present(
    pair: PairRecord,
    tokenizer: Any,
    positive_first: bool,
    max_context_tokens: int,
    shared_prefix: SharedPrefix = "omit",
) -> Presentation:
    """The prompt ids for `pair` with the positive as option 1 (positive_first) or option 2: `prompt_text` as the
    user turn of our chat template, ending with the opened assistant turn. max_context_tokens, shared_prefix: as
    `prompt_text`."""
    from agent.chat_template import render

    option_ids = option_token_ids(tokenizer)
    body = prompt_text(pair, tokenizer, positive_first, max_context_tokens, shared_prefix)
    text = render(
        tokenizer, [{"role": "user", "content": _PLACEHOLDER}], add_generation_prompt=True, enable_thinking=False
    )
    prefix, suffix = text.split(_PLACEHOLDER)
    # The template's text is tokenized as usual (its control tokens are real), the user turn's text with control
    # tokens split. The pieces meet at `user\n` | body and body | `<|im_end|>`: boundaries where the whole text's
    # tokenization splits too, so the ids equal tokenizing the rendered text (when the content has no control tokens).
    input_ids = (
        tokenizer.encode(prefix, add_special_tokens=False)
        + encode_content(tokenizer, body)
        + tokenizer.encode(suffix, add_special_tokens=False)
    )
    return Presentation(
        input_ids=input_ids,
        answer_position=len(input_ids) - 1,
        option_token_ids=option_ids,
        positive_is_first=positive_first,
        pair_id=pair.pair_id,
    )


def balanced_presentations(
    pairs: Sequence[PairRecord],
    rng: random.Random,
    both_orders: bool = True,
) -> list[tuple[PairRecord, bool]]:
    """(pair, positive_first) items in which the positive is option 1 exactly as often as option 2 (±1).

    both_orders=True (the default): every pair twice, (pair, True) then (pair, False), adjacent — so any even-sized
        batch cut from the list keeps the balance, and L_CA sees each pair's position bias cancel within the batch.
        rng is not used; shuffle the pairs before calling if their order should vary.
    both_orders=False: every pair once (half the forward passes): a random half of the pairs (drawn with rng) shows
        the positive first, the rest second; with an odd count the last pair's order is a coin flip. The list keeps
        the pairs' order.
    """
    if both_orders:
        return [(pair, first) for pair in pairs for first in (True, False)]
    orders = [True] * (len(pairs) // 2) + [False] * (len(pairs) // 2)
    if len(pairs) % 2:
        orders.append(rng.random() < 0.5)
    rng.shuffle(orders)
    return list(zip(pairs, orders))


def collate_presentations(presentations: Sequence[Presentation], pad_token_id: int) -> dict[str, Any]:
    """Right-padded torch tensors for one forward pass over a batch: input_ids and attention_mask [B, T],
    answer_positions [B], positive_ids and negative_ids [B] (the option tokens whose logits give ℓ+ and ℓ−)."""
    import torch

    if not presentations:
        raise ValueError("no presentations to collate")
    length = max(len(p.input_ids) for p in presentations)
    input_ids = torch.full((len(presentations), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(presentations), length), dtype=torch.long)
    for row, presentation in enumerate(presentations):
        input_ids[row, : len(presentation.input_ids)] = torch.tensor(presentation.input_ids)
        attention_mask[row, : len(presentation.input_ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "answer_positions": torch.tensor([p.answer_position for p in presentations]),
        "positive_ids": torch.tensor([p.positive_token_id for p in presentations]),
        "negative_ids": torch.tensor([p.negative_token_id for p in presentations]),
    }
