"""The combined objective on the tiny Qwen3 model with the real tokenizer: batching and masking of rollouts, and
that a few optimizer steps move the model the way each component says."""

from __future__ import annotations

import random

import pytest
import torch

from agent.trajectory import TokenSequence, Trajectory
from trainer.batch import build_batch
from trainer.config import TrainerConfig
from trainer.logprobs import model_token_logprobs
from trainer.losses import GRPOConfig
from trainer.objective import objective
from trainer.pairs import (
    PairRecord,
    balanced_presentations,
    collate_presentations,
    present,
)

GROUPS = {
    "advantage": "grpo",
    "drop_zero_variance": True,
    "negative_advantage_scale": 1.0,
    "malformed_call_penalty": 0.0,
}
"""Standard GRPO advantages: the group's baseline, flat groups dropped, failures pushed down, no penalty."""


def grpo(**fields: object) -> GRPOConfig:
    return GRPOConfig(**{**GROUPS, **fields})  # type: ignore[arg-type]


def settings(grpo: dict | None = None, ca: dict | None = None, temperature: float = 1.0) -> TrainerConfig:  # type: ignore[type-arg]
    """A config for the objective alone: no KL, no importance-sampling cap, T = 1 unless a test says otherwise."""
    return TrainerConfig(
        grpo={"kl_coef": 0.0, "tis_cap": None, **(grpo or {})},
        ca={"weight": 0.1, "clip_mode": "symmetric", **(ca or {})},
        agent={"temperature": temperature},
    )


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from agent.tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


@pytest.fixture
def model(tmp_path_factory):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    from agent.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-objective") / "model")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def episode(tokenizer, task: str, group: int, text: str, reward, **kw) -> Trajectory:  # type: ignore[no-untyped-def]
    prompt = tokenizer.encode(f"<|im_start|>user\nsolve {task}<|im_end|>\n<|im_start|>assistant\n")
    sampled = tokenizer.encode(text + "<|im_end|>")
    sequence = TokenSequence(
        token_ids=prompt + sampled,
        loss_mask=[0] * len(prompt) + [1] * len(sampled),
        logprobs=[0.0] * len(prompt) + [-1.0] * len(sampled),
    )
    return Trajectory(task_id=task, group=group, sequences=[sequence], reward=reward, **kw)


def test_batch_masks_infra_failures_truncation_and_flat_groups(tokenizer):  # type: ignore[no-untyped-def]
    trajectories = [
        episode(tokenizer, "a", 0, "fix", 1.0),
        episode(tokenizer, "a", 1, "nope", 0.0),
        episode(tokenizer, "a", 2, "broken", None, infra_failure=True),
        episode(tokenizer, "b", 0, "x", 0.0),
        episode(tokenizer, "b", 1, "y", 0.0),  # no variance: dropped
        episode(tokenizer, "c", 0, "z", 1.0, truncation="max_turns"),
        episode(tokenizer, "c", 1, "w", 0.0),
    ]
    batch = build_batch(trajectories, tokenizer.pad_token_id, grpo(mask_truncated=True))
    assert batch.input_ids.shape[0] == 7
    trained = batch.loss_mask.sum(dim=1) > 0
    assert trained.tolist() == [True, True, False, False, False, False, False]
    assert batch.advantages[0] > 0 > batch.advantages[1]
    assert batch.stats["masked_infra_failure"] == 1 and batch.stats["masked_truncated"] == 1
    assert batch.stats["num_groups_zero_std"] >= 1
    kept = build_batch(trajectories, tokenizer.pad_token_id, grpo(mask_truncated=False))
    assert (kept.loss_mask.sum(dim=1) > 0).tolist()[5:] == [True, True]
    # TRL's way: the flat group "b" and the one-reward group "c" stay in the loss with advantage 0 (still counted);
    # masked episodes (infra failure, truncation) stay out.
    flat = build_batch(trajectories, tokenizer.pad_token_id, grpo(mask_truncated=True, drop_zero_variance=False))
    assert (flat.loss_mask.sum(dim=1) > 0).tolist() == [True, True, False, True, True, False, True]
    assert flat.advantages[3:].tolist() == [0.0] * 4
    assert flat.stats["num_groups_zero_std"] == 1 and flat.stats["num_groups_too_few"] == 1
    # negative_scale reaches the batch: the failure's advantage shrinks, the success's does not
    leaning = build_batch(trajectories, tokenizer.pad_token_id, grpo(mask_truncated=True, negative_advantage_scale=0.5))
    assert float(leaning.advantages[0]) == float(batch.advantages[0])
    assert float(leaning.advantages[1]) == pytest.approx(0.5 * float(batch.advantages[1]))


