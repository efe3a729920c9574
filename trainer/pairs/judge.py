"""The optional LLM judge of mined pairs, through the agent's `openai` engine (any chat-completions API).

It sees the query, the answer and both masked contexts, labelled (the judge is told which one is the positive), with
label-blind measurements of the whole contexts (length, masked placeholders: a clipped context hides them), and
rejects a pair that has
- a shortcut cue: the positive could be picked by one of the label-blind shortcuts the audit measures
  (`SHORTCUT_CUES`: query-word overlap, the answer's identifiers in a context, length, the number of masked
  placeholders, a quote of the issue, words a bag-of-words classifier would key on) without checking the answer
  against what the trajectory did, or
- an ambiguous label: the negative supports the answer as well, or the positive does not support it.
It answers with one JSON object `{"accept": bool, "shortcut": bool, "ambiguous": bool, "reason": str}` (the reason
names the cues found by their `SHORTCUT_CUES` names). A reply that is not such an object counts as a rejection with
the reply quoted in the reason: a pair nobody vouched for is not kept. The verdict goes into the record's `judge`
field: accepted, reason, shortcut, ambiguous, model, prompt_version.

Calls run with temperature 0 and the miner's seed; order of the output does not depend on which call returns first.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from agent.engines.base import ChatEngine, SamplingParams
from trainer.pairs.masking import ISSUE_PLACEHOLDER, LINE_PLACEHOLDER, PLACEHOLDER
from trainer.pairs.record import PairRecord

JUDGE_PROMPT_VERSION = 2
"""2: the shortcut cues are named one by one (`SHORTCUT_CUES`, the shortcuts the pair audit measures) and the judge
gets the contexts' measured lengths and placeholder counts; version 1 only said "some identifier, file name, error
message or other string". Verdicts of different versions are not comparable."""

SHORTCUT_CUES: tuple[tuple[str, str], ...] = (
    (
        "query_overlap",
        "the positive shares clearly more of the query's distinctive words (rare words, names, error "
        "messages, numbers) than the negative does",
    ),
    (
        "answer_identifiers",
        "a file, module, function, class or other identifier that the answer names appears in the "
        "positive but not in the negative",
    ),
    ("length", "one context is much longer or shorter than the other (see the measured lengths)"),
    (
        "mask_count",
        f'one context has clearly more masked placeholders ("{PLACEHOLDER}", "{LINE_PLACEHOLDER}") '
        "than the other (see the measured counts)",
    ),
    (
        "issue_quote",
        "a context contains the issue's title or quotes the query's text (the issue text itself is "
        f'replaced by "{ISSUE_PLACEHOLDER}", so any quote of it is a leak)',
    ),
    (
        "vocabulary",
        "words that set the positive apart on their own, the way a bag-of-words classifier would find "
        'them (e.g. success or failure messages, "fixed", "all tests pass", a submit step), whatever the '
        "answer says",
    ),
)
"""(name, what to look for): the label-blind shortcuts a model could use to pick the positive without reading what the
trajectory did; the reason names the ones found."""

SYSTEM = (
    "You review training examples for a context-selection task. Each example has a query (a software issue), "
    "an answer (a description of the code change that resolved it, with code masked) and two agent "
    "trajectories; the POSITIVE one produced that change, the NEGATIVE one worked on a similar but different "
    "issue. Patch contents in both trajectories are masked on purpose. A model will see the query, the answer "
    "and the two trajectories unlabelled and must pick the one that supports the answer; an example is "
    "useful only if picking it takes understanding what each trajectory did."
)

USER = """<query>
{query}
</query>

<answer>
{answer}
</answer>

<positive_context>
{positive}
</positive_context>

<negative_context>
{negative}
</negative_context>

<measured>
Of the whole contexts (a long context is cut in the middle above; these numbers are not):
positive: {positive_facts}
negative: {negative_facts}
</measured>

Reject the example if either holds:
1. shortcut: the positive could be picked by any of these label-blind cues, without checking the answer against \
what the trajectory actually did:
{cues}
2. ambiguous: the negative trajectory supports the answer as well, or the positive does not support it.
Otherwise accept it. Reply with one JSON object and nothing else; in "reason", name the cues you found by the names \
above, or say why the example is clean:
{{"accept": true or false, "shortcut": true or false, "ambiguous": true or false, "reason": "one sentence"}}"""

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def clip(text: str, max_chars: int) -> str:
    """Head and tail of `text` around a marker when it is over max_chars (the judge's context is finite)."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    return text[:head] + "\n[… middle omitted for the judge …]\n" + text[len(text) - (max_chars - head) :]


def measured(context: str) -> str:
    """Label-blind facts of a whole context that a clipped one hides (for the length and mask_count cues)."""
    masks = context.count(PLACEHOLDER) + context.count(LINE_PLACEHOLDER)
    return f"{len(context)} characters, {context.count(chr(10)) + 1} lines, masked placeholders: {masks}"


def judge_messages(pair: PairRecord, max_context_chars: int) -> list[dict[str, str]]:
    cues = "\n".join(f"   - {name}: {what};" for name, what in SHORTCUT_CUES)
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": USER.format(
                query=pair.query,
                answer=pair.answer,
                positive=clip(pair.positive, max_context_chars),
                negative=clip(pair.negative, max_context_chars),
                positive_facts=measured(pair.positive),
                negative_facts=measured(pair.negative),
                cues=cues,
            ),
        },
    ]


def parse_verdict(content: str | None) -> dict[str, Any]:
    """The verdict in a reply: {accepted, reason, shortcut, ambiguous}; an unreadable reply is a rejection."""
    text = content or ""
    match = _OBJECT.search(text)
    try:
        data = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("accept"), bool):
        return {
            "accepted": False,
            "reason": f"unreadable judge reply: {text[:200]!r}",
            "shortcut": None,
            "ambiguous": None,
        }
    reason = data.get("reason")
    return {
        "accepted": data["accept"],
        "reason": reason if isinstance(reason, str) else "",
        "shortcut": data.get("shortcut") if isinstance(data.get("shortcut"), bool) else None,
        "ambiguous": data.get("ambiguous") if isinstance(data.get("ambiguous"), bool) else None,
    }


async def judge_pairs(
    engine: ChatEngine,
    pairs: Sequence[PairRecord],
    *,
    seed: int,
    concurrency: int,
    max_context_chars: int,
    max_tokens: int = 256,
) -> list[dict[str, Any]]:
    """One verdict per pair, in the pairs' order (the engine's errors propagate: a judge that cannot be reached
    stops the run rather than passing pairs unchecked)."""
    gate = asyncio.Semaphore(max(1, concurrency))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=seed)

    async def one(pair: PairRecord) -> dict[str, Any]:
        async with gate:
            message, _ = await engine.chat(judge_messages(pair, max_context_chars), [], params)
        verdict = parse_verdict(message.get("content") if isinstance(message, dict) else None)
        return {**verdict, "model": engine.model_name, "prompt_version": JUDGE_PROMPT_VERSION}

    return list(await asyncio.gather(*(one(pair) for pair in pairs)))
