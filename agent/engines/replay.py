"""Replay engine: "samples" scripted assistant texts, tokenized with the real tokenizer (end-of-turn included).

For what a model cannot be made to do on cue: producing the successful demonstration trajectories a warm start is
trained on (the gold patch applied through the real env server, recorded token-exactly by the real conversation
code), and driving the loop through chosen malformed calls in tests. Logprobs are reported as 0.0 (unknown).
"""

from __future__ import annotations

import json
from typing import Any

from agent.engines.base import Engine, Generation, SamplingParams


def tool_call_text(name: str, **arguments: Any) -> str:
    """An assistant turn that calls one tool, in the Hermes / Qwen3 format."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


class ReplayEngine(Engine):
    name = "replay"
    supports_token_ids = True

    def __init__(self, tokenizer: Any, texts: list[str], model_name: str = "replay"):
        """`texts`: one assistant turn each; the last one repeats once they run out."""
        self.tokenizer = tokenizer
        self.texts = list(texts)
        self.model_name = model_name
        self.turn = 0
        self._end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        text = self.texts[min(self.turn, len(self.texts) - 1)]
        self.turn += 1
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self._end]
        if len(ids) > params.max_tokens:
            return Generation(
                token_ids=ids[: params.max_tokens], logprobs=[0.0] * params.max_tokens, finish_reason="length"
            )
        return Generation(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop")
