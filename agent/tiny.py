"""A tiny, randomly initialised Qwen3-architecture model with the real Qwen3 tokenizer (or, for CPU training runs,
the 8k code BPE of agent/code_tokenizer.py: same special tokens and template), for tests and runs without weights.

Why: the agent loop, the engines and the trainer need a model that speaks Qwen3's vocabulary and chat template, that
transformers and a vLLM server both load from a directory, and that builds offline in seconds (DESIGN.md, "Tiny
models and real tokenizers, offline"). The init is not the default one: with Qwen3's 0.02 std a tiny tied-embedding
model samples uniformly (measured: next-token entropy 11.9 nats = ln 151,669); 0.3 on the 2-D weights gives ≈ 9 nats:
far from uniform, yet every sample differs and none copies its input, so sampling and logprobs behave like a real
model's (meaninglessly). 1.0 gives ≈ 0.6 nats, close to greedy.

The directory holds config.json, model.safetensors (float32), generation_config.json, tokenizer.json and a
tokenizer_config.json carrying the chat template, plus contextrl_tiny.json: the build arguments, so a second call
with the same arguments reuses the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

MARKER = "contextrl_tiny.json"
"""Written last: its presence with matching arguments means the directory is complete and current."""


def _build_args(tokenizer: str, bpe_tokens: int, **kwargs: object) -> dict[str, object]:
    from .chat_template import CHAT_TEMPLATE
    from .tokenizer import FORMAT_VERSION, QWEN3_ADDED_TOKENS, VOCAB_SIZE

    if tokenizer == "qwen3":
        vocab: dict[str, object] = {"vocab_size": VOCAB_SIZE, "tokenizer_format": FORMAT_VERSION}
    else:
        from .code_tokenizer import FORMAT_VERSION as CODE_FORMAT_VERSION

        vocab = {
            "tokenizer": tokenizer,
            "vocab_size": bpe_tokens + len(QWEN3_ADDED_TOKENS),
            "tokenizer_format": CODE_FORMAT_VERSION,
        }
    return {
        **kwargs,
        **vocab,
        "chat_template_sha256": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest(),
        "marker_version": 1,
    }


def _tokenizer(kind: str, bpe_tokens: int, cache_dir: Path | None) -> PreTrainedTokenizerFast:
    if kind == "qwen3":
        from .tokenizer import VOCAB_SIZE, build_qwen3_tokenizer

        tokenizer = build_qwen3_tokenizer(cache_dir)
        assert len(tokenizer) == VOCAB_SIZE, (len(tokenizer), VOCAB_SIZE)
        return tokenizer
    if kind == "code-bpe":
        from .code_tokenizer import build_code_tokenizer

        return build_code_tokenizer(bpe_tokens, cache_dir)
    raise ValueError(f"tokenizer must be qwen3 or code-bpe, got {kind!r}")


def build_tiny_model(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int = 128,
    init_std: float = 0.3,
    seed: int = 0,
    max_position_embeddings: int = 4096,
    tokenizer_cache_dir: Path | None = None,
    tokenizer: str = "qwen3",
    bpe_tokens: int = 8192,
) -> Path:
    """Build (or reuse) the model directory and return it.

    hidden_size: model width. The embedding (vocab × hidden_size float32: 151,669 × 64 ≈ 39 MB) is most of the
        directory; keep it small.
    num_layers: decoder layers.
    num_heads / num_kv_heads: attention heads and grouped key-value heads.
    head_dim: width of one head. Qwen3 sets it apart from hidden_size / num_heads, and it must be a size vLLM's CPU
        attention supports (32, 64, 80, 96, 112, 128, …), not the 16 that 64 / 4 would give.
    intermediate_size: MLP width.
    init_std: std of the normal init of every 2-D weight (norms stay 1); see the module docstring.
    seed: the init's RNG seed: same arguments, same weights.
    max_position_embeddings: the longest context servers accept.
    tokenizer_cache_dir: where the tokenizer is cached (its module's default when None).
    tokenizer: `qwen3`, the real Qwen3 vocabulary (151,669 ids); or `code-bpe`, a byte-level BPE of `bpe_tokens`
        tokens trained on Python source with Qwen3's added tokens (agent/code_tokenizer.py): the same pipeline at a
        fraction of the output head's cost.
    bpe_tokens: the code BPE's size before the 26 added tokens (`code-bpe` only).
    """
    out_dir = Path(out_dir)
    if num_heads % num_kv_heads:
        raise ValueError("num_heads must be a multiple of num_kv_heads")
    args = _build_args(
        tokenizer,
        bpe_tokens,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        init_std=init_std,
        seed=seed,
        max_position_embeddings=max_position_embeddings,
    )
    if _is_built(out_dir, args):
        return out_dir
    vocab_size = args["vocab_size"]
    assert isinstance(vocab_size, int), vocab_size
    tok = _tokenizer(tokenizer, bpe_tokens, tokenizer_cache_dir)
    assert len(tok) == vocab_size, (len(tok), vocab_size)
    config = _qwen3_config(
        tok,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        init_std=init_std,
    )
    model = _random_model(config, seed, init_std)
    _save_model_dir(out_dir, model, tok, args)
    return out_dir


def _is_built(out_dir: Path, args: dict[str, object]) -> bool:
    """Whether `out_dir` already holds a complete build with these arguments; a non-empty directory that was not
    built here is refused (FileExistsError), never replaced."""
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == args:
        return True
    if out_dir.exists() and any(out_dir.iterdir()) and not marker.is_file():
        raise FileExistsError(f"{out_dir} is not empty and was not built by build_tiny_model: refusing to replace")
    return False


def _special_ids(tok: PreTrainedTokenizerFast) -> tuple[int, int]:
    """The tokenizer's end-of-sequence and padding ids (the padding token also serves as BOS)."""
    from .tokenizer import PAD_TOKEN

    eos_id = tok.eos_token_id
    pad_id = tok.convert_tokens_to_ids(PAD_TOKEN)
    assert isinstance(pad_id, int), pad_id  # one token in, one id out
    return eos_id, pad_id


def _qwen3_config(
    tok: PreTrainedTokenizerFast,
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    max_position_embeddings: int,
    init_std: float,
) -> Qwen3Config:
    """The model's configuration: a Qwen3 with tied embeddings, float32, the tokenizer's special ids."""
    from transformers import Qwen3Config

    eos_id, pad_id = _special_ids(tok)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        max_window_layers=num_layers,
        tie_word_embeddings=True,
        initializer_range=init_std,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    config.architectures = ["Qwen3ForCausalLM"]
    return config


def _random_model(config: Qwen3Config, seed: int, init_std: float) -> Qwen3ForCausalLM:
    """The model with its own init: every 2-D weight ~ N(0, init_std²) from a generator seeded with `seed`, in
    sorted parameter order; norms 1 (see the module docstring)."""
    import torch
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM(config).float()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):  # tied lm_head is the embedding: listed once
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32) * init_std)
            elif name.endswith("norm.weight"):
                param.fill_(1.0)
    model.eval()
    return model


