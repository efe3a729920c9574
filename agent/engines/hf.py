"""In-process transformers engine: the same outputs as the vLLM engine (sampled ids + raw-model logprobs) for CPU
tests and tiny runs, and the engine the trainer samples from when it holds the policy itself (weights are shared:
a training step is visible to the next sample, `weights_version` tells which).

Sampling is a hand-written loop over the KV cache rather than `model.generate`, because the logprob we must report
is the raw model's (log-softmax before temperature / top-p / top-k, as vLLM reports by default), per sampled token,
exactly — `generate`'s scores are the processed ones.

Requests are batched: a worker thread takes every request waiting (up to `max_batch_size`), left-pads the prompts
and samples all rows in one forward pass per token, each row with its own seed, limits and stop tokens; requests
that arrive meanwhile form the next batch. On a small model a decode step is mostly fixed per-call overhead, so a
batch of 8 costs little more than one row. Each row's position ids are its own (0 at its first real token), so a
padded row computes what it would alone, up to float rounding of the batched matmuls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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

    def __init__(self, model: Any, model_name: str = "", eos_token_ids: list[int] | None = None,
                 decode_threads: int | None = 1, max_batch_size: int = 16):
        """`model`: a transformers causal LM (kept in eval mode for sampling; the trainer may train it in between).

        decode_threads: torch intra-op threads while sampling (None: leave torch's setting). One decode step of a
        small model is many tiny ops, where a second OpenMP thread only adds synchronisation — and when other
        processes (graders, env containers) hold the cores, the threads wait on each other: measured on 2 busy
        cores, 11 ms a token with 1 thread vs 80 ms with 2. torch's thread count is per process, so it is set for
        the duration of each request and restored after (the trainer never trains while it samples).
        max_batch_size: most requests sampled together in one batch."""
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
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "HFEngine":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return cls(model, model_name=Path(path).name, eos_token_ids=eos)

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
                batch, self._pending = self._pending[:self.max_batch_size], self._pending[self.max_batch_size:]
                if not batch:
                    self._draining = False
                    return
            self.batches += 1
            try:
                results: list[Any] = self._generate_batch([(prompt, params) for prompt, params, _ in batch])
            except Exception as exc:  # every request of the batch sees the error
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
        finish = ["length"] * rows
        done = [params.max_tokens <= 0 for _, params in requests]
        longest = max(len(prompt) for prompt, _ in requests)
        pad = 0
        inputs = torch.full((rows, longest), pad, dtype=torch.long)
        attention = torch.zeros((rows, longest), dtype=torch.long)
        for row, (prompt, _) in enumerate(requests):  # left padding: every row's next token is the last column
            inputs[row, longest - len(prompt):] = torch.tensor(prompt)
            attention[row, longest - len(prompt):] = 1
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
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
                    out = self.model(input_ids=inputs, attention_mask=attention, position_ids=positions,
                                     use_cache=True, logits_to_keep=1, **{_CACHE_KWARG: cache})
                    cache = getattr(out, "cache", None) or out.past_key_values
                    logits = out.logits[:, -1].float()
                    raw_logprobs = torch.log_softmax(logits, dim=-1)
                    next_ids = torch.full((rows, 1), pad, dtype=torch.long)
                    for row, (_, params) in enumerate(requests):
                        if done[row]:
                            continue
                        token = _sample(logits[row], params, generators[row])
                        token_ids[row].append(token)
                        logprobs[row].append(float(raw_logprobs[row, token]))
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
        return [Generation(token_ids=token_ids[row], logprobs=logprobs[row],  # type: ignore[arg-type]
                           finish_reason=finish[row], engine_s=elapsed) for row in range(rows)]

    async def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future[Any], setter: Any, result: Any) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        setter(result)


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from temperature / top-k / top-p processed logits (vLLM's order: temperature, then top-k, top-p)."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    scores = logits / params.temperature
    if params.top_k and params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= params.top_p  # keep the token that crosses p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    # Inverse-CDF sampling: one uniform draw against the cumulative distribution. The same distribution as
    # torch.multinomial, which draws an exponential per vocabulary entry (151k of them: ~5 ms a token on CPU, most of
    # a tiny model's decode step). `right=True` never lands on a zero-probability token.
    cdf = torch.softmax(scores, dim=-1).double().cumsum(0)
    target = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    return min(int(torch.searchsorted(cdf, target, right=True)), cdf.numel() - 1)
