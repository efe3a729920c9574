"""The hf engine's sampler (`agent.engines.hf._sample`): draws follow the processed distribution (temperature,
top-k, top-p), never a token that processing removed, and are reproducible from the seed."""

from __future__ import annotations

import pytest
import torch

from agent.engines.base import SamplingParams
from agent.engines.hf import _sample


def _frequencies(logits: torch.Tensor, params: SamplingParams, draws: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(logits.numel())
    for _ in range(draws):
        counts[_sample(logits, params, generator)[0]] += 1
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


def test_the_processed_logprob_is_that_of_the_distribution_drawn_from() -> None:
    """vLLM's processed_logprobs: after temperature, top-k and top-p (renormalised over what they keep)."""
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(3)) * 3
    generator = torch.Generator().manual_seed(0)
    tempered = torch.log_softmax(logits / 0.6, dim=-1)
    for _ in range(20):
        token, logprob = _sample(logits, SamplingParams(max_tokens=1, temperature=0.6), generator)
        assert abs(logprob - float(tempered[token])) < 1e-4
    kept = torch.topk(logits, 5).indices
    truncated = torch.log_softmax(logits[kept] / 0.6, dim=-1)
    for _ in range(20):
        token, logprob = _sample(logits, SamplingParams(max_tokens=1, temperature=0.6, top_k=5), generator)
        assert token in kept.tolist()
        assert abs(logprob - float(truncated[kept.tolist().index(token)])) < 1e-4


def test_a_certain_token_and_the_seed() -> None:
    logits = torch.full((151_669,), -1e4)
    logits[123_456] = 10.0
    generator = torch.Generator().manual_seed(1)
    assert {_sample(logits, SamplingParams(max_tokens=1, temperature=1.0), generator)[0] for _ in range(50)} == {
        123_456
    }
    wide = torch.randn(151_669)
    params = SamplingParams(max_tokens=1, temperature=1.0)
    first = [_sample(wide, params, torch.Generator().manual_seed(7))[0] for _ in range(3)]
    assert len(set(first)) == 1  # the same seed gives the same draw
    assert _sample(wide, SamplingParams(max_tokens=1, temperature=0.0), torch.Generator()) == (int(wide.argmax()), 0.0)


@pytest.mark.slow  # ~5 s CPU: left out of scripts/test.sh --fast
def test_a_batch_samples_what_each_request_samples_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Prompts of different lengths (left-padded in the batch) with their own seeds, limits and stop tokens: the
    batched engine returns, per request, the ids the request gets alone, and logprobs equal to float rounding —
    which are also what a plain forward of prompt + completion gives (the trainer's recomputation)."""
    import asyncio

    from agent.engines.hf import HFEngine
    from agent.tiny import build_tiny_model

    engine = HFEngine.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    prompts = [list(range(100, 140)), list(range(500, 507)), list(range(900, 1000)), [42]]
    params = [
        SamplingParams(max_tokens=12, temperature=1.0, seed=1),
        SamplingParams(max_tokens=5, temperature=0.0),
        SamplingParams(max_tokens=20, temperature=0.8, top_k=50, seed=3),
        SamplingParams(max_tokens=9, temperature=1.0, seed=4),
    ]
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
        assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(want.logprobs[: len(got.logprobs)]), atol=1e-4)
    model = engine.model
    for prompt, got in zip(prompts, batched):
        ids = torch.tensor([prompt + got.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
        expected = logp.gather(1, torch.tensor(got.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(got.logprobs), expected, atol=1e-4)


def test_processed_logprobs_equal_the_trainers_tempered_recomputation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With `logprobs_mode="processed_logprobs"` and a temperature, the engine reports log softmax(logits / T) of
    each sampled token — the numbers the trainer computes at that temperature (so the GRPO ratio starts at 1 and
    the engine/trainer mismatch is rounding), and not the raw model's."""
    from agent.engines.hf import HFEngine
    from agent.tiny import build_tiny_model
    from trainer.logprobs import masked_model_token_logprobs

    engine = HFEngine.from_pretrained(build_tiny_model(tmp_path / "tiny"), logprobs_mode="processed_logprobs")
    prompt = list(range(300, 340))
    got = engine._generate_sync(prompt, SamplingParams(max_tokens=16, temperature=0.7, seed=5))
    ids = torch.tensor([prompt + got.token_ids])
    mask = torch.zeros_like(ids)
    mask[0, len(prompt) :] = 1
    with torch.no_grad():
        tempered = masked_model_token_logprobs(engine.model, ids, torch.ones_like(ids), mask, temperature=0.7)
        raw = masked_model_token_logprobs(engine.model, ids, torch.ones_like(ids), mask)
    assert torch.allclose(torch.tensor(got.logprobs), tempered[0, len(prompt) :], atol=1e-4)
    assert (torch.tensor(got.logprobs) - raw[0, len(prompt) :]).abs().max() > 1e-2  # raw would be a different policy
    with pytest.raises(ValueError, match="logprobs_mode"):
        HFEngine(engine.model, logprobs_mode="logits")  # type: ignore[arg-type]


def test_the_two_level_search_matches_a_full_cumulative_sum() -> None:
    """`_inverse_cdf` (block sums, then one block's cumulative sum) picks the token a full float64 cumulative sum
    picks, at block edges too, and never a zero-probability token — not even for u at the very top."""
    from agent.engines.hf import _BLOCK, _inverse_cdf

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 5 * _BLOCK + 77, generator=generator) * 4, dim=-1)
    probs[1, 2 * _BLOCK : 4 * _BLOCK] = 0.0  # empty blocks in the middle, and a ragged last block
    probs[2, -200:] = 0.0
    uniforms = [0.0, 0.3, 0.999999999, *torch.rand(40, generator=generator, dtype=torch.float64).tolist()]
    for u in uniforms:
        got = _inverse_cdf(probs, [u] * 3)
        for row in range(3):
            cdf = probs[row].double().cumsum(0)
            want = min(
                int(torch.searchsorted(cdf, torch.tensor(u, dtype=torch.float64) * cdf[-1], right=True)),
                probs.shape[1] - 1,
            )
            assert probs[row, got[row]] > 0
            if abs(float(cdf[want]) - u * float(cdf[-1])) > 1e-9:  # away from a float tie, the very same token
                assert got[row] == want or probs[row, want] == 0, (u, row, got[row], want)
