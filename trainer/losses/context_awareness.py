"""L_CA, the context-awareness loss on contrastive pairs, as pure functions over tensors.

A pair z = (Q, A, C+, C−) is shown to the model as a two-way choice (which context supports A?), its two options
labelled by two option tokens (e.g. "1" / "2"). One teacher-forced forward pass gives the logits at the answer
position; the margin is

    Δθ(z) = ℓ+ − ℓ−          (the logit of the supporting context's option token minus the confounder's)
    L_CA(z) = −log σ(clip(Δθ(z), −c, c))

The clip stops the gradient once a pair is separated by more than c (either way: a pair the model gets badly wrong
is not pushed on without bound either). That lower side has a cost, measured on the tiny model: a step too large
can carry the model into a pure position bias (Δ > c in one order, Δ < −c in the other), where every pair sits
beyond the clip and L_CA has no gradient left to undo it. `clip_mode: upper` (−log σ(min(Δ, c))), the default, keeps
the paper's stop for separated pairs and a gradient for wrong ones. Each pair is meant to be shown in both orders in
balance (the data's job); `ca_loss` reports accuracy by the positive option's position so a position bias shows.

Normalizer: the number of pairs (mean over pairs), never the number of GRPO tokens or sequences, so that in
L = E_x[L_GRPO] + λ · E_z[L_CA] the weight λ means the same whatever mix of rollouts and pairs a batch holds.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class ContextAwarenessConfig(BaseModel):
    """Every L_CA setting: the loss (`ca_loss`) and how the trainer takes its updates. The trainer's `ca:` section."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(default=1.0, ge=0.0)
    """λ, L_CA's weight (0: no L_CA). With `separate_updates` > 0 it scales L_CA's own learning rate, λ·lr; with
    one AdamW for both losses it is L_CA's weight in the loss (its share of each update, not its step size)."""
    clip: float = Field(default=5.0, gt=0.0)
    """c: the margin clip; margins beyond it give no gradient."""
    clip_mode: Literal["symmetric", "upper"] = "upper"
    """`symmetric`: −log σ(clip(Δ, −c, c)), the paper's; `upper`: −log σ(min(Δ, c)), which keeps a gradient on
    confidently wrong pairs (see the module docstring)."""
    separate_updates: int = Field(default=6, ge=0)
    """N > 0: L_CA takes N updates a step of its own, each on its own pair batch, after the step's GRPO updates, with
    its own AdamW at λ·lr. 0: L_CA joins the loss of every GRPO update, one AdamW for L = L_GRPO + λ·L_CA (the
    paper's)."""
    trains_embeddings: bool = False
    """With `separate_updates` > 0: whether L_CA's own updates also move the token embeddings and the output head
    (False: the decoder layers only; through the embeddings L_CA broke a task of the tiny default: README, findings)."""
    pairs_per_update: int = Field(default=8, ge=1)
    """Pairs per L_CA update, each presented in both orders: `separate_updates` batches a step, or one with each GRPO
    update when that is 0."""


def ca_margin(logits_at_answer: Tensor, option_token_ids: tuple[int, int], positive_is_first: Tensor) -> Tensor:
    """Δθ = ℓ+ − ℓ− per pair, from raw logits (not log-softmax: the softmax normalizer cancels in the difference).

    Args:
        logits_at_answer: [N, V] logits at each pair's answer position (the position whose next token is the option).
        option_token_ids: (id of the first option's token, id of the second's).
        positive_is_first: [N] bool, True where the supporting context is the first option.

    Returns [N] margins (float32 at least; gradient flows into the logits).
    """
    if logits_at_answer.dim() != 2:
        raise ValueError(f"logits_at_answer must be [N, V], got {tuple(logits_at_answer.shape)}")
    if positive_is_first.shape != logits_at_answer.shape[:1]:
        raise ValueError(f"positive_is_first must be [N], got {tuple(positive_is_first.shape)}")
    id1, id2 = option_token_ids
    if id1 == id2:
        raise ValueError("the two option tokens must differ")
    dtype = torch.promote_types(logits_at_answer.dtype, torch.float32)
    first_minus_second = logits_at_answer[:, id1].to(dtype) - logits_at_answer[:, id2].to(dtype)
    return torch.where(positive_is_first.bool(), first_minus_second, -first_minus_second)


def ca_loss(
    margin: Tensor,
    config: ContextAwarenessConfig | None = None,
    positive_is_first: Tensor | None = None,
    *,
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """L_CA: the mean over pairs of −log σ(clip(Δ, −c, c)) (`clip_mode: symmetric`, the paper's) or of
    −log σ(min(Δ, c)) (`upper`), and its metrics; c and the mode are `config`'s (default `ContextAwarenessConfig()`).

    ``torch.clamp`` passes the gradient for −c ≤ Δ ≤ c and gives exactly 0 beyond; ``F.logsigmoid`` is stable for
    any Δ. ``normalizer`` replaces the number of pairs N when a step's pairs are split into micro-batches (pass the
    step's total number of pairs; the micro-batch losses then sum to the step's mean). N = 0 gives a loss of 0.

    Metrics: ``ca_margin_mean``, ``ca_accuracy`` (share with Δ > 0: the supporting context selected),
    ``ca_clip_frac`` (share beyond the clip: no gradient), ``ca_num_pairs``, ``ca_loss``; with ``positive_is_first``,
    ``ca_accuracy_pos_first`` / ``ca_accuracy_pos_second`` (NaN when no pair has that order).
    """
    cfg = config if config is not None else ContextAwarenessConfig()
    clip_c, clip_mode = cfg.clip, cfg.clip_mode
    if margin.dim() != 1:
        raise ValueError(f"margin must be [N], got {tuple(margin.shape)}")
    n = margin.shape[0]
    lower = -clip_c if clip_mode == "symmetric" else None
    clipped = torch.clamp(margin, min=lower, max=clip_c)
    per_pair = -F.logsigmoid(clipped)
    denom = n if normalizer is None else normalizer
    loss = per_pair.sum() / max(float(denom), 1.0)

    with torch.no_grad():
        m = margin.detach()
        correct = m > 0

        def share(x: Tensor) -> float:
            return float(x.float().mean()) if x.numel() else math.nan

        metrics = {
            "ca_margin_mean": share(m),
            "ca_accuracy": share(correct),
            "ca_clip_frac": share((m.abs() if clip_mode == "symmetric" else m) > clip_c),
            "ca_num_pairs": float(n),
            "ca_loss": float(loss),
        }
        if positive_is_first is not None:
            if positive_is_first.shape != margin.shape:
                raise ValueError(f"positive_is_first must be [N], got {tuple(positive_is_first.shape)}")
            first = positive_is_first.bool()
            metrics["ca_accuracy_pos_first"] = share(correct[first])
            metrics["ca_accuracy_pos_second"] = share(correct[~first])
    return loss, metrics
