"""The pair judge (trainer.pairs.judge) against a scripted judge: a real OpenAI-compatible chat server on loopback
(test_probe's LoopbackServer) whose replies are fixed per query, because no real LLM runs offline. What is real: the
prompt as sent over HTTP, the engine, the parsing of the replies and the verdicts in the records.
(The miner's end-to-end run with a judge is tests/trainer/test_mine.py's judge test.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.engines.openai import OpenAIChatEngine
from tests.trainer.test_probe import LoopbackServer
from trainer.pairs.judge import JUDGE_PROMPT_VERSION, SHORTCUT_CUES, judge_pairs, parse_verdict
from trainer.pairs.masking import LINE_PLACEHOLDER, PLACEHOLDER
from trainer.pairs.record import PairRecord, load_pairs, write_pairs

MALFORMED = "Looks fine to me, I would accept it."
REPLIES = {
    "ACCEPT": 'Verdict: {"accept": true, "shortcut": false, "ambiguous": false, "reason": "clean: no cue"}',
    "SHORTCUT": '```json\n{"accept": false, "shortcut": true, "ambiguous": false, '
    '"reason": "answer_identifiers: only the positive names parse_date"}\n```',
    "MALFORMED": MALFORMED,
}
"""The scripted reply by the word the pair's query starts with."""
DELAY_S = {"ACCEPT": 0.4, "SHORTCUT": 0.2, "MALFORMED": 0.0}
"""Earlier pairs answer later, so the replies arrive in the reverse of the pairs' order."""


def make_pair(kind: str) -> PairRecord:
    return PairRecord(
        pair_id=f"pair-{kind.lower()}",
        query=f"{kind}: parse_date crashes on a 'Z' suffix",
        answer="The agent edited utils/dates.py: parse_date now strips the 'Z' suffix.",
        positive=f"$ grep -n parse_date utils/dates.py\n12:def parse_date(s):\n{PLACEHOLDER}\n{LINE_PLACEHOLDER}",
        negative="$ grep -n tz utils/time.py\n3:def tz(s):\n" + PLACEHOLDER,
        funnel_stage="same_file",
    )


def kind_of(body: Any) -> str:
    return body["messages"][-1]["content"].split("<query>\n", 1)[1].split(":", 1)[0]


@pytest.fixture()
def judge() -> Iterator[LoopbackServer]:
    answered: list[str] = []  # the kinds in the order the server answered them

    def chat(body: Any) -> Any:
        kind = kind_of(body)
        time.sleep(DELAY_S[kind])
        answered.append(kind)
        return {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": REPLIES[kind]}}
            ],
        }

    server = LoopbackServer({"POST /v1/chat/completions": chat})
    server.answered = answered  # type: ignore[attr-defined]
    yield server
    server.close()


async def judged(server: LoopbackServer, pairs: list[PairRecord]) -> list[dict[str, Any]]:
    engine = OpenAIChatEngine(server.url, "judge-2", retries=0)
    try:
        return await judge_pairs(engine, pairs, seed=7, concurrency=3, max_context_chars=2000)
    finally:
        await engine.close()


async def test_scripted_verdicts_land_in_the_records(judge: LoopbackServer, tmp_path: Path) -> None:
    pairs = [make_pair(kind) for kind in ("ACCEPT", "SHORTCUT", "MALFORMED")]
    verdicts = await judged(judge, pairs)
    for pair, verdict in zip(pairs, verdicts, strict=True):
        pair.judge = verdict  # as the miner stores it
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    accept, shortcut, malformed = (pair.judge for pair in load_pairs(tmp_path / "pairs.jsonl"))
    meta = {"model": "judge-2", "prompt_version": JUDGE_PROMPT_VERSION}
    assert accept == {"accepted": True, "reason": "clean: no cue", "shortcut": False, "ambiguous": False, **meta}
    assert shortcut == {
        "accepted": False,
        "reason": "answer_identifiers: only the positive names parse_date",
        "shortcut": True,
        "ambiguous": False,
        **meta,
    }
    # a reply that is no verdict rejects the pair, and the rejection quotes it
    assert malformed == {
        "accepted": False,
        "reason": f"unreadable judge reply: {MALFORMED!r}",
        "shortcut": None,
        "ambiguous": None,
        **meta,
    }
    assert JUDGE_PROMPT_VERSION == 2


async def test_prompt_names_the_shortcuts_and_measures_the_contexts(judge: LoopbackServer) -> None:
    await judged(judge, [make_pair("ACCEPT")])
    ((key, body),) = judge.requests
    assert key == "POST /v1/chat/completions" and body["model"] == "judge-2"
    assert body["temperature"] == 0.0 and body["seed"] == 7 and "tools" not in body
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    prompt = user["content"]
    # every cue the audit measures, by name and with what to look for
    for name, what in SHORTCUT_CUES:
        assert f"- {name}: {what};" in prompt
    assert {name for name, _ in SHORTCUT_CUES} == {
        "query_overlap",
        "answer_identifiers",
        "length",
        "mask_count",
        "issue_quote",
        "vocabulary",
    }
    for words in ("bag-of-words classifier", "title", "masked placeholders", "the answer names", "distinctive words"):
        assert words in prompt
    # the judge is told which context is which, and gets the measured lengths and placeholder counts
    pair = make_pair("ACCEPT")
    assert f"<positive_context>\n{pair.positive}\n</positive_context>" in prompt
    assert f"<negative_context>\n{pair.negative}\n</negative_context>" in prompt
    assert f"positive: {len(pair.positive)} characters, 4 lines, masked placeholders: 2" in prompt
    assert f"negative: {len(pair.negative)} characters, 3 lines, masked placeholders: 1" in prompt
    assert '{"accept": true or false, "shortcut": true or false, "ambiguous": true or false' in prompt


async def test_verdicts_do_not_depend_on_order(judge: LoopbackServer) -> None:
    pairs = [make_pair(kind) for kind in ("ACCEPT", "SHORTCUT", "MALFORMED")]
    forward = await judged(judge, pairs)
    # the replies came back in the reverse of the pairs' order; the verdicts are still in the pairs' order
    assert judge.answered == ["MALFORMED", "SHORTCUT", "ACCEPT"]  # type: ignore[attr-defined]
    assert [v["accepted"] for v in forward] == [True, False, False]
    assert [v["shortcut"] for v in forward] == [False, True, None]
    prompts = {kind_of(body): body["messages"] for _, body in judge.requests}
    # the same pairs in another order: the same verdict for each pair, from the same prompt
    judge.requests.clear()
    reordered = [pairs[2], pairs[0], pairs[1]]
    again = await judged(judge, reordered)
    assert [dict(zip((p.pair_id for p in reordered), again, strict=True))[p.pair_id] for p in pairs] == forward
    assert {kind_of(body): body["messages"] for _, body in judge.requests} == prompts


@pytest.mark.parametrize(
    "reply, accepted",
    [
        ('{"accept": true, "shortcut": false, "ambiguous": false, "reason": "ok"}', True),
        ('{"accept": "yes", "reason": "ok"}', None),  # accept must be a JSON boolean
        ('{"accept": true, "reason": ', None),  # cut off mid-object
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(reply: str | None, accepted: bool | None) -> None:
    verdict = parse_verdict(reply)
    if accepted is None:
        assert verdict["accepted"] is False and verdict["reason"].startswith("unreadable judge reply: ")
        assert verdict["shortcut"] is None and verdict["ambiguous"] is None
    else:
        assert verdict["accepted"] is accepted
