"""The loss components against hand computations: GRPO advantages and loss (every branch), L_CA and its gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import ContextAwarenessConfig, GRPOConfig, ca_loss, ca_margin, compute_advantages, grpo_loss


def loss_config(**fields: object) -> GRPOConfig:
    """The clipped loss alone: no KL, no KL clamp, no importance-sampling cap unless a test turns them on."""
    return GRPOConfig(**{"kl_coef": 0.0, "kl_clamp": None, "tis_cap": None, **fields})  # type: ignore[arg-type]


def ca(clip: float, clip_mode: str = "symmetric") -> ContextAwarenessConfig:
    return ContextAwarenessConfig(clip=clip, clip_mode=clip_mode)  # type: ignore[arg-type]


LN = math.log


# ---------------------------------------------------------------------------------------------------------------------
# compute_advantages


def test_grpo_advantages_std_scaled_and_zero_variance_groups_dropped() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 3.0]])
    adv, keep, stats = compute_advantages(rewards, "grpo", scale_by_std=True, eps=1e-4)
    assert keep.tolist() == [False, True, False, True]
    # group 1: mean 0.5, sample std sqrt((4 · 0.25) / 3) = sqrt(1/3)
    s1 = math.sqrt(1 / 3)
    exp1 = [-0.5 / (s1 + 1e-4), 0.5 / (s1 + 1e-4)] * 2
    # group 3: mean 0.75, deviations −0.75 ×3 and 2.25, sample std sqrt((3 · 0.5625 + 5.0625) / 3) = 1.5
    exp3 = [-0.75 / 1.5001] * 3 + [2.25 / 1.5001]
    expected = torch.tensor([[0.0] * 4, exp1, [0.0] * 4, exp3])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    assert stats["num_groups"] == 4
    assert stats["num_groups_kept"] == 2
    assert stats["num_groups_zero_std"] == 2
    assert stats["num_groups_too_few"] == 0
    assert stats["num_rewards_missing"] == 0
    assert stats["frac_groups_dropped"] == 0.5


def test_grpo_advantages_without_std_scaling() -> None:
    rewards = torch.tensor([[0.0, 1.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv, keep, stats = compute_advantages(rewards, "grpo", scale_by_std=False)
    assert keep.tolist() == [True, False]
    torch.testing.assert_close(adv, torch.tensor([[-0.5, 0.5, -0.5, 0.5], [0.0] * 4]), rtol=0, atol=0)
    assert stats["num_groups_zero_std"] == 1


def test_rloo_advantages() -> None:
    rewards = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 2.0, 6.0, 3.0]])
    adv, keep, _ = compute_advantages(rewards, "rloo", scale_by_std=False)
    assert keep.all()
    # leave-one-out baselines: group 0: r=0 → (2 − 0)/3, r=1 → (2 − 1)/3; group 1 (sum 12): (12 − r)/3
    expected = torch.tensor([[-2 / 3, 2 / 3, -2 / 3, 2 / 3], [1 - 11 / 3, 2 - 10 / 3, 6 - 6 / 3, 3 - 9 / 3]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    # = G/(G−1) · (r − mean)
    torch.testing.assert_close(adv, 4 / 3 * (rewards - rewards.mean(1, keepdim=True)), rtol=0, atol=1e-6)
    # scaled: divided by the group's sample std + eps
    scaled, _, _ = compute_advantages(rewards, "rloo", scale_by_std=True, eps=1e-4)
    torch.testing.assert_close(scaled, expected / (rewards.std(1, keepdim=True) + 1e-4), rtol=0, atol=1e-6)


def test_missing_rewards_left_out_of_the_group() -> None:
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan, 0.0, 0.0], [nan, nan, nan, 1.0], [1.0, nan, 1.0, 1.0]])
    adv, keep, stats = compute_advantages(rewards, "grpo", scale_by_std=False)
    assert keep.tolist() == [True, False, False]
    torch.testing.assert_close(
        adv, torch.tensor([[2 / 3, 0.0, -1 / 3, -1 / 3], [0.0] * 4, [0.0] * 4]), rtol=0, atol=1e-6
    )
    assert stats["num_rewards_missing"] == 5
    assert stats["num_groups_too_few"] == 1
    assert stats["num_groups_zero_std"] == 1
    rloo, _, _ = compute_advantages(rewards, "rloo", scale_by_std=False)
    # present rewards 1, 0, 0 (sum 1): r=1 → 1 − 0/2; r=0 → 0 − 1/2
    torch.testing.assert_close(rloo[0], torch.tensor([1.0, 0.0, -0.5, -0.5]), rtol=0, atol=1e-6)


def test_negative_scale_weighs_only_negative_advantages() -> None:
    nan = float("nan")
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, nan, 0.0, 1.0]])
    full, keep, _ = compute_advantages(rewards, "grpo", scale_by_std=True)
    half, keep_half, _ = compute_advantages(rewards, "grpo", scale_by_std=True, negative_scale=0.25)
    assert keep_half.tolist() == keep.tolist() == [True, False, True]
    # positives and zeros (dropped group, missing reward) unchanged; each negative a quarter of its standard value
    expected = torch.where(full < 0, 0.25 * full, full)
    torch.testing.assert_close(half, expected, rtol=0, atol=0)
    assert (half[0, [0, 2, 3]] < 0).all() and half[0, 1] == full[0, 1] > 0
    assert half[2, 2] == pytest.approx(0.25 * float(full[2, 2]))
    # 0: positives only (rejection-sampling fine-tuning on the group's successes, weighted by their advantage)
    positives_only, _, _ = compute_advantages(rewards, "rloo", scale_by_std=False, negative_scale=0.0)
    assert (positives_only >= 0).all() and positives_only[0, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="negative_scale"):
        compute_advantages(rewards, "grpo", True, negative_scale=1.5)


def test_batch_advantages_use_the_whole_batch_baseline() -> None:
    nan = float("nan")
    # present rewards 1 1 | 1 0 | 0 0 | · 1: seven, four of them 1 → mean 4/7, sample std sqrt((4·(3/7)² + 3·(4/7)²)/6)
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [nan, 1.0]])
    mean = 4 / 7
    std = math.sqrt((4 * (3 / 7) ** 2 + 3 * (4 / 7) ** 2) / 6)
    adv, keep, stats = compute_advantages(rewards, "batch", scale_by_std=True, eps=1e-4)
    # every group trains, the all-success and the all-failure one too (GRPO would drop both)
    assert keep.tolist() == [True, True, True, True]
    up, down = (1 - mean) / (std + 1e-4), (0 - mean) / (std + 1e-4)
    expected = torch.tensor([[up, up], [up, down], [down, down], [0.0, up]], dtype=adv.dtype)
    torch.testing.assert_close(adv, expected)
    assert stats["num_groups_zero_std"] == 2 and stats["num_rewards_missing"] == 1  # the groups are still described
    # unscaled, and positives only: every success gets 1 − mean, every failure 0 (rejection-sampling fine-tuning)
    plain, _, _ = compute_advantages(rewards, "batch", scale_by_std=False, negative_scale=0.0)
    assert plain[0].tolist() == pytest.approx([1 - mean] * 2) and plain[2].tolist() == [0.0, 0.0]
    assert plain[3, 0] == 0.0  # a missing reward stays out
    # a batch whose rewards all agree carries no signal: nothing kept, all zero
    flat, keep_flat, _ = compute_advantages(torch.ones(3, 2), "batch", scale_by_std=True)
    assert not keep_flat.any() and (flat == 0).all()
    one, keep_one, _ = compute_advantages(torch.tensor([[1.0, nan]]), "batch", scale_by_std=True)
    assert not keep_one.any() and (one == 0).all()


def test_advantages_reject_bad_input() -> None:
    with pytest.raises(ValueError):
        compute_advantages(torch.zeros(4), "grpo", True)
    with pytest.raises(ValueError):
        compute_advantages(torch.zeros(2, 4), "ppo", True)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# grpo_loss: one small batch worked by hand
#
# old log-probs 0, so the ratio r = exp(logp) is chosen directly. ε_low = 0.2, ε_high = 0.28: r clipped to [0.8, 1.28].
#   row 0, A = +1, mask 1 1 0:  r = 1.5 → −min(1.5, 1.28) = −1.28 (high clip)   r = 0.5 → −min(0.5, 0.8) = −0.5
#   row 1, A = −2, mask 1 1 1:  r = 0.7 → −min(−1.4, −1.6) = 1.6 (low clip)     r = 1.3 → −min(−2.6, −2.56) = 2.6
#                               r = 0.9 → 1.8
#   token_mean          = (−1.28 − 0.5 + 1.6 + 2.6 + 1.8) / 5 = 0.844
#   seq_mean_token_mean = ((−1.78 / 2) + (6.0 / 3)) / 2     = 0.555
#   seq_mean_token_sum  = (−1.78 + 6.0) / 2                 = 2.11   (÷ max_tokens 4: 0.5275)

RATIOS = [[1.5, 0.5, 1.0], [0.7, 1.3, 0.9]]
MASK = [[1, 1, 0], [1, 1, 1]]
ADV = [1.0, -2.0]


def batch(dtype: torch.dtype = torch.float64, pad: float = float("nan")) -> tuple[torch.Tensor, ...]:
    logp = torch.tensor([[LN(r) for r in row] for row in RATIOS], dtype=dtype)
    logp[0, 2] = pad  # a padding position: must not matter
    old = torch.zeros_like(logp)
    return logp.requires_grad_(True), old, torch.tensor(ADV, dtype=dtype), torch.tensor(MASK)


@pytest.mark.parametrize(
    ("aggregation", "max_tokens", "expected"),
    [
        ("token_mean", None, 0.844),
        ("seq_mean_token_mean", None, 0.555),
        ("seq_mean_token_sum", None, 2.11),
        ("seq_mean_token_sum", 4, 0.5275),
    ],
)
def test_grpo_loss_by_hand(aggregation: str, max_tokens: int | None, expected: float) -> None:
    logp, old, adv, mask = batch()
    cfg = loss_config(
        clip_low=0.2,
        clip_high=0.28,
        aggregation=aggregation,  # type: ignore[arg-type]
        max_tokens=max_tokens,
    )
    loss, m = grpo_loss(logp, old, adv, mask, config=cfg)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert m["clip_frac_low"] == pytest.approx(0.2) and m["clip_frac_high"] == pytest.approx(0.2)
    assert m["ratio_mean"] == pytest.approx((1.5 + 0.5 + 0.7 + 1.3 + 0.9) / 5)
    assert m["ratio_max"] == pytest.approx(1.5)
    assert m["num_tokens"] == 5 and m["num_sequences"] == 2
    assert "kl" not in m and "mismatch_abs_mean" not in m


def test_grpo_gradient_by_hand_clipped_tokens_get_none() -> None:
    """token_mean: ∂L/∂logp = −A·r/N where the unclipped term is the min, 0 where the clip is active or masked."""
    logp, old, adv, mask = batch()
    loss, _ = grpo_loss(logp, old, adv, mask, config=loss_config())
    loss.backward()
    expected = torch.tensor([[0.0, -1 * 0.5 / 5, 0.0], [0.0, 2 * 1.3 / 5, 2 * 0.9 / 5]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


def test_symmetric_clip_differs_from_clip_higher() -> None:
    """With ε_high = ε_low = 0.2 the row-1 r = 1.3, A < 0 token is still unclipped; a r = 1.25, A > 0 one now is."""
    logp = torch.log(torch.tensor([[1.25]], dtype=torch.float64))
    args = (logp, torch.zeros_like(logp), torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 1))
    sym, m_sym = grpo_loss(*args, config=loss_config(clip_low=0.2, clip_high=0.2))
    higher, m_higher = grpo_loss(*args, config=loss_config(clip_low=0.2, clip_high=0.28))
    assert sym.item() == pytest.approx(-1.2) and m_sym["clip_frac_high"] == 1.0
    assert higher.item() == pytest.approx(-1.25) and m_higher["clip_frac_high"] == 0.0


def test_grpo_kl_k3_on_and_off() -> None:
    logp, old, adv, mask = batch()
    ref = torch.tensor([[-0.1, 0.2, float("inf")], [0.0, -0.3, 0.5]], dtype=torch.float64)

    def k3(ref_v: float, lp: float) -> float:
        return math.exp(ref_v - lp) - (ref_v - lp) - 1

    kls = [k3(-0.1, LN(1.5)), k3(0.2, LN(0.5)), k3(0.0, LN(0.7)), k3(-0.3, LN(1.3)), k3(0.5, LN(0.9))]
    # off: the value is the plain loss, the KL only logged
    loss_off, m_off = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, config=loss_config(kl_coef=0.0))
    assert loss_off.item() == pytest.approx(0.844, abs=1e-12)
    assert m_off["kl"] == pytest.approx(sum(kls) / 5, abs=1e-12)
    # on, token_mean: + β · mean k3
    beta = 0.1
    loss_on, _ = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, config=loss_config(kl_coef=beta))
    assert loss_on.item() == pytest.approx(0.844 + beta * sum(kls) / 5, abs=1e-12)
    # on, seq_mean_token_mean: the KL joins each sequence's mean
    cfg = loss_config(kl_coef=beta, aggregation="seq_mean_token_mean")
    loss_seq, _ = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, config=cfg)
    exp_seq = ((-1.78 + beta * sum(kls[:2])) / 2 + (6.0 + beta * sum(kls[2:])) / 3) / 2
    assert loss_seq.item() == pytest.approx(exp_seq, abs=1e-12)
    # gradient of the KL term: β · (1 − exp(ref − logp)) / N on top of the policy gradient
    loss_on.backward()
    pg = torch.tensor([[0.0, -0.1, 0.0], [0.0, 0.52, 0.36]], dtype=torch.float64)
    lp = torch.tensor([[LN(1.5), LN(0.5), 0.0], [LN(0.7), LN(1.3), LN(0.9)]], dtype=torch.float64)
    kl_grad = beta * (1 - torch.exp(ref - lp)) / 5 * mask
    torch.testing.assert_close(logp.grad, pg + torch.nan_to_num(kl_grad), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, old, adv, mask, config=loss_config(kl_coef=0.1))


def test_grpo_kl_clamp_bounds_the_value_and_stops_the_gradient() -> None:
    """verl's low_var_kl bound: a token whose k3 exceeds K contributes K and no gradient; the others are untouched."""
    logp, old, adv, mask = batch()
    # ref − logp per token: row 0 → ln 100 (k3 = 100 − ln 100 − 1 ≈ 94.4, clamped), −ln 2 (k3 ≈ 0.193);
    # row 1 → 0 (k3 0), ln 30 (k3 ≈ 25.6, clamped), −ln 1.5 (k3 ≈ 0.072).
    lp = torch.tensor([[LN(1.5), LN(0.5), 0.0], [LN(0.7), LN(1.3), LN(0.9)]], dtype=torch.float64)
    ref = lp + torch.tensor([[LN(100), -LN(2), 0.0], [0.0, LN(30), -LN(1.5)]], dtype=torch.float64)

    def k3(x: float) -> float:
        return math.exp(x) - x - 1

    raw = [k3(LN(100)), k3(-LN(2)), 0.0, k3(LN(30)), k3(-LN(1.5))]
    clamp = 10.0
    kept = [min(v, clamp) for v in raw]
    beta = 0.1
    loss, m = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, config=loss_config(kl_coef=beta, kl_clamp=clamp))
    assert loss.item() == pytest.approx(0.844 + beta * sum(kept) / 5, abs=1e-12)
    assert m["kl"] == pytest.approx(sum(kept) / 5, abs=1e-12)
    assert m["kl_clamp_frac"] == pytest.approx(2 / 5)
    loss.backward()
    pg = torch.tensor([[0.0, -0.1, 0.0], [0.0, 0.52, 0.36]], dtype=torch.float64)
    kl_grad = beta * (1 - torch.exp(ref - lp)) / 5 * mask
    kl_grad[0, 0] = 0.0  # beyond the clamp: no gradient
    kl_grad[1, 1] = 0.0
    torch.testing.assert_close(logp.grad, pg + kl_grad, rtol=0, atol=1e-12)
    # without the clamp the same token's gradient is β(1 − 100)/5: the bound is what removes it
    logp2, _, _, _ = batch()
    grpo_loss(logp2, old, adv, mask, ref_logprobs=ref, config=loss_config(kl_coef=beta))[0].backward()
    assert logp2.grad[0, 0].item() == pytest.approx(beta * (1 - 100) / 5, abs=1e-9)
    with pytest.raises(ValueError, match="kl_clamp"):
        loss_config(kl_clamp=0.0)


