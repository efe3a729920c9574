"""The code BPE (agent/code_tokenizer.py): any text round-trips, Qwen3's added tokens come right after the BPE with
their flags, eos / pad / chat template are Qwen3's, training is deterministic and cached, it is much more compact on
code than bytes, and a tiny model built on it loads, samples and records its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.code_tokenizer import build_code_tokenizer
from agent.tokenizer import QWEN3_ADDED_TOKENS, build_qwen3_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):  # type: ignore[no-untyped-def]
    return build_code_tokenizer(cache_dir=tmp_path_factory.mktemp("code-bpe"))


@pytest.mark.parametrize(
    "text",
    [
        "sed -i -e '11s|ROUND_HALF_EVEN|ROUND_HALF_UP|' minicalc/money.py",
        "ünïcode 🐛 中文 tabs\tand\r\nCRLF  double  spaces \x00\x7f",
        "def f(x):\n    return x ** 2  # comment\n",
        "",
    ],
)
def test_any_text_round_trips(tok, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert all(0 <= i < 8192 for i in ids)  # plain text never yields an added token


def test_added_tokens_eos_pad_and_template(tok) -> None:  # type: ignore[no-untyped-def]
    assert len(tok) == 8192 + len(QWEN3_ADDED_TOKENS)
    for offset, (_, content, special) in enumerate(QWEN3_ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(content) == 8192 + offset
        assert tok.encode(content, add_special_tokens=False) == [8192 + offset]
        assert (tok.decode([8192 + offset], skip_special_tokens=True) == "") == special
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    qwen = build_qwen3_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "fix a.py"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_compact_on_code_and_deterministic(tok, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import agent.code_tokenizer

    source = Path(agent.code_tokenizer.__file__).read_text()
    ids = tok.encode(source, add_special_tokens=False)
    assert len(ids) < len(source.encode()) / 3  # BPE merges, not bytes
    again = build_code_tokenizer(cache_dir=tmp_path / "again")  # trained afresh in another cache directory
    first_model = json.loads(tok.backend_tokenizer.to_str())["model"]
    again_model = json.loads(again.backend_tokenizer.to_str())["model"]
    assert first_model["merges"] == again_model["merges"] and first_model["vocab"] == again_model["vocab"]
    assert (tmp_path / "again" / "cache_key.json").is_file()
    with pytest.raises(ValueError, match="at least 512"):
        build_code_tokenizer(100, cache_dir=tmp_path / "small")


def test_tiny_model_on_the_code_tokenizer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from agent.engines.base import SamplingParams
    from agent.engines.hf import HFEngine
    from agent.tiny import MARKER, build_tiny_model

    qwen_dir = build_tiny_model(tmp_path / "qwen")
    code_dir = build_tiny_model(tmp_path / "code", tokenizer="code-bpe")
    config = json.loads((code_dir / "config.json").read_text())
    assert config["vocab_size"] == 8192 + len(QWEN3_ADDED_TOKENS)
    assert config["eos_token_id"] == 8194 and config["pad_token_id"] == 8192  # <|im_end|>, <|endoftext|>
    assert json.loads((code_dir / MARKER).read_text())["tokenizer"] == "code-bpe"
    assert (code_dir / "model.safetensors").stat().st_size < (qwen_dir / "model.safetensors").stat().st_size / 10
    assert build_tiny_model(tmp_path / "code", tokenizer="code-bpe") == code_dir  # same arguments: reused
    with pytest.raises(ValueError, match="qwen3 or code-bpe"):
        build_tiny_model(tmp_path / "other", tokenizer="gpt2")
    engine = HFEngine.from_pretrained(code_dir)
    out = asyncio.run(engine.generate([8193, 100, 200], SamplingParams(max_tokens=8, temperature=1.0, seed=0)))
    assert len(out.token_ids) >= 1 and all(0 <= i < config["vocab_size"] for i in out.token_ids)
