"""The engine interface: token ids in, sampled token ids and their logprobs out.

Backends (one file each): `vllm` (a vLLM server over HTTP), `hf` (an in-process transformers model), `openai`
(any chat-completions API; text only — it cannot give token ids, so trajectories from it are refused for training).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineError(RuntimeError):
    """The engine failed in a way retries did not fix."""


class SamplingConfig(BaseModel):
    """How tokens are drawn (vLLM's names): the one definition of the sampling settings, which an agent's config
    (agent.loop.AgentConfig) and each request (`SamplingParams`) extend."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.7, ge=0.0)
    """Softmax temperature; 0 means greedy. It is part of the policy: the trainer's GRPO loss trains
    softmax(logits / temperature), the distribution the rollouts were drawn from."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p (1: off)."""
    top_k: int = -1
    """Sample among the k most likely tokens only (-1: all)."""


class SamplingParams(SamplingConfig):
    """One request's sampling: the sampling settings, and this request's length, stop tokens and seed."""

    max_tokens: int = 1024
    """Most tokens to sample in this turn."""
    stop_token_ids: list[int] = Field(default_factory=list)
    """Token ids that end the turn (included in the output, as vLLM does for EOS)."""
    seed: int | None = None
    """Per-request seed, for reproducible sampling where the backend supports it."""


@dataclass
class Generation:
    """One sampled completion."""

    token_ids: list[int]
    """Exactly the sampled ids, the stop token included when the turn ended on one."""
    logprobs: list[float]
    """Log-probability of each sampled id: by default the raw model's (before temperature / top-k / top-p, as vLLM
    reports it by default); under an engine set to `processed_logprobs`, that of the processed distribution the id
    was drawn from."""
    finish_reason: Literal["stop", "length"]
    """`stop`: a stop token ended the turn; `length`: `max_tokens` did."""
    engine_s: float = 0.0
    """Wall time the engine took for this request."""


class Engine(abc.ABC):
    """Generates continuations of token-id prompts. Implementations must allow many requests in flight."""

    name: str = "engine"
    supports_token_ids: bool = True
    """False for engines that only speak chat messages (their trajectories cannot be trained on)."""

    model_name: str = ""
    """What the trajectory records as the model."""
    weights_version: int = 0
    """Incremented by the trainer after each weight update; recorded on every trajectory."""

    @abc.abstractmethod
    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """Sample one continuation of `prompt_ids`."""

    async def close(self) -> None:
        """Release connections / memory."""


class ChatEngine(abc.ABC):
    """An engine that takes OpenAI chat messages and returns a message (possibly with tool calls)."""

    name: str = "chat"
    supports_token_ids: bool = False
    model_name: str = ""
    weights_version: int = 0

    @abc.abstractmethod
    async def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: SamplingParams
    ) -> tuple[dict[str, Any], float]:
        """(assistant message in OpenAI format, engine seconds)."""

    async def close(self) -> None:
        """Release connections."""
