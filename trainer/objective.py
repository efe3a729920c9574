"""L = L_GRPO + λ · L_CA on a causal LM: the two components computed from one model, each with its own normalizer
(GRPO over the batch's sampled tokens, L_CA over the batch's pair presentations — DESIGN.md decision 7), so λ means
the same thing whatever mix of rollouts and pairs a step holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.batch import RolloutBatch
from trainer.logprobs import masked_model_token_logprobs
from trainer.losses import GRPOLossConfig, ca_loss, ca_margin, grpo_loss


@dataclass
class ObjectiveConfig:
    """The combined loss."""

    grpo: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    """Clipping, aggregation, KL and importance-sampling settings of the GRPO component."""
    ca_weight: float = 0.1
    """λ: weight of L_CA (0 turns the context-awareness loss off)."""
    ca_clip: float = 5.0
    """c: margins beyond ±c give no gradient."""
    ca_clip_mode: str = "symmetric"
    """`symmetric`: clip(Δ, −c, c) as in the paper; `upper`: min(Δ, c) (wrong pairs keep their gradient)."""
    logprob_chunk_size: int = 1024
    """Tokens per chunk in the memory-lean logprob computation."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in backward (long sequences)."""
    temperature: float = 1.0
    """The sampling temperature: GRPO's policy, reference and entropy are those of softmax(logits / temperature),
    the distribution the rollouts were drawn from (as verl and TRL do). L_CA's margin stays on the raw logits."""


def rollout_logprobs(
    model: Any,
    batch: RolloutBatch,
    config: ObjectiveConfig,
    *,
    return_entropy: bool = False,
    gradient_checkpointing: bool = False,
) -> Any:
    """Logprobs [B, T] of the batch's sampled (loss-mask 1) tokens under `model`, at the sampling temperature and in
    the config's chunks (0 elsewhere); with `return_entropy`, (logprobs, entropy). The policy, the reference and the
    trainer's recomputation of the sampling policy all go through here."""
    return masked_model_token_logprobs(
        model,
        batch.input_ids,
        batch.attention_mask,
        batch.loss_mask,
        chunk_size=config.logprob_chunk_size,
        return_entropy=return_entropy,
        gradient_checkpointing=gradient_checkpointing,
        temperature=config.temperature,
    )


def grpo_component(
    model: Any,
    batch: RolloutBatch,
    config: ObjectiveConfig,
    ref_model: Any = None,
    old_logprobs: torch.Tensor | None = None,
    *,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss of a rollout batch. `old_logprobs`: the trainer's recomputation of the sampling policy (None: the
    current policy detached — one update per batch, ratio 1 — with the engine's logprobs used for truncated
    importance sampling of the engine/trainer mismatch). `normalizer`: `grpo_loss`'s, for a batch that is one
    shard or micro-batch of a step (None: this batch's own count)."""
    logprobs, entropy = rollout_logprobs(
        model, batch, config, return_entropy=True, gradient_checkpointing=config.gradient_checkpointing
    )
    ref_logprobs = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logprobs = rollout_logprobs(ref_model, batch, config)
    old = old_logprobs if old_logprobs is not None else logprobs.detach()
    loss, metrics = grpo_loss(
        logprobs,
        old,
        batch.advantages,
        batch.loss_mask,
        ref_logprobs=ref_logprobs,
        engine_logprobs=batch.engine_logprobs,
        config=config.grpo,
        normalizer=normalizer,
    )
    tokens = batch.loss_mask.sum().clamp(min=1)
    metrics["entropy"] = float((entropy.detach() * batch.loss_mask).sum() / tokens)
    return loss, metrics


def ca_component(
    model: Any,
    pairs: dict[str, Any],
    config: ObjectiveConfig,
    *,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_CA of a collated batch of presentations (trainer.pairs.collate_presentations): one forward pass each; only
    the answer position's two option logits are computed, never the [T, V] logits. `normalizer`: `ca_loss`'s (the
    step's number of presentations when this batch is a shard of it; None: this batch's own)."""
    outputs = model.model(input_ids=pairs["input_ids"], attention_mask=pairs["attention_mask"], use_cache=False)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    at_answer = hidden[rows, pairs["answer_positions"]]  # [N, H]
    weight = model.get_output_embeddings().weight
    option_ids = torch.stack([pairs["positive_ids"], pairs["negative_ids"]], dim=1)  # [N, 2]
    # Logits of the two option tokens only: [N, 2] from [N, H] · [N, 2, H].
    two = torch.einsum("nh,nkh->nk", at_answer.float(), weight[option_ids].float())
    positive_first = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    margin = ca_margin(two, (0, 1), positive_first)  # column 0 is ℓ+, column 1 is ℓ−
    truly_first = pairs.get("positive_is_first")
    return ca_loss(
        margin,
        config.ca_clip,
        truly_first if truly_first is not None else None,
        normalizer=normalizer,
        clip_mode=config.ca_clip_mode,
    )


def objective(
    model: Any,
    batch: RolloutBatch | None,
    pairs: dict[str, Any] | None,
    config: ObjectiveConfig,
    ref_model: Any = None,
    *,
    grpo_normalizer: float | None = None,
    ca_normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_GRPO + λ · L_CA; either part may be absent from a step. The normalizers replace each component's own
    count when `batch` / `pairs` are one shard of a step's global batch (trainer.distributed): the step's total
    mask-1 tokens ("token_mean") or sequences ("seq_mean_*"), and its total presentations. None: this batch's own."""
    total = torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
    metrics: dict[str, float] = {}
    if batch is not None:
        loss, grpo_metrics = grpo_component(model, batch, config, ref_model, normalizer=grpo_normalizer)
        total = total + loss
        metrics.update({f"grpo/{k}": v for k, v in grpo_metrics.items()})
    if pairs is not None and config.ca_weight > 0:
        loss, ca_metrics = ca_component(model, pairs, config, normalizer=ca_normalizer)
        total = total + config.ca_weight * loss
        metrics.update({f"ca/{k}": v for k, v in ca_metrics.items()})
    metrics["loss"] = float(total.detach())
    return total, metrics
