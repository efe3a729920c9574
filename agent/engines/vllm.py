"""A vLLM server as the engine: token ids in, sampled ids and their logprobs out, over the OpenAI-compatible HTTP API.

Each `generate` is one `POST {base_url}/completions` whose `prompt` is the list of token ids, with
`return_token_ids` (the sampled ids come back as ids, never re-tokenized text) and `logprobs: 0` (vLLM then
reports the logprob of the sampled token only, before temperature / top-p / top-k: the raw model logprob, its default
`--logprobs-mode raw_logprobs`). Sampling settings the request does not name would fall back to the model's
`generation_config.json` (Qwen3 ships temperature 0.6, top_k 20), so every one is sent explicitly.

`token_ids` ends with the token that ended the turn: vLLM keeps both an EOS stop (`stop_reason` null) and a
`stop_token_ids` stop (`stop_reason` = that id) in the returned ids, each with its logprob (tests/agent/
test_vllm_engine.py checks both); a reply that reports a stop token it left out is refused with `EngineError`.

Weight updates (`update_weights`) use vLLM's development endpoints, which exist only when the server runs with
`VLLM_SERVER_DEV_MODE=1` (agent/engines/vllm_server.py sets it): `/pause?mode=wait` (finish in-flight requests,
admit no new ones), `/collective_rpc` `reload_weights` (or `reload_method`) from a directory of safetensors in the
model's own checkpoint format, `/reset_prefix_cache` (drop KV computed with the old weights), `/resume`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import httpx

from agent.engines.base import Engine, EngineError, Generation, SamplingParams

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 502, 503, 504})
"""HTTP statuses worth retrying: overloaded, restarting, or a proxy that lost the upstream."""


class VLLMEngine(Engine):
    """Talks to one vLLM OpenAI-compatible server. Safe for many concurrent `generate` calls (one shared
    connection pool); `update_weights` waits for in-flight requests, swaps the weights and bumps `weights_version`."""

    name = "vllm"
    supports_token_ids = True

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        max_connections: int = 512,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        api_key: str | None = None,
        reload_method: str = "reload_weights",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """
        base_url: the API root, `http://host:port/v1` (a bare `http://host:port` gets `/v1` added).
        model: the served model name sent with each request; None asks `/v1/models` once (the first entry).
        max_connections: size of the shared connection pool (and so the most requests in flight at once).
        timeout_s: read timeout of one request: the longest one generation may take on a busy server.
        max_retries: retries of a request that failed transiently (connection errors, 429/502/503/504,
            an `abort` finish), with exponential backoff from `backoff_s` up to `max_backoff_s`, jittered.
        api_key: sent as a bearer token when the server was started with `--api-key`.
        reload_method: the worker method `update_weights` calls through `/collective_rpc`: vLLM's own
            `reload_weights`, or `reload_weights_repacked` on a CPU server started by agent/engines/vllm_server.py
            (its `reload_method`), which also refreshes a tied LM head (see agent/engines/vllm_worker_ext.py).
        transport: an httpx transport to use instead of the network (tests).
        """
        url = base_url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        self.base_url = url
        self.server_url = url[: -len("/v1")]
        self.model_name = model or ""
        self.reload_method = reload_method
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.weights_version = 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers=headers,
            transport=transport,
        )
        self._model_lock = asyncio.Lock()

    # ---------------------------------------------------------------- generation

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        if not prompt_ids:
            raise EngineError("empty prompt")
        model = await self._model()
        body: dict[str, Any] = {
            "model": model,
            "prompt": list(prompt_ids),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": max(0, params.top_k),  # vLLM: 0 disables top-k
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "n": 1,
            "stop_token_ids": list(params.stop_token_ids),
            "logprobs": 0,  # the sampled token's logprob only
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        start = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            data = await self._post("/completions", body, api=True)
            try:
                choice = data["choices"][0]
            except (KeyError, IndexError, TypeError) as exc:
                raise EngineError(f"vLLM returned no choice: {str(data)[:500]}") from exc
            if choice.get("finish_reason") == "abort" and attempt < self.max_retries:
                # the server aborted it (e.g. paused with mode=abort for a weight update): play it again
                await asyncio.sleep(self._backoff(attempt))
                continue
            return _parse_choice(choice, time.perf_counter() - start)
        raise AssertionError("unreachable")

    async def completions(self, body: dict[str, Any]) -> Any:
        """POST `/v1/completions` with `body` (the served model added when absent), with this engine's retries and
        errors; the parsed reply. For requests `generate` does not make (the probe's prompt logprobs)."""
        return await self._post("/completions", {"model": await self._model(), **body}, api=True)

    async def _model(self) -> str:
        if self.model_name:
            return self.model_name
        async with self._model_lock:
            if not self.model_name:
                data = await self._request("GET", f"{self.base_url}/models")
                try:
                    self.model_name = data["data"][0]["id"]
                except (KeyError, IndexError, TypeError) as exc:
                    raise EngineError(f"{self.base_url}/models lists no model: {str(data)[:500]}") from exc
        return self.model_name

    # ---------------------------------------------------------------- weights

    async def update_weights(self, path: str, *, version: int | None = None, pause: bool = True) -> None:
        """Load new weights from `path` (a directory of safetensors in the served model's checkpoint format, e.g.
        what `model.save_pretrained` writes) into the running server, without a restart, then drop its prefix
        cache and set `weights_version` to `version` (default: one more). With `pause`, in-flight requests finish
        on the old weights first and new ones wait until the reload is done, so no sampled turn mixes two versions.
        Needs a server started with `VLLM_SERVER_DEV_MODE=1`; without it the endpoints are missing (HTTP 404) and
        this raises `EngineError`."""
        paused = False
        if pause:
            await self._post("/pause", None, params={"mode": "wait"})
            paused = True
        try:
            await self._post("/collective_rpc", {"method": self.reload_method, "kwargs": {"weights_path": str(path)}})
            for attempt in range(self.max_retries + 1):
                # fails (success=false) while blocks are still held by running requests; those end soon
                result = await self._post("/reset_prefix_cache", None)
                if not isinstance(result, dict) or result.get("success", True):
                    break
                if attempt == self.max_retries:
                    raise EngineError("vLLM could not reset its prefix cache after the weight reload")
                await asyncio.sleep(self._backoff(attempt))
        finally:
            if paused:
                await self._post("/resume", None)
        self.weights_version = self.weights_version + 1 if version is None else version

    # ---------------------------------------------------------------- HTTP

    async def _post(self, path: str, body: Any, *, api: bool = False, params: dict[str, str] | None = None) -> Any:
        url = f"{self.base_url if api else self.server_url}{path}"
        return await self._request("POST", url, json=body, params=params)

    async def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._client.request(method, url, **kwargs)
            except httpx.ReadTimeout as exc:  # the server took the request and did not answer: not transient
                raise EngineError(f"{method} {url}: no answer within the read timeout ({exc})") from exc
            except httpx.TransportError as exc:
                # connection refused/reset, the server restarting, a full pool: worth another try
                if last:
                    raise EngineError(
                        f"{method} {url}: {type(exc).__name__}: {exc} (after {self.max_retries} retries)"
                    ) from exc
                log.warning("%s %s: %s; retrying", method, url, exc)
                await asyncio.sleep(self._backoff(attempt))
                continue
            if response.status_code in RETRY_STATUS and not last:
                log.warning("%s %s: HTTP %d; retrying", method, url, response.status_code)
                await asyncio.sleep(self._backoff(attempt, response.headers.get("retry-after")))
                continue
            if response.status_code >= 400:
                raise EngineError(f"{method} {url}: HTTP {response.status_code}: {_server_message(response)}")
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                return response.text
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass
        delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return delay * (0.5 + random.random() / 2)

    async def close(self) -> None:
        await self._client.aclose()


def _server_message(response: httpx.Response) -> str:
    """vLLM's error body is `{"error": {"message": ...}}` (OpenAI style) or FastAPI's `{"detail": ...}`."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:2000]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if err:
            return str(err)
        if data.get("detail"):
            return str(data["detail"])
        if data.get("message"):
            return str(data["message"])
    return str(data)[:2000]


def _parse_choice(choice: dict[str, Any], engine_s: float) -> Generation:
    token_ids = choice.get("token_ids")
    logprobs_obj = choice.get("logprobs") or {}
    logprobs = logprobs_obj.get("token_logprobs")
    if token_ids is None or logprobs is None:
        raise EngineError(
            f"vLLM returned no token ids or logprobs (a server older than return_token_ids?): {str(choice)[:500]}"
        )
    if len(token_ids) != len(logprobs):
        raise EngineError(f"vLLM returned {len(token_ids)} token ids but {len(logprobs)} logprobs")
    token_ids = [int(t) for t in token_ids]
    logprobs = [float("nan") if lp is None else float(lp) for lp in logprobs]
    reason = choice.get("finish_reason")
    if reason == "stop":
        stop = choice.get("stop_reason")
        if isinstance(stop, str):
            raise EngineError(f"vLLM stopped on the stop string {stop!r}; this engine sends none")
        if isinstance(stop, int) and (not token_ids or token_ids[-1] != stop):
            raise EngineError(f"vLLM stopped on token {stop} but left it out of the returned ids {token_ids[-5:]}")
        finish: Any = "stop"
    elif reason == "length":
        finish = "length"
    else:
        raise EngineError(f"vLLM finished the request with {reason!r}: {str(choice)[:500]}")
    return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=finish, engine_s=engine_s)
