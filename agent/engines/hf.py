"""In-process transformers engine: the same outputs as the vLLM engine (sampled ids + raw-model logprobs) for CPU
tests and tiny runs, and the engine the trainer samples from when it holds the policy itself (weights are shared:
a training step is visible to the next sample, `weights_version` tells which).

Sampling is a hand-written loop over the KV cache rather than `model.generate`, because the logprob we must report
is the raw model's (log-softmax before temperature / top-p / top-k, as vLLM reports by default), per sampled token,
exactly — `generate`'s scores are the processed ones. Requests run one at a time on a worker thread (one CPU
model; batching would not pay off at these sizes), so many may be in flight from asyncio.
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

    def __init__(self, model: Any, model_name: str = "", eos_token_ids: list[int] | None = None):
        """`model`: a transformers causal LM (kept in eval mode for sampling; the trainer may train it in between)."""
        self.model = model
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or "hf-model"
        self.eos_token_ids = list(eos_token_ids or [])
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "HFEngine":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return cls(model, model_name=Path(path).name, eos_token_ids=eos)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._generate_sync, list(prompt_ids), params)

    def _generate_sync(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        started = time.perf_counter()
        stop = set(params.stop_token_ids) | set(self.eos_token_ids)
        generator = torch.Generator()
        generator.manual_seed(params.seed if params.seed is not None else torch.seed() % 2**63)
        token_ids: list[int] = []
        logprobs: list[float] = []
        finish = "length"
        with self._lock, torch.inference_mode():
            was_training = self.model.training
            self.model.eval()
            try:
                inputs = torch.tensor([prompt_ids], dtype=torch.long)
                cache = None
                for _ in range(params.max_tokens):
                    # logits_to_keep=1: a long prompt's full [tokens x vocab] logits would cost GBs for nothing.
                    out = self.model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{_CACHE_KWARG: cache})
                    cache = getattr(out, "cache", None) or out.past_key_values
                    logits = out.logits[0, -1].float()
                    raw_logprobs = torch.log_softmax(logits, dim=-1)
                    token = _sample(logits, params, generator)
                    token_ids.append(token)
                    logprobs.append(float(raw_logprobs[token]))
                    if token in stop:
                        finish = "stop"
                        break
                    inputs = torch.tensor([[token]], dtype=torch.long)
            finally:
                self.model.train(was_training)
        return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=finish,  # type: ignore[arg-type]
                          engine_s=time.perf_counter() - started)

    async def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


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
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