def test_grpo_truncated_importance_sampling_on_and_off() -> None:
    logp, old, adv, mask = batch()
    # old − engine per token: ln 3 → weight 3, capped at 2;  −ln 2 → 0.5;  pad;  0 → 1;  ln 1.5 → 1.5;  ln 4 → capped 2
    engine = torch.tensor([[-LN(3), LN(2), 7.0], [0.0, -LN(1.5), -LN(4)]], dtype=torch.float64)
    per_token = [-1.28, -0.5, 1.6, 2.6, 1.8]
    weights = [2.0, 0.5, 1.0, 1.5, 2.0]
    loss_on, m = grpo_loss(logp, old, adv, mask, engine_logprobs=engine, config=loss_config(tis_cap=2.0))
    assert loss_on.item() == pytest.approx(sum(p * w for p, w in zip(per_token, weights)) / 5, abs=1e-12)
    assert m["tis_clip_frac"] == pytest.approx(2 / 5)
    assert m["tis_weight_mean"] == pytest.approx(sum(weights) / 5)
    mism = [LN(3), LN(2), 0.0, LN(1.5), LN(4)]
    assert m["mismatch_abs_mean"] == pytest.approx(sum(mism) / 5)
    assert m["mismatch_abs_max"] == pytest.approx(LN(4))  # the padding position's 7.0 does not count
    # off: same value as without engine log-probs, the mismatch still logged
    loss_off, m_off = grpo_loss(logp, old, adv, mask, engine_logprobs=engine, config=loss_config(tis_cap=None))
    assert loss_off.item() == pytest.approx(0.844, abs=1e-12)
    assert m_off["mismatch_abs_max"] == pytest.approx(LN(4)) and "tis_clip_frac" not in m_off
    # the weights are constants: the gradient is the plain one scaled token by token
    loss_on.backward()
    w = torch.tensor([[2.0, 0.5, 0.0], [1.0, 1.5, 2.0]], dtype=torch.float64)
    plain = torch.tensor([[0.0, -0.1, 0.0], [0.0, 0.52, 0.36]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, plain * w, rtol=0, atol=1e-12)


def test_grpo_tis_and_kl_together_kl_not_weighted() -> None:
    """As TRL: the TIS weight multiplies the policy term only; the KL is added after."""
    logp = torch.log(torch.tensor([[1.1]], dtype=torch.float64))
    ref = torch.tensor([[0.3]], dtype=torch.float64)
    engine = torch.tensor([[-LN(5)]], dtype=torch.float64)
    cfg = loss_config(kl_coef=0.5, tis_cap=2.0)
    loss, _ = grpo_loss(
        logp,
        torch.zeros_like(logp),
        torch.tensor([1.0], dtype=torch.float64),
        torch.ones(1, 1),
        ref_logprobs=ref,
        engine_logprobs=engine,
        config=cfg,
    )
    d = 0.3 - LN(1.1)
    assert loss.item() == pytest.approx(-1.1 * 2.0 + 0.5 * (math.exp(d) - d - 1), abs=1e-12)


def test_grpo_gradcheck_float64() -> None:
    """Finite differences agree with autograd for every aggregation with KL and TIS on (points away from the kinks)."""
    torch.manual_seed(0)
    B, T = 3, 5
    logp = (torch.randn(B, T, dtype=torch.float64) * 0.1 - 1.0).requires_grad_(True)
    old = logp.detach() + torch.randn(B, T, dtype=torch.float64) * 0.3
    ref = logp.detach() + torch.randn(B, T, dtype=torch.float64) * 0.2
    engine = old + torch.randn(B, T, dtype=torch.float64) * 0.5
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 0, 1, 0, 1]])
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    ratio = torch.exp(logp.detach() - old)
    near_kink = ((ratio - 0.8).abs() < 1e-3) | ((ratio - 1.28).abs() < 1e-3)
    assert not near_kink.any()
    for agg in ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean"):
        cfg = loss_config(aggregation=agg, kl_coef=0.05, tis_cap=1.5, max_tokens=8)  # type: ignore[arg-type]
        assert torch.autograd.gradcheck(
            lambda x, cfg=cfg: grpo_loss(x, old, adv, mask, ref_logprobs=ref, engine_logprobs=engine, config=cfg)[0],
            (logp,),
        )


