"""The optional LLM judge of mined pairs, through the agent's `openai` engine (any chat-completions API).

It sees the query, the answer and both masked contexts, labelled (the judge is told which one is the positive), and
rejects a pair that has
- a shortcut cue: an identifier, file name, error message or other string that gives the positive away without
  checking the answer against what the trajectory did (e.g. only the positive mentions a name the answer uses while
  the rest of the contexts would not tell them apart), or
- an ambiguous label: the negative supports the answer as well, or the positive does not support it.
It answers with one JSON object `{"accept": bool, "shortcut": bool, "ambiguous": bool, "reason": str}`. A reply
that is not such an object counts as a rejection with the reply quoted in the reason: a pair nobody vouched for is
not kept. The verdict goes into the record's `judge` field: accepted, reason, shortcut, ambiguous, model,
prompt_version.

Calls run with temperature 0 and the miner's seed; order of the output does not depend on which call returns first.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from agent.engines.base import ChatEngine, SamplingParams
from trainer.pairs.record import PairRecord

JUDGE_PROMPT_VERSION = 1

SYSTEM = ("You review training examples for a context-selection task. Each example has a query (a software issue), "
          "an answer (a description of the code change that resolved it, with code masked) and two agent "
          "trajectories; the POSITIVE one produced that change, the NEGATIVE one worked on a similar but different "
          "issue. Patch contents in both trajectories are masked on purpose.")

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

Reject the example if either holds:
1. shortcut: some identifier, file name, error message or other string gives the positive away without checking the \
answer against what the trajectory actually did;
2. ambiguous: the negative trajectory supports the answer as well, or the positive does not support it.
Otherwise accept it. Reply with one JSON object and nothing else:
{{"accept": true or false, "shortcut": true or false, "ambiguous": true or false, "reason": "one sentence"}}"""

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def clip(text: str, max_chars: int) -> str:
    """Head and tail of `text` around a marker when it is over max_chars (the judge's context is finite)."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    return text[:head] + "\n[… middle omitted for the judge …]\n" + text[len(text) - (max_chars - head):]


def judge_messages(pair: PairRecord, max_context_chars: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER.format(query=pair.query, answer=pair.answer,
                                                     positive=clip(pair.positive, max_context_chars),
                                                     negative=clip(pair.negative, max_context_chars))}]


def parse_verdict(content: str | None) -> dict[str, Any]:
    """The verdict in a reply: {accepted, reason, shortcut, ambiguous}; an unreadable reply is a rejection."""
    text = content or ""
    match = _OBJECT.search(text)
    try:
        data = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("accept"), bool):
        return {"accepted": False, "reason": f"unreadable judge reply: {text[:200]!r}", "shortcut": None,
                "ambiguous": None}
    reason = data.get("reason")
    return {"accepted": data["accept"], "reason": reason if isinstance(reason, str) else "",
            "shortcut": data.get("shortcut") if isinstance(data.get("shortcut"), bool) else None,
            "ambiguous": data.get("ambiguous") if isinstance(data.get("ambiguous"), bool) else None}


async def judge_pairs(engine: ChatEngine, pairs: Sequence[PairRecord], *, seed: int, concurrency: int,
                      max_context_chars: int, max_tokens: int = 256) -> list[dict[str, Any]]:
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
