"""The hf engine's sampler (`agent.engines.hf._sample`): draws follow the processed distribution (temperature,
top-k, top-p), never a token that processing removed, and are reproducible from the seed."""

from __future__ import annotations

import torch

from agent.engines.base import SamplingParams
from agent.engines.hf import _sample


def _frequencies(logits: torch.Tensor, params: SamplingParams, draws: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(logits.numel())
    for _ in range(draws):
        counts[_sample(logits, params, generator)] += 1
    return counts / draws


def test_draws_follow_the_tempered_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    params = SamplingParams(max_tokens=1, temperature=0.7)
    expected = torch.softmax(logits / 0.7, dim=-1)
    observed = _frequencies(logits, params, 20_000)
    # 20k draws: the standard error of each frequency is under 0.0036; 5 of them is a generous bound.
    assert torch.allclose(observed, expected, atol=0.018), (observed, expected)


def test_top_k_and_top_p_removed_tokens_are_never_drawn() -> None:
    logits = torch.tensor([3.0, 2.9, 0.0, -2.0, 2.8, -5.0])
    top_k = _frequencies(logits, SamplingParams(max_tokens=1, temperature=1.0, top_k=2), 3000)
    assert set(torch.nonzero(top_k).flatten().tolist()) == {0, 1}
    top_p = _frequencies(logits, SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5), 3000)
    assert set(torch.nonzero(top_p).flatten().tolist()) <= {0, 1} and top_p[0] > 0


def test_a_certain_token_and_the_seed() -> None:
    logits = torch.full((151_669,), -1e4)
    logits[123_456] = 10.0
    generator = torch.Generator().manual_seed(1)
    assert {_sample(logits, SamplingParams(max_tokens=1, temperature=1.0), generator) for _ in range(50)} == {123_456}
    wide = torch.randn(151_669)
    params = SamplingParams(max_tokens=1, temperature=1.0)
    first = [_sample(wide, params, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert len(set(first)) == 1  # the same seed gives the same draw
    assert _sample(wide, SamplingParams(max_tokens=1, temperature=0.0), torch.Generator()) == int(wide.argmax())


def test_a_batch_samples_what_each_request_samples_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Prompts of different lengths (left-padded in the batch) with their own seeds, limits and stop tokens: the
    batched engine returns, per request, the ids the request gets alone, and logprobs equal to float rounding —
    which are also what a plain forward of prompt + completion gives (the trainer's recomputation)."""
    import asyncio

    from agent.engines.hf import HFEngine
    from agent.tiny import build_tiny_model

    engine = HFEngine.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    prompts = [list(range(100, 140)), list(range(500, 507)), list(range(900, 1000)), [42]]
    params = [SamplingParams(max_tokens=12, temperature=1.0, seed=1),
              SamplingParams(max_tokens=5, temperature=0.0),
              SamplingParams(max_tokens=20, temperature=0.8, top_k=50, seed=3),
              SamplingParams(max_tokens=9, temperature=1.0, seed=4)]
    alone = [engine._generate_sync(prompt, p) for prompt, p in zip(prompts, params)]
    # a stop token the first request samples alone: in the batch it must end that row there and only that row
    params[0] = SamplingParams(max_tokens=12, temperature=1.0, seed=1, stop_token_ids=[alone[0].token_ids[3]])

    async def together() -> list:  # type: ignore[type-arg]
        return list(await asyncio.gather(*(engine.generate(prompt, p) for prompt, p in zip(prompts, params))))

    batched = asyncio.run(together())
    assert engine.batches == 1  # the four requests were sampled together
    assert batched[0].token_ids == alone[0].token_ids[:4] and batched[0].finish_reason == "stop"
    for got, want in zip(batched[1:], alone[1:]):
        assert got.token_ids == want.token_ids and got.finish_reason == "length"
    for got, want in zip(batched, alone):
        assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(want.logprobs[:len(got.logprobs)]), atol=1e-4)
    model = engine.model
    for prompt, got in zip(prompts, batched):
        ids = torch.tensor([prompt + got.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1].float(), dim=-1)
        expected = logp.gather(1, torch.tensor(got.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(got.logprobs), expected, atol=1e-4)