def test_grpo_padding_cannot_leak() -> None:
    """inf / nan in masked positions of every input: finite loss, zero gradient there, same value as clean padding."""
    logp, old, adv, mask = batch(pad=float("inf"))
    old = old.clone()
    old[0, 2] = float("-inf")
    ref = torch.zeros_like(old)
    ref[0, 2] = float("nan")
    engine = torch.zeros_like(old)
    engine[0, 2] = float("inf")
    cfg = loss_config(kl_coef=0.1, tis_cap=2.0)
    loss, m = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, engine_logprobs=engine, config=cfg)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[0, 2] == 0
    assert all(math.isfinite(v) for v in m.values())
    clean_logp, clean_old, _, _ = batch(pad=0.0)
    clean_ref = torch.where(mask.bool(), ref, 0.0)
    clean_engine = torch.where(mask.bool(), engine, 0.0)
    clean, _ = grpo_loss(
        clean_logp, clean_old, adv, mask, ref_logprobs=clean_ref, engine_logprobs=clean_engine, config=cfg
    )
    assert loss.item() == clean.item()


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"])
def test_grpo_micro_batches_with_global_normalizer_sum_to_the_batch_loss(aggregation: str) -> None:
    torch.manual_seed(1)
    B, T = 4, 6
    logp = -torch.rand(B, T, dtype=torch.float64)
    old = logp + 0.2 * torch.randn(B, T, dtype=torch.float64)
    adv = torch.randn(B, dtype=torch.float64)
    mask = (torch.rand(B, T) > 0.3).long()
    cfg = loss_config(aggregation=aggregation)  # type: ignore[arg-type]
    full, _ = grpo_loss(logp, old, adv, mask, config=cfg)
    norm = float(mask.sum()) if aggregation == "token_mean" else float(B)
    parts = [
        grpo_loss(logp[s], old[s], adv[s], mask[s], config=cfg, normalizer=norm)[0] for s in (slice(0, 1), slice(1, 4))
    ]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), abs=1e-12)


