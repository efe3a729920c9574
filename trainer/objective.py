"""L = L_GRPO + λ · L_CA on a causal LM, for one process and for each rank of many: the two components computed from
one model, each with its own normalizer (GRPO over the step's sampled tokens, L_CA over its pair presentations —
DESIGN.md decision 7), so λ means the same thing whatever mix of rollouts and pairs a step holds.

Under torch.distributed each rank holds a shard of the step's batch: it computes its shard's *sum* divided by the
*global* count (the counts are all-reduced first), so the ranks' losses — and gradients — add up to those of one
process on the whole batch (trainer/distributed.py sums the gradients and reduces the metrics). In one process the
global counts are the batch's own.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from trainer.batch import RolloutBatch
from trainer.config import TrainerConfig
from trainer.distributed import DistContext, all_reduce_sum
from trainer.logprobs import masked_model_token_logprobs
from trainer.losses import ca_loss, ca_margin, grpo_loss


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor
    """This process's part of L (all of it in one process); backward() gives its gradients."""
    metrics: dict[str, float]
    """`grpo/…` and `ca/…` metrics of this process's shard, and `loss`."""
    weights: dict[str, float]
    """The counts those metrics are means over (`trainer.distributed.reduce_metrics` makes them global)."""


def rollout_logprobs(
    model: Any,
    batch: RolloutBatch,
    config: TrainerConfig,
    *,
    return_entropy: bool = False,
    gradient_checkpointing: bool = False,
) -> Any:
    """Logprobs [B, T] of the batch's sampled (loss-mask 1) tokens under `model`, at the sampling temperature and in
    the config's chunks (0 elsewhere); with `return_entropy`, (logprobs, entropy). The policy, the reference and the
    trainer's recomputation of the sampling policy all go through here: GRPO's policy is softmax(logits / T), the
    distribution the rollouts were drawn from (as verl and TRL do)."""
    return masked_model_token_logprobs(
        model,
        batch.input_ids,
        batch.attention_mask,
        batch.loss_mask,
        chunk_size=config.logprob_chunk_size,
        return_entropy=return_entropy,
        gradient_checkpointing=gradient_checkpointing,
        temperature=config.agent.temperature,
    )


def grpo_component(
    model: Any,
    batch: RolloutBatch,
    config: TrainerConfig,
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
    model: Any, pairs: dict[str, Any], config: TrainerConfig, *, normalizer: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_CA of a collated batch of presentations (trainer.pairs.collate_presentations): one forward pass each; only
    the answer position's two option logits are computed, never the [T, V] logits (the margin is on the raw logits,
    whatever the sampling temperature). `normalizer`: `ca_loss`'s (the step's number of presentations when this
    batch is a shard of it; None: this batch's own)."""
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
    return ca_loss(margin, config.ca, pairs.get("positive_is_first"), normalizer=normalizer)


def _empty_grpo(config: TrainerConfig, with_ref: bool, normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
    """A rank without rollout rows: loss 0 and the same metric keys as a non-empty shard (each with weight 0)."""
    empty = torch.zeros(0, 1)
    loss, metrics = grpo_loss(
        empty,
        empty,
        torch.zeros(0),
        empty,
        ref_logprobs=empty if with_ref else None,
        engine_logprobs=empty,
        config=config.grpo,
        normalizer=normalizer,
    )
    metrics["entropy"] = math.nan
    return loss, metrics


def objective(
    model: Any,
    batch: RolloutBatch | None,
    pairs: dict[str, Any] | None,
    config: TrainerConfig,
    ref_model: Any = None,
    old_logprobs: torch.Tensor | None = None,
    ctx: DistContext | None = None,
) -> ObjectiveOutput:
    """L = L_GRPO + λ · L_CA of a step's batch (`batch` / `pairs`), or of this rank's shard of it (`ctx`: the job;
    None or one process: the batch is the step's). GRPO is left out when the step has no mask-1 token, L_CA when it
    has no presentation or λ = 0. The ranks need not hold the same global batch (the counts are all-reduced);
    every rank must call this (it runs collectives). `old_logprobs`: see `grpo_component`."""
    ctx = ctx or DistContext()
    rows = batch.input_ids.shape[0] if batch is not None else 0
    n_pairs = pairs["input_ids"].shape[0] if pairs is not None else 0
    tokens = float(batch.loss_mask.sum()) if batch is not None and rows else 0.0
    first = float(pairs["positive_is_first"].sum()) if pairs is not None and "positive_is_first" in pairs else 0.0
    g_tokens, g_rows, g_pairs = all_reduce_sum([tokens, float(rows), float(n_pairs)], ctx)
    weights = {"tokens": tokens, "pairs": float(n_pairs), "pos_first": first, "pos_second": n_pairs - first}
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float32, device=device)
    metrics: dict[str, float] = {}
    if g_tokens > 0:
        normalizer = g_tokens if config.grpo.aggregation == "token_mean" else g_rows
        if batch is not None and rows:
            loss, grpo_metrics = grpo_component(model, batch, config, ref_model, old_logprobs, normalizer=normalizer)
        else:
            loss, grpo_metrics = _empty_grpo(config, ref_model is not None, normalizer)
        total = total + loss.to(device)
        metrics.update({f"grpo/{k}": v for k, v in grpo_metrics.items()})
    if g_pairs > 0 and config.ca.weight > 0:
        if pairs is not None and n_pairs:
            loss, ca_metrics = ca_component(model, pairs, config, normalizer=g_pairs)
        else:
            # Every rank must report the same keys: the per-order accuracies come with `positive_is_first`, which an
            # empty shard cut by `shard_pairs` still carries; ranks that collate their own pairs must all set it or
            # none.
            order = torch.zeros(0, dtype=torch.bool) if pairs is not None and "positive_is_first" in pairs else None
            loss, ca_metrics = ca_loss(torch.zeros(0), config.ca, order, normalizer=g_pairs)
        total = total + config.ca.weight * loss.to(device)
        metrics.update({f"ca/{k}": v for k, v in ca_metrics.items()})
    metrics["loss"] = float(total.detach())
    return ObjectiveOutput(total, metrics, weights)