def test_malformed_calls_cost_reward_and_batch_baseline_keeps_solved_tasks(tokenizer):  # type: ignore[no-untyped-def]
    """A success that also wrote a malformed tool call ranks below a clean one once penalised; the `batch`
    baseline trains the all-success group that GRPO's group baseline leaves at advantage 0."""
    trajectories = [
        episode(tokenizer, "a", 0, "fix", 1.0),
        episode(tokenizer, "a", 1, "fix <bad>", 1.0, malformed_tool_calls=2),
        episode(tokenizer, "b", 0, "x", 1.0),
        episode(tokenizer, "b", 1, "y", 1.0),  # solved twice
        episode(tokenizer, "c", 0, "z", 0.0),
        episode(tokenizer, "c", 1, "w", 0.0),
    ]
    pad = tokenizer.pad_token_id
    plain = build_batch(trajectories, pad, grpo())
    assert plain.advantages[:2].tolist() == [0.0, 0.0]  # both "a" episodes earned 1: no signal without the penalty
    penalised = build_batch(trajectories, pad, grpo(malformed_call_penalty=1.0))
    assert penalised.advantages[0] > 0 > penalised.advantages[1]
    assert penalised.stats["reward_mean"] == pytest.approx(3 / 6)  # the advantages' rewards: 1 0 | 1 1 | 0 0
    group = build_batch(trajectories, pad, grpo(malformed_call_penalty=1.0, drop_zero_variance=False))
    assert group.advantages[2:4].tolist() == [0.0, 0.0]
    batch = build_batch(
        trajectories, pad, grpo(advantage="batch", malformed_call_penalty=1.0, negative_advantage_scale=0.0)
    )
    assert build_batch(trajectories, pad).advantages.tolist() == batch.advantages.tolist()  # GRPOConfig()'s
    # the batch mean is 1/2: every clean success gets the same positive advantage, failures (and the penalised
    # success) 0 with negatives off — the solved group "b" trains like the mixed group's success
    adv = batch.advantages.tolist()
    assert adv[0] == adv[2] == adv[3] > 0 and adv[1] == adv[4] == adv[5] == 0.0
    assert (batch.loss_mask.sum(dim=1) > 0).all()


def test_kept_flat_groups_carry_only_the_kl_term(model, tokenizer):  # type: ignore[no-untyped-def]
    """A batch of one all-success group: dropped, it has no loss at all; kept (drop_zero_variance=False), its
    tokens give exactly the k3 KL term — 0 at the reference, a gradient pulling back once the policy has moved."""
    import copy

    trajectories = [episode(tokenizer, "a", g, "same fix", 1.0) for g in range(3)]
    assert build_batch(trajectories, tokenizer.pad_token_id, grpo()).loss_mask.sum() == 0
    batch = build_batch(trajectories, tokenizer.pad_token_id, grpo(drop_zero_variance=False))
    assert batch.loss_mask.sum() > 0 and batch.advantages.abs().sum() == 0
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    config = settings(grpo={"kl_coef": 0.5})
    loss, _, _ = objective(model, batch, None, config, ref_model=reference)
    assert abs(float(loss.detach())) < 1e-6  # the policy is the reference: KL 0, advantage 0
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    loss, metrics, _ = objective(model, batch, None, config, ref_model=reference)
    assert float(loss.detach()) > 0 and metrics["grpo/kl"] > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.slow  # ~8 s CPU: left out of scripts/test.sh --fast