def test_grpo_empty_mask_and_on_policy_first_step() -> None:
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    loss, m = grpo_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.zeros(2, 3), config=loss_config())
    assert loss.item() == 0.0 and m["num_tokens"] == 0
    # on-policy (old = current): the value is −mean(A) per token and the gradient −A/N, no clipping
    on_policy = (logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.tensor([[1, 1, 1], [1, 0, 0]]))
    loss, m = grpo_loss(*on_policy, config=loss_config())
    assert loss.item() == pytest.approx((-3 + 1) / 4)
    assert m["ratio_mean"] == 1.0 and m["clip_frac_low"] == 0.0 and m["clip_frac_high"] == 0.0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25] * 3, [0.25, 0.0, 0.0]]))


def test_grpo_bf16_inputs_are_upcast() -> None:
    logp, old, adv, mask = batch(dtype=torch.float64, pad=0.0)
    ref64, _ = grpo_loss(logp.detach(), old, adv, mask, config=loss_config())
    lp16 = logp.detach().to(torch.bfloat16).requires_grad_(True)
    loss16, _ = grpo_loss(lp16, old.to(torch.bfloat16), adv.to(torch.bfloat16), mask, config=loss_config())
    assert loss16.dtype == torch.float32
    loss16.backward()
    assert lp16.grad is not None and lp16.grad.dtype == torch.bfloat16
    assert loss16.item() == pytest.approx(ref64.item(), abs=2e-2)


