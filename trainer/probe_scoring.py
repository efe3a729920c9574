"""How the context-selection probe gets the model's answer to one presentation, per engine.

Two scoring methods, and the report names the one used:

- `option_logits` (hf, vllm): the logits of the two option tokens ("1", "2") at the answer position of the very
  prompt L_CA trains on (`trainer.pairs.present`). The answer is the option with the larger logit; ℓ1 − ℓ2 is kept.
  hf: one teacher-forced forward pass per batch, the margin by the trainer's own `ca_margin`. vllm: the server's
  prompt logprobs of the prompt followed by each option token (two prompts in one request): a logprob difference
  equals the logit difference (the softmax normalizer cancels), and no top-k cut can hide an option.
- `answer_text` (openai: a chat API gives neither token ids nor logits): a short greedy reply to the same user turn
  (`trainer.pairs.prompt_text`), read by `parse_choice`. A reply with no option in it is an answer of neither
  option: wrong, and counted apart.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.engines.base import EngineError, SamplingParams
from trainer.pairs.record import (
    PairRecord,
    SharedPrefix,
    collate_presentations,
    option_token_ids,
    present,
    prompt_text,
)

Item = tuple[PairRecord, bool]
"""(pair, positive_first): one presentation to score."""

Progress = Callable[[int], None]
"""Called with the number of presentations just scored."""


@dataclass(frozen=True)
class Answer:
    """The model's answer to one presentation."""

    pair_id: str
    positive_first: bool
    """Option 1 was the positive context."""
    choice: int | None
    """1 or 2; None when the reply named neither option (or, by logits, the two were exactly equal)."""
    option_margin: float | None = None
    """ℓ1 − ℓ2, the option tokens' logit difference (option_logits only)."""
    reply: str | None = None
    """The reply text (answer_text only)."""

    @property
    def correct(self) -> bool:
        return self.choice == (1 if self.positive_first else 2)


def _choice_from_margin(first_minus_second: float) -> int | None:
    return 1 if first_minus_second > 0 else 2 if first_minus_second < 0 else None


# -------------------------------------------------------------------------------------------------------------- hf


def score_hf(
    model: Any,
    tokenizer: Any,
    items: Sequence[Item],
    max_context_tokens: int,
    batch_size: int = 8,
    progress: Progress | None = None,
    shared_prefix: SharedPrefix = "omit",
) -> list[Answer]:
    """Option logits from an in-process transformers model, `batch_size` presentations per forward pass.
    max_context_tokens, shared_prefix: as `trainer.pairs.prompt_text` (here and in the other scorers)."""
    import torch

    from trainer.losses import ca_margin

    option_ids = option_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    answers: list[Answer] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            shown = [present(pair, tokenizer, first, max_context_tokens, shared_prefix) for pair, first in chunk]
            batch = {key: value.to(device) for key, value in collate_presentations(shown, pad).items()}
            with torch.inference_mode():
                # The decoder's hidden states, then the output head at the answer positions only: [N, V], never
                # the [N, T, V] logits of the whole prompts (as the trainer's L_CA computes them).
                outputs = model.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
                )
                hidden = outputs.last_hidden_state[torch.arange(len(shown), device=device), batch["answer_positions"]]
                logits = model.get_output_embeddings()(hidden)
                # ca_margin with "positive first" for every row gives ℓ1 − ℓ2: the margin the trainer computes,
                # read as a preference between positions rather than between contexts.
                first_minus_second = ca_margin(
                    logits, option_ids, torch.ones(len(shown), dtype=torch.bool, device=device)
                )
            for (pair, first), value in zip(chunk, first_minus_second.tolist()):
                answers.append(Answer(pair.pair_id, first, _choice_from_margin(value), option_margin=value))
            if progress:
                progress(len(chunk))
    finally:
        model.train(was_training)
    return answers


# ------------------------------------------------------------------------------------------------------------ vllm