def test_grpo_steps_raise_the_rewarded_completion(model, tokenizer):  # type: ignore[no-untyped-def]
    trajectories = [episode(tokenizer, "a", 0, "good answer", 1.0), episode(tokenizer, "a", 1, "bad answer", 0.0)]
    batch = build_batch(trajectories, tokenizer.pad_token_id, grpo())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def sampled_logprob(row: int) -> float:
        with torch.no_grad():
            logprobs = model_token_logprobs(model, batch.input_ids, batch.attention_mask)
        return float((logprobs[row] * batch.loss_mask[row]).sum())

    good, bad = sampled_logprob(0), sampled_logprob(1)
    for _ in range(8):
        loss, metrics, _ = objective(model, batch, None, settings())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert "grpo/clip_frac_low" in metrics and "grpo/entropy" in metrics
    assert sampled_logprob(0) > good + 1.0 and sampled_logprob(1) < bad - 1.0


@pytest.mark.slow  # ~40 s CPU: left out of scripts/test.sh --fast
def test_ca_steps_learn_selection_in_both_orders(model, tokenizer):  # type: ignore[no-untyped-def]
    pairs = [
        PairRecord(
            pair_id=f"p{i}",
            query=f"Why does test {i} fail?",
            answer=f"Because of bug {i}.",
            positive=f"traceback shows bug {i} in module m{i}",
            negative=f"unrelated log line {i}",
            provenance={"source": "test"},
            funnel_stage="synthetic",
        )
        for i in range(3)
    ]
    items = balanced_presentations(pairs, random.Random(0))
    presentations = [present(pair, tokenizer, first, max_context_tokens=256) for pair, first in items]
    collated = collate_presentations(presentations, tokenizer.pad_token_id)
    collated["positive_is_first"] = torch.tensor([p.positive_is_first for p in presentations])
    config = settings(ca={"weight": 1.0, "clip": 3.0})
    # A gentle rate on purpose: L_CA's symmetric clip also gives zero gradient to pairs that are confidently WRONG
    # (margin < -c), so an update that overshoots into a pure position bias cannot be undone by L_CA (seen at 1e-3).
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    before = objective(model, None, collated, config).metrics
    for _ in range(50):
        loss, metrics, _ = objective(model, None, collated, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert metrics["ca/ca_accuracy"] == 1.0 and metrics["ca/ca_margin_mean"] > before["ca/ca_margin_mean"]
    assert metrics["ca/ca_accuracy_pos_first"] == 1.0 and metrics["ca/ca_accuracy_pos_second"] == 1.0
    # Past the clip the loss stops pushing: at margin > c every pair's gradient is 0.
    assert metrics["ca/ca_clip_frac"] > 0


def test_grpo_trains_the_tempered_policy_that_sampled(model, tokenizer):  # type: ignore[no-untyped-def]
    """At temperature T the GRPO component's logprobs (and the reference's, and the entropy) are those of
    softmax(logits / T): engine logprobs of that distribution give no mismatch, raw ones a large one."""
    trajectories = [episode(tokenizer, "a", 0, "good answer", 1.0), episode(tokenizer, "a", 1, "bad answer", 0.0)]
    batch = build_batch(trajectories, tokenizer.pad_token_id, grpo())
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    targets = batch.input_ids[:, 1:, None]
    mask = batch.loss_mask[:, 1:].bool()
    for temperature in (0.6, 1.0):
        expected = torch.log_softmax(logits[:, :-1] / temperature, dim=-1).gather(2, targets)[..., 0]
        batch.engine_logprobs = torch.nn.functional.pad(expected, (1, 0)) * batch.loss_mask
        config = settings(grpo={"tis_cap": 2.0}, temperature=0.6)
        metrics = objective(model, batch, None, config).metrics
        if temperature == 0.6:
            assert metrics["grpo/mismatch_abs_mean"] < 1e-4
        else:
            assert metrics["grpo/mismatch_abs_mean"] > 0.05
    probs = torch.softmax(logits[:, :-1] / 0.6, dim=-1)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    assert abs(metrics["grpo/entropy"] - float(entropy[mask].mean())) < 1e-3