def test_grpo_config_and_shape_validation() -> None:
    with pytest.raises(ValueError, match="kl_coef != 0 needs ref_logprobs"):
        grpo_loss(*batch(), config=GRPOConfig())  # the trainer's default KL needs the reference
    with pytest.raises(ValueError):
        loss_config(aggregation="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loss_config(clip_low=1.0)
    with pytest.raises(ValueError):
        loss_config(tis_cap=0.0)
    logp, old, adv, mask = batch()
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, adv.unsqueeze(1), mask, config=loss_config())
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo_loss(logp, old[:, :2], adv, mask, config=loss_config())


# ---------------------------------------------------------------------------------------------------------------------
# L_CA


def test_ca_margin_from_raw_logits_both_orders() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0, 5.0], [0.0, 2.0, -1.0, 5.0], [3.0, 0.5, 4.0, 0.0]])
    margin = ca_margin(logits, (1, 2), torch.tensor([True, False, False]))
    torch.testing.assert_close(margin, torch.tensor([3.0, -3.0, 3.5]))
    # invariant to a per-row shift (the softmax normalizer cancels)
    torch.testing.assert_close(
        ca_margin(logits + torch.tensor([[7.0], [-2.0], [0.3]]), (1, 2), torch.tensor([True, False, False])), margin
    )
    with pytest.raises(ValueError):
        ca_margin(logits, (1, 1), torch.tensor([True, False, False]))


