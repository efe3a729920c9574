"""Trainer configuration: one typed model, loaded from YAML (`--config`), every field documented."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class GRPOSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    advantage: Literal["grpo", "rloo"] = "grpo"
    """Group baseline: the group mean (GRPO) or the leave-one-out mean (RLOO)."""
    scale_by_std: bool = True
    """Divide advantages by the group's reward std."""
    clip_low: float = 0.2
    """Lower ratio clip ε_low."""
    clip_high: float = 0.28
    """Upper ratio clip ε_high (clip-higher)."""
    aggregation: Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"] = "token_mean"
    """How token losses become the batch loss."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to a frozen reference (0: no reference model is kept)."""
    tis_cap: float | None = 2.0
    """Truncated importance sampling cap for the engine/trainer logprob mismatch (None: off)."""
    mask_truncated: bool = False
    """Leave episodes that hit a limit out of the loss (they are counted either way)."""


class TrainerConfig(BaseModel):
    """Everything `python -m trainer.run` can be told."""

    model_config = ConfigDict(extra="forbid")

    model: str = "tiny"
    """A local model directory, or `tiny` to build the tiny Qwen3-architecture model offline."""
    tokenizer: str | None = None
    """Tokenizer directory (default: the model's own)."""
    engine: Literal["hf", "vllm"] = "hf"
    """Sampler: the in-process policy (`hf`) or a vLLM server reloaded from a checkpoint after each step."""
    engine_url: str | None = None
    """vLLM server URL when engine is `vllm`."""
    env_urls: list[str] = Field(default_factory=list)
    """Env servers; empty starts a local one on the sample tasks."""
    tasks: list[str] | Literal["all"] = "all"
    """Task ids to train on."""
    pairs: Path | None = None
    """Contrastive pair file (JSONL) for L_CA; None: no L_CA."""
    heldout_pairs: Path | None = None
    """Pairs never trained on, for the context-selection accuracy curve."""
    steps: int = 20
    """Optimizer steps."""
    tasks_per_step: int = 4
    """B: tasks per step."""
    group_size: int = 4
    """G: rollouts per task."""
    pairs_per_step: int = 4
    """Pairs per step (each presented in both orders)."""
    concurrency: int = 8
    """Episodes in flight while collecting."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    ca_weight: float = 0.1
    """λ: weight of L_CA."""
    ca_clip: float = 5.0
    """c: L_CA's margin clip."""
    grpo: GRPOSettings = Field(default_factory=GRPOSettings)
    """GRPO settings."""
    max_turns: int = 4
    """Agent turns per episode."""
    max_tokens_per_turn: int = 96
    """Tokens sampled per turn."""
    max_context_tokens: int = 4096
    """Episode context limit."""
    temperature: float = 1.0
    """Sampling temperature."""
    logprob_chunk_size: int = 1024
    """Tokens per chunk of the memory-lean logprob computation."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward."""
    checkpoint_every: int = 5
    """Steps between checkpoints (and always at the end)."""
    output_dir: Path = Path("runs/default")
    """Metrics, plots and checkpoints go here."""
    seed: int = 0
    """Seeds task order, pair order, sampling and initialisation."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainerConfig":
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
