"""GRPO: group-relative advantages and the clipped policy-gradient loss, as pure functions over tensors.

Shapes: B sequences of T token positions. ``loss_mask`` is 1 on the tokens the policy sampled (the agent's loss mask
over assistant tokens) and 0 on prompt, tool output and padding; only mask-1 tokens count, and values at mask-0
positions never reach the loss, its gradient or the metrics (padding may hold anything finite or not).

Per token, with r = exp(logp − logp_old) and the sequence's advantage A:

    pg    = −min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A)         (PPO clipped objective, DAPO clip-higher)
    pg    = pg · min(exp(logp_old − logp_engine), C)              (truncated importance sampling, when `tis_cap` = C)
    loss  = pg + β · (exp(ref − logp) − (ref − logp) − 1)         (k3 KL to the reference, when `kl_coef` = β ≠ 0)
    k3    = min(k3, K)                                            (when `kl_clamp` = K: verl's low_var_kl bound)

then aggregated over the batch by `GRPOConfig.aggregation`. This is TRL's GRPOTrainer loss (token-level
importance sampling, vLLM "token_truncate" correction) term for term; tests/trainer/test_losses_trl.py checks it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

AdvantageMode = Literal["grpo", "rloo", "batch"]
Aggregation = Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"]


def compute_advantages(
    rewards: Tensor,
    mode: AdvantageMode,
    scale_by_std: bool,
    eps: float = 1e-4,
    *,
    zero_std_atol: float = 1e-6,
    negative_scale: float = 1.0,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Group-relative advantages for rewards of shape (num_groups, G): G samples of the same task per row.

    - ``"grpo"``: A_i = r_i − mean(r), over the group.
    - ``"rloo"``: A_i = r_i − mean_{j≠i}(r_j), the leave-one-out baseline (= G/(G−1) · (r_i − mean(r))).
    - ``"batch"``: A_i = r_i − mean of every present reward of the batch, all groups together (REINFORCE++'s global
      baseline and normalization, Hu et al. 2025). A group whose samples all succeed still trains: its successes
      beat the batch's mean. Group-relative baselines give such a group advantage 0, so nothing holds the tasks the
      policy already solves while the other tasks' updates move the shared weights — on a small model that
      forgetting outweighs what the mixed groups teach.

    With ``scale_by_std`` the advantage is divided by (std(r) + eps), std being the group's sample standard deviation
    (Bessel-corrected, as TRL's ``nanstd``) — in ``"batch"`` mode the batch's.

    ``negative_scale`` then multiplies the negative advantages only (1: the standard estimator). Below 1 it weighs
    pushing sampled failures down less than pulling successes up — the asymmetric REINFORCE of Arnal et al. (2025),
    who show that an off-policy learner should lean on its positive samples; its gradient is biased toward the
    policy's own successes (a partial SFT on them), which keeps a small model from spending its update on the
    large-gradient, low-probability tokens of failed samples.

    NaN marks a missing reward (an infrastructure failure the trainer masks): it is left out of its group's mean,
    baseline and std, and its advantage is 0. A group is dropped when fewer than 2 of its rewards are present or its
    present rewards all agree (std ≤ ``zero_std_atol``): it carries no learning signal, its advantages are 0, and the
    trainer should leave its sequences out of the batch (so they do not dilute the token-mean normalizer). In
    ``"batch"`` mode the same holds for the batch as a whole: every group with a present reward is kept unless the
    batch has under 2 present rewards or they all agree (the per-group counts still describe the groups).

    Returns ``(advantages (num_groups, G), keep (num_groups,) bool, stats)``; flatten ``advantages`` row-major for
    the [B] input of `grpo_loss`. ``stats`` counts: ``num_groups``, ``num_groups_kept``, ``num_groups_zero_std``
    (dropped: all rewards equal), ``num_groups_too_few`` (dropped: under 2 rewards present), ``num_rewards_missing``,
    ``frac_groups_dropped``, and the mean and std of the present rewards.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (num_groups, G), got {tuple(rewards.shape)}")
    if mode not in ("grpo", "rloo", "batch"):
        raise ValueError(f"unknown advantage mode {mode!r}: 'grpo', 'rloo' or 'batch'")
    if not 0.0 <= negative_scale <= 1.0:
        raise ValueError(f"negative_scale must be in [0, 1], got {negative_scale}")
    r = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))
    present = ~torch.isnan(r)
    n = present.sum(dim=1)  # (num_groups,)
    r0 = torch.where(present, r, torch.zeros_like(r))
    total = r0.sum(dim=1, keepdim=True)
    mean = total / n.clamp(min=1).unsqueeze(1)
    sq = torch.where(present, (r0 - mean) ** 2, torch.zeros_like(r))
    std = (sq.sum(dim=1, keepdim=True) / (n - 1).clamp(min=1).unsqueeze(1)).sqrt()

    too_few = n < 2
    zero_std = ~too_few & (std.squeeze(1) <= zero_std_atol)
    keep = ~too_few & ~zero_std

    if mode == "batch":
        values = r[present]
        mean = values.mean() if values.numel() else torch.zeros((), dtype=r.dtype)
        std = values.std() if values.numel() >= 2 else torch.zeros((), dtype=r.dtype)
        keep = (n > 0) & (float(std) > zero_std_atol)  # a batch under 2 rewards has std 0: nothing kept
        adv = r0 - mean
    elif mode == "grpo":
        adv = r0 - mean
    else:
        baseline = (total - r0) / (n - 1).clamp(min=1).unsqueeze(1)
        adv = r0 - baseline
    if scale_by_std:
        adv = adv / (std + eps)
    if negative_scale != 1.0:
        adv = torch.where(adv < 0, adv * negative_scale, adv)
    adv = torch.where(present & keep.unsqueeze(1), adv, torch.zeros_like(adv))

    num_groups = r.shape[0]
    num_present = int(present.sum())
    present_vals = r[present]
    stats = {
        "num_groups": float(num_groups),
        "num_groups_kept": float(keep.sum()),
        "num_groups_zero_std": float(zero_std.sum()),
        "num_groups_too_few": float(too_few.sum()),
        "num_rewards_missing": float(r.numel() - num_present),
        "frac_groups_dropped": float((~keep).sum()) / num_groups if num_groups else 0.0,
        "reward_mean": float(present_vals.mean()) if num_present else math.nan,
        "reward_std": float(present_vals.std()) if num_present > 1 else math.nan,
    }
    return adv, keep, stats


class GRPOConfig(BaseModel):
    """Every GRPO setting: the advantages (`build_batch`), the clipped loss (`grpo_loss`) and the updates a step
    (the trainer's step). The trainer's `grpo:` section; each consumer is given the whole section."""

    model_config = ConfigDict(extra="forbid")

    advantage: AdvantageMode = "batch"
    """Baseline: the group mean (`grpo`), the leave-one-out mean (`rloo`) or the whole batch's mean (`batch`,
    REINFORCE++: tasks the policy always solves keep training; see `compute_advantages`)."""
    scale_by_std: bool = True
    """Divide advantages by the reward std (the group's; the batch's in `batch` mode)."""
    negative_advantage_scale: float = Field(default=0.0, ge=0.0, le=1.0)
    """Weight of negative advantages (1: standard GRPO; 0: the sampled successes only, asymmetric REINFORCE)."""
    malformed_call_penalty: float = 1.0
    """Subtracted from the reward of an episode with a malformed tool call, for the advantages only (success and the
    logged rewards stay the tests'; trainer/batch.py training_reward)."""
    mask_truncated: bool = False
    """Leave episodes that hit a limit out of the loss (they are counted either way)."""
    drop_zero_variance: bool = False
    """Leave groups with equal rewards out of the loss (DAPO); False keeps them with advantage 0 (TRL), so that the
    KL term anchors their tokens too (trainer/batch.py build_batch)."""
    clip_low: float = Field(default=0.2, ge=0.0, lt=1.0)
    """ε_low: the ratio is clipped below at 1 − ε_low (acts on negative advantages)."""
    clip_high: float = Field(default=0.28, ge=0.0)
    """ε_high: the ratio is clipped above at 1 + ε_high (acts on positive advantages; > ε_low is DAPO's clip-higher)."""
    aggregation: Aggregation = "token_mean"
    """How per-token losses become one number: `token_mean`, `seq_mean_token_sum` or `seq_mean_token_mean`."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Constant divisor of each sequence's token sum for `seq_mean_token_sum` (Dr. GRPO: the max completion length;
    None: none)."""
    kl_coef: float = 0.05
    """β: weight of the k3 KL to the frozen reference, the policy RL starts from (0: off, no reference is kept)."""
    kl_clamp: float | None = Field(default=10.0, gt=0.0)
    """K: each token's k3 KL is clamped to at most K, no gradient beyond (verl's low_var_kl; None: off, as TRL): k3's
    gradient 1 − exp(ref − logp) is unbounded, and one such token can outweigh the rest of the batch."""
    tis_cap: float | None = Field(default=2.0, gt=0.0)
    """C: truncated importance sampling weight min(exp(old − engine logprob), C) per token, for the engine/trainer
    logprob mismatch (None: off)."""
    updates_per_step: int = Field(default=1, ge=1)
    """Passes over a step's rollouts (TRL's num_iterations, the GRPO paper's μ); beyond the first, the ratio to the
    sampling policy (recomputed before the first) is what the clips bound."""
    minibatches: int = Field(default=1, ge=1)
    """Mini-batches each pass is split into, one optimizer update each (verl's ppo_mini_batch_size), rows balanced by
    length, advantages the whole batch's: `updates_per_step` × `minibatches` updates a step."""


def _check_inputs(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    ref_logprobs: Tensor | None,
    engine_logprobs: Tensor | None,
    cfg: GRPOConfig,
) -> None:
    """ValueError for inputs of the wrong shape, or a KL term without reference log-probabilities."""
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got {tuple(logprobs.shape)}")
    shape = logprobs.shape
    for name, t in (
        ("old_logprobs", old_logprobs),
        ("loss_mask", loss_mask),
        ("ref_logprobs", ref_logprobs),
        ("engine_logprobs", engine_logprobs),
    ):
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, logprobs {tuple(shape)}")
    if advantages.shape != shape[:1]:
        raise ValueError(f"advantages must be [B] = [{shape[0]}], got {tuple(advantages.shape)}")
    if cfg.kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")


def _aggregate(per_token: Tensor, maskf: Tensor, cfg: GRPOConfig, normalizer: float | Tensor | None) -> Tensor:
    """The batch loss from masked per-token losses, by `cfg.aggregation` (see `grpo_loss`)."""
    dtype, device = per_token.dtype, per_token.device
    if cfg.aggregation == "token_mean":
        denom = maskf.sum() if normalizer is None else normalizer
        return per_token.sum() / torch.clamp(torch.as_tensor(denom, dtype=dtype, device=device), min=1.0)
    if cfg.aggregation == "seq_mean_token_sum":
        per_seq = per_token.sum(dim=1)
        if cfg.max_tokens is not None:
            per_seq = per_seq / cfg.max_tokens
    else:
        per_seq = per_token.sum(dim=1) / maskf.sum(dim=1).clamp(min=1.0)
    denom = per_token.shape[0] if normalizer is None else normalizer
    return per_seq.sum() / torch.clamp(torch.as_tensor(denom, dtype=dtype, device=device), min=1.0)


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    ref_logprobs: Tensor | None = None,
    engine_logprobs: Tensor | None = None,
    config: GRPOConfig | None = None,
    *,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The GRPO loss of one batch and its metrics.

    Args:
        logprobs: [B, T] log-probabilities of the sampled tokens under the current policy (with grad).
        old_logprobs: [B, T] the same under the policy that sampled them, as recomputed by the trainer (or the
            engine's own when the trainer does not recompute them). No gradient flows into them.
        advantages: [B] one advantage per sequence (see `compute_advantages`).
        loss_mask: [B, T] 1 on tokens that count (sampled by the policy), 0 elsewhere.
        ref_logprobs: [B, T] under the frozen reference; needed when ``config.kl_coef`` ≠ 0, and logged when given.
        engine_logprobs: [B, T] as reported by the generation engine. When given, the engine/trainer mismatch
            (old − engine) is logged and, with ``config.tis_cap``, each token's loss is weighted by
            min(exp(old − engine), tis_cap) (truncated importance sampling: the engine's sampler is not exactly the
            trainer's policy). None means ``old_logprobs`` are the engine's, i.e. a weight of 1.
        config: the GRPO settings (default: `GRPOConfig()`).
        normalizer: the denominator to use instead of this batch's own, when a step's batch is split into
            micro-batches whose gradients are accumulated: the step's total number of mask-1 tokens for
            "token_mean", its total number of sequences for the "seq_mean_*" aggregations. Then the micro-batch
            losses sum to the loss of the whole batch.

    Aggregations (masked per-token losses l_bt, m_bt the mask):
        - "token_mean": Σ_bt l_bt / Σ_bt m_bt — every sampled token of the batch weighs the same, whatever its
          sequence's length (DAPO's token-level mean; TRL loss_type "dapo" and "bnpo").
        - "seq_mean_token_sum": (1/B) Σ_b Σ_t l_bt, divided by ``config.max_tokens`` when set (Dr. GRPO: a constant
          in place of the length, so no length bias; TRL loss_type "dr_grpo" with max_tokens = max_completion_length).
        - "seq_mean_token_mean": (1/B) Σ_b (Σ_t l_bt / Σ_t m_bt) — the original GRPO (TRL loss_type "grpo"); a
          sequence with no mask-1 token adds 0 but still counts in B, as in TRL.

    Metrics (means over mask-1 tokens; floats): ``clip_frac_low`` (ratio < 1 − ε_low with A < 0: the low clip is
    active), ``clip_frac_high`` (ratio > 1 + ε_high with A > 0), ``ratio_mean``, ``ratio_max``, ``kl`` (k3, when a
    reference is given; after the clamp), ``kl_clamp_frac`` (the share of tokens whose k3 hit ``kl_clamp``),
    ``mismatch_abs_mean`` / ``mismatch_abs_max`` (|old − engine|), ``tis_weight_mean`` and
    ``tis_clip_frac`` (the share of tokens whose TIS weight hit the cap), ``num_tokens``, ``num_sequences``, ``loss``.
    """
    cfg = config if config is not None else GRPOConfig()
    _check_inputs(logprobs, old_logprobs, advantages, loss_mask, ref_logprobs, engine_logprobs, cfg)
    shape = logprobs.shape

    dtype = torch.promote_types(logprobs.dtype, torch.float32)  # bf16 log-probs are upcast before exp
    mask = loss_mask.bool()
    maskf = mask.to(dtype)
    zero = torch.zeros((), dtype=dtype, device=logprobs.device)
    logp = logprobs.to(dtype)
    old = old_logprobs.detach().to(dtype)
    adv = advantages.detach().to(dtype).unsqueeze(1)  # [B, 1]

    # Differences are zeroed off the mask *before* exp, so padding (even inf / nan) cannot reach loss or gradient.
    log_ratio = torch.where(mask, logp - old, zero)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)

    metrics: dict[str, float] = {}
    if engine_logprobs is not None:
        mismatch = torch.where(mask, old - engine_logprobs.detach().to(dtype), zero)
        if cfg.tis_cap is not None:
            raw_weight = torch.exp(mismatch)
            per_token = per_token * torch.clamp(raw_weight, max=cfg.tis_cap)
    per_token_kl = None
    if ref_logprobs is not None:
        d = torch.where(mask, ref_logprobs.detach().to(dtype) - logp, zero)
        per_token_kl = torch.exp(d) - d - 1.0
        if cfg.kl_clamp is not None:
            with torch.no_grad():
                kl_clamp_frac = (mask & (per_token_kl > cfg.kl_clamp)).sum() / mask.sum().clamp(min=1)
            per_token_kl = torch.clamp(per_token_kl, max=cfg.kl_clamp)
        if cfg.kl_coef != 0.0:
            per_token = per_token + cfg.kl_coef * per_token_kl
    per_token = torch.where(mask, per_token, zero)

    num_seqs = shape[0]
    loss = _aggregate(per_token, maskf, cfg, normalizer)

    with torch.no_grad():
        n_tok = maskf.sum()
        n = n_tok.clamp(min=1.0)

        def masked_mean(x: Tensor) -> float:
            return float((torch.where(mask, x.to(dtype), zero)).sum() / n)

        metrics["clip_frac_low"] = masked_mean((ratio < 1.0 - cfg.clip_low) & (adv < 0))
        metrics["clip_frac_high"] = masked_mean((ratio > 1.0 + cfg.clip_high) & (adv > 0))
        metrics["ratio_mean"] = masked_mean(ratio)
        metrics["ratio_max"] = float(torch.where(mask, ratio, zero).max()) if n_tok > 0 else math.nan
        if per_token_kl is not None:
            metrics["kl"] = masked_mean(per_token_kl)
            if cfg.kl_clamp is not None:
                metrics["kl_clamp_frac"] = float(kl_clamp_frac)
        if engine_logprobs is not None:
            metrics["mismatch_abs_mean"] = masked_mean(mismatch.abs())
            metrics["mismatch_abs_max"] = float(mismatch.abs().max()) if n_tok > 0 else math.nan
            if cfg.tis_cap is not None:
                metrics["tis_weight_mean"] = masked_mean(torch.clamp(raw_weight, max=cfg.tis_cap))
                metrics["tis_clip_frac"] = masked_mean(raw_weight > cfg.tis_cap)
        metrics["num_tokens"] = float(n_tok)
        metrics["num_sequences"] = float(num_seqs)
        metrics["loss"] = float(loss)
    return loss, metrics
