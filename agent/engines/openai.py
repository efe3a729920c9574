"""Chat-completions engine (any OpenAI-compatible API with tool calls): a proprietary baseline or a judge.

It returns messages, not token ids, so its trajectories carry text only and are refused for training
(`require_token_ids`). Transient failures (connection errors, 429, 5xx) are retried with backoff.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from agent.engines.base import ChatEngine, EngineError, SamplingParams

RETRY_STATUSES = {429, 500, 502, 503, 504}


class OpenAIChatEngine(ChatEngine):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 5,
        max_connections: int = 256,
    ):
        self.model_name = model
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self.retries = retries

    async def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: SamplingParams
    ) -> tuple[dict[str, Any], float]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if tools:
            body["tools"] = tools
        if params.seed is not None:
            body["seed"] = params.seed
        started = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.post("/chat/completions", json=body)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise EngineError(f"chat engine unreachable: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    if not response.is_success:
                        raise EngineError(f"chat engine answered {response.status_code}: {response.text[:500]}")
                    message = response.json()["choices"][0]["message"]
                    return message, time.perf_counter() - started
            await asyncio.sleep(min(30.0, 1.0 * 2**attempt))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._http.aclose()


def require_token_ids(engine: Any) -> None:
    """Raise a clear error for engines whose trajectories cannot be trained on."""
    if not getattr(engine, "supports_token_ids", False):
        raise EngineError(
            f"engine {getattr(engine, 'name', type(engine).__name__)!r} returns no token ids, so its "
            "trajectories cannot be used for training (the loss needs the exact sampled ids and "
            "their logprobs); use the vllm or hf engine"
        )
