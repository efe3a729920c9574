"""Engine backends behind one interface; `make_engine` builds one from CLI-style settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.engines.base import ChatEngine, Engine, EngineError, Generation, SamplingParams

ENGINE_KINDS = ("vllm", "hf", "openai")


def make_engine(kind: str, model: str, engine_url: str | None = None) -> Engine | ChatEngine:
    """`vllm`: a vLLM server at `engine_url` serving `model`; `hf`: a local model directory `model`;
    `openai`: a chat-completions API at `engine_url` (key from OPENAI_API_KEY)."""
    if kind == "hf":
        from agent.engines.hf import HFEngine

        return HFEngine.from_pretrained(model)
    if kind == "vllm":
        from agent.engines.vllm import VLLMEngine

        if not engine_url:
            raise EngineError("the vllm engine needs --engine-url (e.g. http://HOST:8001/v1)")
        return VLLMEngine(engine_url, model=model)
    if kind == "openai":
        from agent.engines.openai import OpenAIChatEngine

        if not engine_url:
            raise EngineError("the openai engine needs --engine-url (e.g. https://api.example.com/v1)")
        return OpenAIChatEngine(engine_url, model)
    raise EngineError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")


def load_tokenizer(path: str | Path | None) -> Any:
    """The tokenizer (with its chat template) from a local directory; the bundled Qwen3 tokenizer when None."""
    if path is None:
        from agent.tokenizer import build_qwen3_tokenizer

        return build_qwen3_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


__all__ = ["ChatEngine", "Engine", "EngineError", "Generation", "SamplingParams", "load_tokenizer", "make_engine"]
