"""In-process transformers engine: the same outputs as the vLLM engine (sampled ids + raw-model logprobs) for CPU
tests and tiny runs, and the engine the trainer samples from when it holds the policy itself (weights are shared:
a training step is visible to the next sample, `weights_version` tells which).

Sampling is a hand-written loop over the KV cache rather than `model.generate`, because the logprob we must report
is, per sampled token, exactly vLLM's: by default the raw model's (log-softmax before temperature / top-k / top-p,
vLLM's `--logprobs-mode raw_logprobs`), or with `logprobs_mode="processed_logprobs"` that of the distribution the
token was drawn from (after them, as vLLM's `processed_logprobs`) — the behaviour policy a trainer that samples
with a temperature compares itself with.

Requests are batched: a worker thread takes every request waiting (up to `max_batch_size`), left-pads the prompts
and samples all rows in one forward pass per token, each row with its own seed, limits and stop tokens; requests
that arrive meanwhile form the next batch. On a small model a decode step is mostly fixed per-call overhead, so a
batch of 8 costs little more than one row. Each row's position ids are its own (0 at its first real token), so a
padded row computes what it would alone, up to float rounding of the batched matmuls.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch

from agent.engines.base import Engine, Generation, SamplingParams


def _cache_kwarg() -> str:
    """transformers 5 renamed the forward's `past_key_values` argument to `cache`; accept either release."""
    import inspect

    from transformers import Qwen3ForCausalLM

    return "cache" if "cache" in inspect.signature(Qwen3ForCausalLM.forward).parameters else "past_key_values"


_CACHE_KWARG = _cache_kwarg()


