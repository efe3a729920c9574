"""L_CA, the context-awareness loss on contrastive pairs, as pure functions over tensors.

A pair z = (Q, A, C+, C−) is shown to the model as a two-way choice (which context supports A?), its two options
labelled by two option tokens (e.g. "1" / "2"). One teacher-forced forward pass gives the logits at the answer
position; the margin is

    Δθ(z) = ℓ+ − ℓ−          (the logit of the supporting context's option token minus the confounder's)
    L_CA(z) = −log σ(clip(Δθ(z), −c, c))

The clip stops the gradient once a pair is separated by more than c (either way: a pair the model gets badly wrong
is not pushed on without bound either). That lower side has a cost, measured on the tiny model: a step too large
can carry the model into a pure position bias (Δ > c in one order, Δ < −c in the other), where every pair sits
beyond the clip and L_CA has no gradient left to undo it. `clip_mode="upper"` (−log σ(min(Δ, c))) keeps the
paper's stop for separated pairs and a gradient for wrong ones; the paper's symmetric form is the default. Each pair is meant to be shown in both orders in balance (the data's job);
`ca_loss` reports accuracy by the positive option's position so a position bias shows.

Normalizer: the number of pairs (mean over pairs), never the number of GRPO tokens or sequences, so that in
L = E_x[L_GRPO] + λ · E_z[L_CA] the weight λ means the same whatever mix of rollouts and pairs a batch holds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


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
    clip_c: float,
    positive_is_first: Tensor | None = None,
    *,
    normalizer: float | None = None,
    clip_mode: str = "symmetric",
) -> tuple[Tensor, dict[str, float]]:
    """L_CA: the mean over pairs of −log σ(clip(Δ, −c, c)) (`clip_mode="symmetric"`, the paper's) or of
    −log σ(min(Δ, c)) (`"upper"`), and its metrics.

    ``torch.clamp`` passes the gradient for −c ≤ Δ ≤ c and gives exactly 0 beyond; ``F.logsigmoid`` is stable for
    any Δ. ``normalizer`` replaces the number of pairs N when a step's pairs are split into micro-batches (pass the
    step's total number of pairs; the micro-batch losses then sum to the step's mean). N = 0 gives a loss of 0.

    Metrics: ``ca_margin_mean``, ``ca_accuracy`` (share with Δ > 0: the supporting context selected),
    ``ca_clip_frac`` (share beyond the clip: no gradient), ``ca_num_pairs``, ``ca_loss``; with ``positive_is_first``,
    ``ca_accuracy_pos_first`` / ``ca_accuracy_pos_second`` (NaN when no pair has that order).
    """
    if not clip_c > 0:
        raise ValueError(f"clip_c must be positive, got {clip_c}")
    if margin.dim() != 1:
        raise ValueError(f"margin must be [N], got {tuple(margin.shape)}")
    if clip_mode not in ("symmetric", "upper"):
        raise ValueError(f"clip_mode must be 'symmetric' or 'upper', got {clip_mode!r}")
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
