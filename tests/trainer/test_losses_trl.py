"""Our GRPO loss against TRL's own code, where the settings coincide.

What is compared: `trl.GRPOTrainer._compute_loss` (TRL's installed source, run unchanged) on a bare trainer object,
made with `object.__new__` and given only the attributes `_compute_loss` reads. Its one model call,
`_get_per_token_logps_and_entropies`, is replaced on the instance by a stub that returns our [B, T] log-probs (the
tensor with grad), so both losses see identical per-token log-probs, old log-probs, reference log-probs, advantages
and completion mask. Compared: the loss value, the gradient with respect to the log-probs, and the logged clip
fractions (low / high) and KL — for

    TRL loss_type "dapo"    (num_items_in_batch = the mask's sum)        ↔  aggregation "token_mean"
    TRL loss_type "bnpo"                                                 ↔  aggregation "token_mean"
    TRL loss_type "grpo"                                                 ↔  aggregation "seq_mean_token_mean"
    TRL loss_type "dr_grpo" (max_completion_length = L)                  ↔  "seq_mean_token_sum", max_tokens = L
    epsilon / epsilon_high                                               ↔  clip_low / clip_high
    beta                                                                 ↔  kl_coef
    use_vllm + vllm_importance_sampling_correction, mode "token_truncate",
      clip_max = C, clip_min = None                                      ↔  tis_cap = C, engine_logprobs given

TRL computes the truncated-IS ratio in `_generate_and_score_completions` (a generation step, not callable without a
model and vLLM); `trl_tis_ratio` below re-types those lines of TRL 1.16 (grpo_trainer.py, "Compute the importance
sampling ratio when using vLLM"), and `_compute_loss` then applies it. Advantages are computed in the same
generation step; `test_advantages_match_trl_formula` re-types TRL's group formula around its own `nanstd` helper.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is not installed (pip install trl; it keeps torch==2.13.0)")
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

from trainer.losses import GRPOConfig, compute_advantages, grpo_loss

TOL = 1e-6


class _Accelerator:
    """The single-process accelerate calls `_compute_loss` makes for its metrics."""

    num_processes = 1

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


def bare_trl_trainer(
    logps: torch.Tensor,
    *,
    loss_type: str,
    epsilon: float,
    epsilon_high: float,
    beta: float,
    max_completion_length: int,
    tis: bool,
) -> GRPOTrainer:
    t = object.__new__(GRPOTrainer)
    t.loss_type = loss_type
    t.epsilon_low = epsilon
    t.epsilon_high = epsilon_high
    t.beta = beta
    t.max_completion_length = max_completion_length
    t.importance_sampling_level = "token"
    t.top_entropy_quantile = 1.0
    t.off_policy_mask_threshold = None
    t.use_vllm = tis
    t.vllm_importance_sampling_correction = tis
    t._entropy_bonus_enabled = False
    t.aux_loss_enabled = False
    t.current_gradient_accumulation_steps = 1
    t.args = SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1)
    t.accelerator = _Accelerator()
    t.model = SimpleNamespace(training=True)
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    return t


def trl_tis_ratio(old: torch.Tensor, sampling: torch.Tensor, mask: torch.Tensor, clip_max: float) -> torch.Tensor:
    """TRL 1.16's vLLM importance-sampling ratio, mode "token_truncate", clip_min None (re-typed, see the header)."""
    per_token_logps_diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
    return torch.clamp(torch.exp(per_token_logps_diff), min=None, max=clip_max)