class HFEngine(Engine):
    name = "hf"

    def __init__(
        self,
        model: Any,
        model_name: str = "",
        eos_token_ids: list[int] | None = None,
        decode_threads: int | None = 1,
        max_batch_size: int = 16,
        logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = "raw_logprobs",
    ):
        """`model`: a transformers causal LM (kept in eval mode for sampling; the trainer may train it in between).

        decode_threads: torch intra-op threads while sampling (None: leave torch's setting). One decode step of a
        small model is many tiny ops, where a second OpenMP thread only adds synchronisation — and when other
        processes (graders, env containers) hold the cores, the threads wait on each other: measured on 2 busy
        cores, 11 ms a token with 1 thread vs 80 ms with 2. torch's thread count is per process, so it is set for
        the duration of each request and restored after (the trainer never trains while it samples).
        max_batch_size: most requests sampled together in one batch.
        logprobs_mode: what `Generation.logprobs` holds, as vLLM's option of that name: `raw_logprobs`, the model's
            log-softmax; `processed_logprobs`, the log-probability under the temperature / top-k / top-p processed
            distribution the token was sampled from (greedy: 0)."""
        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(f"logprobs_mode must be raw_logprobs or processed_logprobs, got {logprobs_mode!r}")
        self.logprobs_mode = logprobs_mode
        self.model = model
        self.decode_threads = decode_threads
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or "hf-model"
        self.eos_token_ids = list(eos_token_ids or [])
        self.max_batch_size = max_batch_size
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[tuple[list[int], SamplingParams, asyncio.Future[Generation]]] = []
        self._draining = False
        self.batches = 0
        """Batches sampled so far (requests / batches is the mean batch size)."""

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, **options: Any) -> HFEngine:
        """The model and tokenizer saved in `path`; `options`: the constructor's (decode_threads, logprobs_mode…)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return cls(model, model_name=Path(path).name, eos_token_ids=eos, **options)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        if not prompt_ids:
            raise ValueError("empty prompt")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()
        with self._pending_lock:
            self._pending.append((list(prompt_ids), params, future))
            if not self._draining:  # one drain loop at a time; it keeps going while requests keep arriving
                self._draining = True
                # started on the loop's next turn, so requests made together (asyncio.gather) are one batch
                loop.call_soon(self._worker.submit, self._drain)
        return await future

    def _drain(self) -> None:
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size :]
                if not batch:
                    self._draining = False
                    return
            self.batches += 1
            try:
                results: list[Any] = self._generate_batch([(prompt, params) for prompt, params, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every request of the batch sees the error
                results = [exc] * len(batch)
            for (_, _, future), result in zip(batch, results):
                loop = future.get_loop()
                setter = future.set_exception if isinstance(result, Exception) else future.set_result
                loop.call_soon_threadsafe(_settle, future, setter, result)

    def _generate_sync(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """One request alone (a batch of one)."""
        return self._generate_batch([(list(prompt_ids), params)])[0]

    def _generate_batch(self, requests: list[tuple[list[int], SamplingParams]]) -> list[Generation]:
        started = time.perf_counter()
        rows = len(requests)
        stops = [set(params.stop_token_ids) | set(self.eos_token_ids) for _, params in requests]
        generators = []
        for _, params in requests:
            generator = torch.Generator()
            generator.manual_seed(params.seed if params.seed is not None else torch.seed() % 2**63)
            generators.append(generator)
        token_ids: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        finish: list[Literal["stop", "length"]] = ["length"] * rows
        done = [params.max_tokens <= 0 for _, params in requests]
        longest = max(len(prompt) for prompt, _ in requests)
        pad = 0
        inputs = torch.full((rows, longest), pad, dtype=torch.long)
        attention = torch.zeros((rows, longest), dtype=torch.long)
        for row, (prompt, _) in enumerate(requests):  # left padding: every row's next token is the last column
            inputs[row, longest - len(prompt) :] = torch.tensor(prompt)
            attention[row, longest - len(prompt) :] = 1
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        report_raw = self.logprobs_mode == "raw_logprobs"
        with self._lock, torch.inference_mode():
            was_training = self.model.training
            self.model.eval()
            threads = torch.get_num_threads()
            if self.decode_threads:
                torch.set_num_threads(self.decode_threads)
            try:
                cache = None
                while not all(done):
                    # logits_to_keep=1: a long prompt's full [tokens x vocab] logits would cost GBs for nothing.
                    out = self.model(
                        input_ids=inputs,
                        attention_mask=attention,
                        position_ids=positions,
                        use_cache=True,
                        logits_to_keep=1,
                        **{_CACHE_KWARG: cache},
                    )
                    cache = getattr(out, "cache", None) or out.past_key_values
                    logits = out.logits[:, -1].float()
                    raw_logprobs = torch.log_softmax(logits, dim=-1) if report_raw else None
                    next_ids = torch.full((rows, 1), pad, dtype=torch.long)
                    active = [row for row in range(rows) if not done[row]]
                    drawn = _sample_rows(
                        logits if len(active) == rows else logits[active],
                        [requests[row][1] for row in active],
                        [generators[row] for row in active],
                    )
                    for row, (token, processed_logprob) in zip(active, drawn):
                        params = requests[row][1]
                        token_ids[row].append(token)
                        logprobs[row].append(
                            float(raw_logprobs[row, token]) if raw_logprobs is not None else processed_logprob
                        )
                        next_ids[row, 0] = token
                        if token in stops[row]:
                            finish[row], done[row] = "stop", True
                        elif len(token_ids[row]) >= params.max_tokens:
                            done[row] = True
                    inputs = next_ids
                    attention = torch.cat([attention, torch.ones((rows, 1), dtype=torch.long)], dim=1)
                    positions = positions[:, -1:] + 1
            finally:
                torch.set_num_threads(threads)
                self.model.train(was_training)
        elapsed = time.perf_counter() - started
        return [
            Generation(
                token_ids=token_ids[row],
                logprobs=logprobs[row],
                finish_reason=finish[row],
                engine_s=elapsed,
            )
            for row in range(rows)
        ]

    async def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future[Any], setter: Any, result: Any) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        setter(result)


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> tuple[int, float]:
    """One token from temperature / top-k / top-p processed logits (vLLM's order: temperature, then top-k, top-p),
    and its log-probability under that processed distribution (greedy: 0, the token is certain)."""
    return _sample_rows(logits[None], [params], [generator])[0]


def _processed_scores(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One row's tempered scores with top-k / top-p applied (removed tokens at -inf)."""
    if params.top_k and params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= params.top_p  # keep the token that crosses p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return scores


def _sample_rows(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> list[tuple[int, float]]:
    """`_sample` for each row of `logits` [R, V] with its own settings and generator, in batched tensor ops: at a
    151k vocabulary the per-row softmax / cumsum / search are most of a tiny model's decode step, and one [R, V]
    op costs little more than one row's."""
    results: list[tuple[int, float] | None] = [None] * len(params)
    sampled = [row for row, p in enumerate(params) if p.temperature > 0]
    for row, p in enumerate(params):
        if p.temperature <= 0:
            results[row] = (int(torch.argmax(logits[row])), 0.0)
    if sampled:
        temperatures = torch.tensor([params[row].temperature for row in sampled], dtype=logits.dtype)
        scores = (logits if len(sampled) == len(params) else logits[sampled]) / temperatures[:, None]
        for index, row in enumerate(sampled):  # top-k / top-p are per row; most rows use neither
            if (params[row].top_k and params[row].top_k > 0) or params[row].top_p < 1.0:
                scores[index] = _processed_scores(scores[index], params[row])
        probs = torch.softmax(scores, dim=-1)
        uniforms = [float(torch.rand((), generator=generators[row], dtype=torch.float64)) for row in sampled]
        tokens = _inverse_cdf(probs, uniforms)
        for index, row in enumerate(sampled):
            results[row] = (tokens[index], math.log(float(probs[index, tokens[index]])))
    return [result for result in results if result is not None]  # every row is greedy or sampled above


_BLOCK = 1024
"""Vocabulary entries per block of the two-level inverse-CDF search."""


def _inverse_cdf(probs: torch.Tensor, uniforms: list[float]) -> list[int]:
    """Per row of `probs` [R, V], the token where that row's cumulative distribution first exceeds u × its total.

    Inverse-CDF sampling draws from exactly the distribution torch.multinomial does, with one uniform per row
    instead of an exponential per vocabulary entry (151k of them: ~5 ms a token on CPU). It runs in two levels —
    block sums, then a cumulative sum inside the one block the draw falls in — because a float64 cumulative sum
    over [R, 151k] costs ~10 ms a decode step, more than the tiny model's forward. The search is right-sided, so a
    zero-probability token is never chosen (within a block, float rounding falls back to its last nonzero one)."""
    rows, vocab = probs.shape
    full = vocab // _BLOCK * _BLOCK
    sums = probs[:, :full].reshape(rows, -1, _BLOCK).sum(-1)  # float32 is exact enough per block; the cdf is float64
    if full < vocab:
        sums = torch.cat([sums, probs[:, full:].sum(-1, keepdim=True)], dim=1)
    sums = sums.double()
    block_cdf = sums.cumsum(-1)
    tokens = []
    for row, uniform in enumerate(uniforms):
        target = uniform * float(block_cdf[row, -1])
        block = min(
            int(torch.searchsorted(block_cdf[row], torch.tensor(target, dtype=torch.float64), right=True)),
            block_cdf.shape[1] - 1,
        )
        while float(sums[row, block]) <= 0.0:  # rounding at the very top: step back to a block with mass
            block -= 1
        before = float(block_cdf[row, block - 1]) if block else 0.0
        inside = probs[row, block * _BLOCK : (block + 1) * _BLOCK].double()
        offset = torch.searchsorted(inside.cumsum(0), torch.tensor(target - before, dtype=torch.float64), right=True)
        index = int(offset)
        if index >= inside.numel() or float(inside[index]) <= 0.0:
            index = int(torch.nonzero(inside > 0)[-1])
        tokens.append(block * _BLOCK + index)
    return tokens
