"""Sampler benchmark (not a timed test): the hf engine's per-token sampling over Qwen3's 151,669-entry vocabulary,
against two baselines measured in the same run — `torch.multinomial` per row, and a per-row float64 cumulative sum
over the whole vocabulary (the engine's previous sampler) — plus one whole batched decode step of the tiny model.

At a 151k vocabulary, choosing the next token costs as much as the tiny model's forward: the engine samples all rows
of a batch with one softmax and a two-level inverse-CDF search (`agent/engines/hf.py`, `_sample_rows`).

    python benchmarks/bench_sampler.py [--rows 8] [--repeats 50] [--temperature 0.7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from agent.engines.base import SamplingParams
from agent.engines.hf import HFEngine, _sample_rows
from agent.tiny import build_tiny_model
from agent.tokenizer import VOCAB_SIZE


def _multinomial(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> list[int]:
    probs = torch.softmax(logits / temperature, dim=-1)
    return [int(torch.multinomial(probs[row], 1, generator=generators[row])) for row in range(logits.shape[0])]


def _full_cumsum(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> list[int]:
    tokens = []
    for row in range(logits.shape[0]):
        cdf = torch.softmax(logits[row] / temperature, dim=-1).double().cumsum(0)
        target = torch.rand((), generator=generators[row], dtype=torch.float64) * cdf[-1]
        tokens.append(min(int(torch.searchsorted(cdf, target, right=True)), cdf.numel() - 1))
    return tokens


def _median_ms(function, repeats: int) -> float:  # type: ignore[no-untyped-def]
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="Rows sampled together (the engine's batch).")
    parser.add_argument("--repeats", type=int, default=50, help="Timed repeats per variant (the median is shown).")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--decode-tokens", type=int, default=32, help="Tokens per row in the decode measurement.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the engine's decode_threads default

    logits = torch.randn(args.rows, VOCAB_SIZE, generator=torch.Generator().manual_seed(0)) * 3
    params = [SamplingParams(max_tokens=1, temperature=args.temperature)] * args.rows
    generators = [torch.Generator().manual_seed(row) for row in range(args.rows)]
    variants = {
        "engine (_sample_rows)": lambda: _sample_rows(logits, params, generators),
        "per-row float64 cumsum": lambda: _full_cumsum(logits, args.temperature, generators),
        "per-row torch.multinomial": lambda: _multinomial(logits, args.temperature, generators),
    }
    results = {name: _median_ms(function, args.repeats) for name, function in variants.items()}
    ours = results["engine (_sample_rows)"]
    print(f"choosing {args.rows} next tokens from {VOCAB_SIZE:,} logits (median of {args.repeats}, 1 thread):")
    for name, ms in results.items():
        print(f"  {name:28s} {ms:8.2f} ms   {ms / ours:5.1f}x the engine's")

    with tempfile.TemporaryDirectory() as tmp:
        engine = HFEngine.from_pretrained(build_tiny_model(Path(tmp) / "tiny"), logprobs_mode="processed_logprobs")
        prompts = [[100 + (row * 7 + i) % 5000 for i in range(1000)] for row in range(args.rows)]
        requests = [
            (prompt, SamplingParams(max_tokens=args.decode_tokens, temperature=args.temperature, seed=row))
            for row, prompt in enumerate(prompts)
        ]
        engine._generate_batch(requests[:1])  # warm-up
        started = time.perf_counter()
        engine._generate_batch(requests)
        elapsed = time.perf_counter() - started
    per_step = elapsed / args.decode_tokens * 1000
    print(
        f"tiny model, {args.rows} rows × 1000-token prompts, {args.decode_tokens} tokens: {per_step:.1f} ms a decode "
        f"step (prefill included), of which sampling ~{ours:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