def make_batch(seed: int, B: int = 6, T: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logps + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3  # ratios well outside [0.8, 1.28] too
    ref = logps + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.2
    engine = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.6
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()  # right-padded completions
    mask[0, 2] = 0  # and a hole (as tool output inside a multi-turn completion)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return {"logps": logps, "old": old, "ref": ref, "engine": engine, "mask": mask, "adv": adv}


CASES = [
    # (TRL loss_type, our aggregation, epsilon, epsilon_high, beta, tis cap)
    ("dapo", "token_mean", 0.2, 0.28, 0.0, None),
    ("dapo", "token_mean", 0.2, 0.28, 0.04, 2.0),
    ("bnpo", "token_mean", 0.1, 0.3, 0.1, None),
    ("grpo", "seq_mean_token_mean", 0.2, 0.2, 0.0, None),
    ("grpo", "seq_mean_token_mean", 0.2, 0.28, 0.04, 1.5),
    ("dr_grpo", "seq_mean_token_sum", 0.2, 0.28, 0.0, None),
    ("dr_grpo", "seq_mean_token_sum", 0.15, 0.25, 0.02, 2.0),
]


@pytest.mark.parametrize(("loss_type", "aggregation", "eps_low", "eps_high", "beta", "tis_cap"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_loss_equals_trl(
    loss_type: str, aggregation: str, eps_low: float, eps_high: float, beta: float, tis_cap: float | None, seed: int
) -> None:
    b = make_batch(seed)
    B, T = b["logps"].shape
    max_len = T + 3  # Dr. GRPO's constant: the max completion length, not this batch's longest

    # TRL
    trl_logps = b["logps"].clone().requires_grad_(True)
    t = bare_trl_trainer(
        trl_logps,
        loss_type=loss_type,
        epsilon=eps_low,
        epsilon_high=eps_high,
        beta=beta,
        max_completion_length=max_len,
        tis=tis_cap is not None,
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": b["mask"],
        "advantages": b["adv"],
        "old_per_token_logps": b["old"],
        "ref_per_token_logps": b["ref"],
        "num_items_in_batch": b["mask"].sum(),
    }
    if tis_cap is not None:
        inputs["importance_sampling_ratio"] = trl_tis_ratio(b["old"], b["engine"], b["mask"], tis_cap)
    trl_loss = t._compute_loss(None, inputs)
    trl_loss.backward()

    # ours
    logps = b["logps"].clone().requires_grad_(True)
    cfg = GRPOConfig(
        kl_clamp=None,  # TRL's k3 is unbounded
        clip_low=eps_low,
        clip_high=eps_high,
        aggregation=aggregation,  # type: ignore[arg-type]
        max_tokens=max_len if aggregation == "seq_mean_token_sum" else None,
        kl_coef=beta,
        tis_cap=tis_cap,
    )
    loss, m = grpo_loss(
        logps,
        b["old"],
        b["adv"],
        b["mask"],
        ref_logprobs=b["ref"],
        engine_logprobs=b["engine"] if tis_cap is not None else None,
        config=cfg,
    )
    loss.backward()

    assert abs(loss.item() - trl_loss.item()) <= TOL, (loss.item(), trl_loss.item())
    assert (logps.grad - trl_logps.grad).abs().max().item() <= TOL
    tm = t._metrics["train"]
    assert abs(m["clip_frac_low"] - tm["clip_ratio/low_mean"][0]) <= TOL
    assert abs(m["clip_frac_high"] - tm["clip_ratio/high_mean"][0]) <= TOL
    if beta:
        assert abs(m["kl"] - tm["kl"][0]) <= TOL
    # the case is not degenerate: both clips bite somewhere, and the TIS cap does when on
    assert m["clip_frac_low"] > 0 and m["clip_frac_high"] > 0
    if tis_cap is not None:
        assert m["tis_clip_frac"] > 0


def test_advantages_match_trl_formula() -> None:
    """TRL (scale_rewards="group"): (r − nanmean) / (nanstd + 1e-4) per group; RLOOTrainer: r − (Σ − r)/(n − 1)."""
    g = torch.Generator().manual_seed(3)
    rewards = torch.rand(5, 8, generator=g, dtype=torch.float64).round(decimals=1)
    rewards[2, 3] = float("nan")
    ours, keep, _ = compute_advantages(rewards, "grpo", scale_by_std=True, eps=1e-4)
    assert keep.all()
    trl_adv = (rewards - torch.nanmean(rewards, 1, keepdim=True)) / (nanstd(rewards, 1, keepdim=True) + 1e-4)
    torch.testing.assert_close(ours, torch.nan_to_num(trl_adv, nan=0.0), rtol=0, atol=TOL)
    ours_rloo, _, _ = compute_advantages(rewards, "rloo", scale_by_std=False)
    counts = (~torch.isnan(rewards)).sum(1, keepdim=True)
    trl_rloo = rewards - (torch.nansum(rewards, 1, keepdim=True) - rewards) / (counts - 1)
    torch.testing.assert_close(ours_rloo, torch.nan_to_num(trl_rloo, nan=0.0), rtol=0, atol=TOL)
