"""The tiny random Qwen3 model: loads with transformers' Auto classes, carries the tokenizer and template, is small,
is rebuilt only when its arguments change, and samples varied text (not uniform noise, not its input)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from agent.chat_template import CHAT_TEMPLATE
from agent.tiny import MARKER, build_tiny_model
from agent.tokenizer import VOCAB_SIZE, build_qwen3_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(model_dir):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def test_directory_contents_and_size(model_dir: Path) -> None:
    names = {path.name for path in model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        MARKER,
    } <= names
    total = sum(path.stat().st_size for path in model_dir.iterdir())
    assert total < 50 * 2**20, total
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert config["vocab_size"] == VOCAB_SIZE and config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert config["eos_token_id"] == 151645 and config["pad_token_id"] == 151643
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]
    assert not {"temperature", "top_p", "top_k", "do_sample"} & set(generation)  # no hidden sampling defaults
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == CHAT_TEMPLATE
    assert tokenizer_config["eos_token"] == "<|im_end|>" and tokenizer_config["pad_token"] == "<|endoftext|>"


def test_loads_with_auto_classes(model_dir: Path, loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    assert model.dtype == torch.float32 and model.config.vocab_size == VOCAB_SIZE
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    ours = build_qwen3_tokenizer()
    sample = "<|im_start|>user\nFix ünïcode 🐛 in `a.py`\n\n    return x<|im_end|>\n<think>\n</think><tool_call>"
    assert tokenizer.encode(sample, add_special_tokens=False) == ours.encode(sample, add_special_tokens=False)
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.eos_token_id == 151645
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_init_std(loaded) -> None:  # type: ignore[no-untyped-def]
    model, _ = loaded
    embedding = model.get_input_embeddings().weight
    assert abs(embedding.std().item() - 0.3) < 0.01 and abs(embedding.mean().item()) < 0.01
    norms = [p for name, p in model.named_parameters() if name.endswith("norm.weight")]
    assert norms and all(bool((p == 1).all()) for p in norms)


@pytest.mark.slow  # ~8 s CPU: left out of scripts/test.sh --fast
def test_sampling_has_variety(loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a function."}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1], dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum().item()
    assert 1.0 < entropy < math.log(VOCAB_SIZE) - 1.0, entropy  # peaked, yet not a single choice
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            ids.repeat(4, 1),
            attention_mask=torch.ones_like(ids.repeat(4, 1)),
            do_sample=True,
            max_new_tokens=30,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
        )
    samples = [row[ids.shape[1] :].tolist() for row in out]
    assert len({tuple(sample) for sample in samples}) == 4
    prompt_ids = set(ids[0].tolist())
    for sample in samples:
        assert len(set(sample)) > 15  # not a loop on a few tokens
        assert len(set(sample) & prompt_ids) < 5  # not a copy of its input
        assert tokenizer.decode(sample).strip()


@pytest.mark.slow  # ~4 s CPU: left out of scripts/test.sh --fast
def test_idempotent_and_rebuilt_on_change(model_dir: Path, tmp_path: Path) -> None:
    weights = model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert build_tiny_model(model_dir) == model_dir
    assert weights.stat().st_mtime_ns == mtime
    other = build_tiny_model(tmp_path / "other", seed=1, hidden_size=32, num_heads=2, num_kv_heads=1)
    config = json.loads((other / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["head_dim"] == 32 and config["num_attention_heads"] == 2
    rebuilt = build_tiny_model(tmp_path / "other", seed=2, hidden_size=32, num_heads=2, num_kv_heads=1)
    assert json.loads((rebuilt / MARKER).read_text())["seed"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path / "bad", num_heads=3, num_kv_heads=2)
