"""A small byte-level BPE tokenizer for code, trained offline on the Python standard library's source, with Qwen3's
pre-tokenizer, added tokens and our chat template: the tokenizer of the CPU trainer's tiny model.

Why a second tokenizer: at Qwen3's 151,669-token vocabulary the output head is most of a tiny model's cost — the
[tokens × 151k] logits of the GRPO update, the warm start's SFT and every decode step (measured: 8 of 17 s of an
update) — and a near-random head spreads probability over 151k tokens it never needs. A real BPE trained on real
code, 8k tokens, keeps the pipeline honest (byte-level, so any text round-trips; the same regex, normalizer,
special tokens and chat template, so the agent loop, the tool-call parser and the trainer run unchanged) at a
twentieth of the head. Trained with the `tokenizers` library in a few seconds; the corpus is the interpreter's
own `*.py` files (no download), and the result is cached keyed by the corpus hash, the vocabulary size and this
module's format version. A model directory carries its tokenizer.json, so a model always meets the tokenizer it
was built with, even where another Python's standard library would train a slightly different one.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from agent.tokenizer import (
    QWEN3_ADDED_TOKENS,
    QWEN_PATTERN,
    cached_tokenizer_file,
    wrap_tokenizer,
)

FORMAT_VERSION = 1
"""Bump when the trained tokenizer's recipe changes: invalidates every cache."""

DEFAULT_BPE_TOKENS = 8192
"""Byte-level BPE tokens (the 256 bytes included) before the added tokens."""

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "contextrl" / "code-bpe-tokenizer"


def corpus_files() -> list[Path]:
    """The training corpus: the standard library's top-level modules (~4.7 MB of Python), in a fixed order."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if not files:
        raise FileNotFoundError("no *.py files in the standard library directory: cannot train the code tokenizer")
    return files


def _train(texts: list[str], bpe_tokens: int):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    for _, content, special in QWEN3_ADDED_TOKENS:  # same contents and flags as Qwen3, ids right after the BPE
        backend.add_tokens([AddedToken(content, special=special, normalized=False)])
    return backend


def build_code_tokenizer(
    bpe_tokens: int = DEFAULT_BPE_TOKENS,
    cache_dir: Path | None = None,
) -> PreTrainedTokenizerFast:
    """The code BPE (`bpe_tokens` byte-level tokens, then Qwen3's 26 added tokens) with eos `<|im_end|>`, pad
    `<|endoftext|>` and our chat template; trained on first use, then read from the cache."""
    if bpe_tokens < 512:
        raise ValueError(f"bpe_tokens must be at least 512 (256 bytes and some merges), got {bpe_tokens}")
    files = corpus_files()
    texts = [path.read_text(encoding="utf-8", errors="replace") for path in files]
    corpus_sha = hashlib.sha256("\0".join(texts).encode("utf-8", errors="replace")).hexdigest()
    key_json = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "bpe_tokens": bpe_tokens,
            "corpus_sha256": corpus_sha,
            "added_tokens": QWEN3_ADDED_TOKENS,
        },
        sort_keys=True,
    )
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR / str(bpe_tokens)
    return wrap_tokenizer(cached_tokenizer_file(cache_dir, key_json, lambda: _train(texts, bpe_tokens)))