def test_ca_loss_equals_the_formula() -> None:
    c = 2.0
    deltas = [-3.0, -2.0, -0.5, 0.0, 0.1, 1.7, 2.0, 2.5, 40.0]
    loss, m = ca_loss(torch.tensor(deltas, dtype=torch.float64), ca(c))

    def l_ca(d: float) -> float:
        x = max(-c, min(c, d))
        return -math.log(1 / (1 + math.exp(-x)))

    assert loss.item() == pytest.approx(sum(l_ca(d) for d in deltas) / len(deltas), abs=1e-12)
    assert m["ca_num_pairs"] == 9
    assert m["ca_margin_mean"] == pytest.approx(sum(deltas) / 9)
    assert m["ca_accuracy"] == pytest.approx(5 / 9)  # Δ > 0 strictly: 0.1, 1.7, 2.0, 2.5, 40
    assert m["ca_clip_frac"] == pytest.approx(3 / 9)  # |Δ| > c strictly: −3, 2.5, 40


def test_ca_gradient_matches_finite_differences_and_is_zero_beyond_the_clip() -> None:
    c = 2.0
    margin = torch.tensor([-3.0, -0.5, 0.1, 1.7, 2.5, -50.0, 50.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ca_loss(x, ca(c))[0], (margin,))
    loss, _ = ca_loss(margin, ca(c))
    loss.backward()
    d = margin.detach()
    analytic = torch.where(d.abs() <= c, -(1 - torch.sigmoid(d)) / len(d), torch.zeros_like(d))
    torch.testing.assert_close(margin.grad, analytic, rtol=0, atol=1e-15)
    beyond = d.abs() > c
    assert (margin.grad[beyond] == 0).all()  # exactly zero, not small
    assert (margin.grad[~beyond] < 0).all()  # inside: always pushes the margin up
    # central finite differences by hand beyond the clip: the loss does not move
    for i in torch.nonzero(beyond).flatten().tolist():
        h = 1e-4
        up, down = d.clone(), d.clone()
        up[i] += h
        down[i] -= h
        assert ca_loss(up, ca(c))[0].item() == ca_loss(down, ca(c))[0].item()


def test_ca_upper_clip_keeps_the_gradient_of_wrong_pairs() -> None:
    """clip_mode="upper": −log σ(min(Δ, c)) — the value and gradient of the formula, zero gradient only above +c."""
    c = 2.0
    deltas = [-50.0, -3.0, -0.5, 0.1, 2.5, 50.0]
    margin = torch.tensor(deltas, dtype=torch.float64, requires_grad=True)
    loss, metrics = ca_loss(margin, ca(c, "upper"))
    expected = sum(-math.log(1 / (1 + math.exp(-min(d, c)))) for d in deltas) / len(deltas)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["ca_clip_frac"] == pytest.approx(2 / 6)  # only Δ > c: 2.5, 50
    loss.backward()
    d = margin.detach()
    analytic = torch.where(d <= c, -(1 - torch.sigmoid(d)) / len(d), torch.zeros_like(d))
    torch.testing.assert_close(margin.grad, analytic, rtol=0, atol=1e-15)
    assert (margin.grad[d < -c] < 0).all()  # confidently wrong pairs are still pushed (symmetric: exactly 0)
    assert torch.autograd.gradcheck(
        lambda x: ca_loss(x, ca(c, "upper"))[0],
        (torch.tensor([-3.0, -0.5, 0.1, 1.7, 2.5], dtype=torch.float64, requires_grad=True),),
    )
    with pytest.raises(ValueError, match="clip_mode"):
        ca_loss(margin, ca(c, "lower"))


def test_ca_gradient_through_the_margin_to_the_logits() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(6, 10, dtype=torch.float64) * 2).requires_grad_(True)
    pos_first = torch.tensor([True, False, True, False, True, False])
    c = 1.5
    margin = ca_margin(logits.detach(), (3, 7), pos_first)
    assert ((margin.abs() - c).abs() > 1e-3).all()
    assert torch.autograd.gradcheck(lambda x: ca_loss(ca_margin(x, (3, 7), pos_first), ca(c))[0], (logits,))
    loss, _ = ca_loss(ca_margin(logits, (3, 7), pos_first), ca(c))
    loss.backward()
    others = [i for i in range(10) if i not in (3, 7)]
    assert (logits.grad[:, others] == 0).all()
    torch.testing.assert_close(logits.grad[:, 3], -logits.grad[:, 7])