def _save_model_dir(
    out_dir: Path, model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, args: dict[str, object]
) -> None:
    """Write the directory in a scratch folder beside `out_dir`, then move it into place (replacing an older build):
    a reader never sees a half-written model."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_model_files(tmp, model, tok, args)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_model_files(
    dest: Path, model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, args: dict[str, object]
) -> None:
    """Weights, config, generation config, tokenizer, and last the marker; every file readable by all."""
    from transformers import GenerationConfig

    from .tokenizer import save_tokenizer

    model.save_pretrained(str(dest))
    # Keys older loaders (transformers 4.x inside some vLLM builds) read instead of `dtype` / `rope_parameters`.
    config_path = dest / "config.json"
    saved = json.loads(config_path.read_text())
    saved.setdefault("torch_dtype", "float32")
    saved.setdefault("rope_theta", (saved.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    config_path.write_text(json.dumps(saved, indent=2) + "\n")
    # Stop tokens only: sampling defaults here would silently change vLLM's defaults for every request.
    eos_id, pad_id = _special_ids(tok)
    GenerationConfig(bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id).save_pretrained(str(dest))
    save_tokenizer(tok, dest)
    (dest / MARKER).write_text(json.dumps(args, indent=2) + "\n")
    for path in dest.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; servers may run as another user on a shared volume