async def score_vllm(
    engine: Any,
    tokenizer: Any,
    items: Sequence[Item],
    max_context_tokens: int,
    concurrency: int = 16,
    progress: Progress | None = None,
    shared_prefix: SharedPrefix = "omit",
) -> list[Answer]:
    """Option logits from a vLLM server (`agent.engines.vllm.VLLMEngine`): per presentation one `/v1/completions`
    request with two prompts, the prompt ids followed by "1" and by "2", and `prompt_logprobs: 0` (the logprob of
    each prompt token): the last entries are log p("1") and log p("2") at the answer position."""
    option_ids = option_token_ids(tokenizer)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(pair: PairRecord, first: bool) -> Answer:
        ids = present(pair, tokenizer, first, max_context_tokens, shared_prefix).input_ids
        body = {
            "prompt": [ids + [option_ids[0]], ids + [option_ids[1]]],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
            "n": 1,
        }
        async with semaphore:
            data = await engine.completions(body)
        logprobs = _last_prompt_logprobs(data, option_ids)
        if progress:
            progress(1)
        value = logprobs[0] - logprobs[1]
        return Answer(pair.pair_id, first, _choice_from_margin(value), option_margin=value)

    return list(await asyncio.gather(*(one(pair, first) for pair, first in items)))


def _last_prompt_logprobs(data: Any, option_ids: tuple[int, int]) -> tuple[float, float]:
    """(log p("1"), log p("2")) from a completions reply to the two prompts. vLLM serializes `prompt_logprobs` as
    one entry per prompt token: null for the first, else `{"<token id>": {"logprob": …, "rank": …, …}}`."""
    try:
        choices = sorted(data["choices"], key=lambda choice: choice["index"])
        values = []
        for choice, option in zip(choices, option_ids, strict=True):
            entry = choice["prompt_logprobs"][-1]
            values.append(float(entry[str(option)]["logprob"]))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise EngineError(
            "the vLLM server's reply has no prompt logprobs for the option tokens (is it vLLM, with "
            f"prompt_logprobs support?): {str(data)[:500]}"
        ) from exc
    return values[0], values[1]


# ---------------------------------------------------------------------------------------------------------- openai

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_OPTION = re.compile(r"(?<![0-9])[12](?![0-9])")


def parse_choice(reply: str | None) -> int | None:
    """The first standalone "1" or "2" of a reply ("Option 2." → 2, "2" → 2; "12" or "none" → None), after any
    `<think>` block (a reasoning model's thoughts may name both options; an unfinished one leaves no answer)."""
    if not reply:
        return None
    match = _OPTION.search(_THINK.sub("", reply))
    return int(match.group()) if match else None


async def score_chat(
    engine: Any,
    tokenizer: Any,
    items: Sequence[Item],
    max_context_tokens: int,
    max_answer_tokens: int = 16,
    concurrency: int = 16,
    progress: Progress | None = None,
    shared_prefix: SharedPrefix = "omit",
) -> list[Answer]:
    """Answer text from a chat engine (`agent.engines.openai.OpenAIChatEngine`): the user turn alone, greedy,
    at most `max_answer_tokens` tokens. The tokenizer only sizes the contexts' truncation."""
    semaphore = asyncio.Semaphore(concurrency)
    params = SamplingParams(max_tokens=max_answer_tokens, temperature=0.0)

    async def one(pair: PairRecord, first: bool) -> Answer:
        messages = [{"role": "user", "content": prompt_text(pair, tokenizer, first, max_context_tokens, shared_prefix)}]
        async with semaphore:
            message, _ = await engine.chat(messages, [], params)
        if progress:
            progress(1)
        reply = message.get("content") if isinstance(message, dict) else None
        reply = reply if isinstance(reply, str) else None
        return Answer(pair.pair_id, first, parse_choice(reply), reply=reply)

    return list(await asyncio.gather(*(one(pair, first) for pair, first in items)))