def test_ca_loss_is_stable_for_huge_margins() -> None:
    m = torch.tensor([-1e4, 1e4], dtype=torch.float32, requires_grad=True)
    loss, _ = ca_loss(m, ca(math.inf))
    loss.backward()
    assert loss.item() == pytest.approx(1e4 / 2)  # −log σ(−1e4) = 1e4, −log σ(1e4) = 0
    torch.testing.assert_close(m.grad, torch.tensor([-0.5, 0.0]))
    assert loss.item() == pytest.approx(-F.logsigmoid(m.detach().double()).mean().item())


def test_ca_accuracy_by_option_position() -> None:
    margin = torch.tensor([1.0, -1.0, 2.0, 0.5, -0.2, 3.0])
    pos_first = torch.tensor([True, True, True, False, False, False])
    _, m = ca_loss(margin, ca(5.0), pos_first)
    assert m["ca_accuracy_pos_first"] == pytest.approx(2 / 3)
    assert m["ca_accuracy_pos_second"] == pytest.approx(2 / 3)
    _, m = ca_loss(margin[:3], ca(5.0), pos_first[:3])
    assert math.isnan(m["ca_accuracy_pos_second"])


def test_ca_loss_normalizer_and_empty_batch() -> None:
    margin = torch.tensor([0.3, -0.7, 1.1, 0.0])
    full, _ = ca_loss(margin, ca(2.0))
    parts = ca_loss(margin[:1], ca(2.0), normalizer=4)[0] + ca_loss(margin[1:], ca(2.0), normalizer=4)[0]
    assert parts.item() == pytest.approx(full.item(), abs=1e-7)
    empty = torch.zeros(0, requires_grad=True)
    loss, m = ca_loss(empty, ca(2.0))
    loss.backward()
    assert loss.item() == 0.0 and m["ca_num_pairs"] == 0 and math.isnan(m["ca_accuracy"])
    with pytest.raises(ValueError):
        ca_loss(margin, ca(0.0))
