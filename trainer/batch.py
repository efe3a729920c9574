"""Rollouts → training tensors: group-relative advantages per episode, one row per training sequence.

Episodes the trainer must not score (an infra failure, an engine without token ids, and — when configured — a
truncated episode) get a missing reward: they are left out of their group's baseline and get advantage 0, and are
counted. A sequence inherits its episode's advantage (one sequence per episode in `keep` think mode, one per turn
in `drop` mode).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from agent.trajectory import Trajectory
from trainer.losses import GRPOConfig, compute_advantages


@dataclass
class RolloutBatch:
    """Right-padded tensors [B, T] of all training sequences of one step."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    engine_logprobs: torch.Tensor
    """The sampler's logprob per token (0 where loss_mask is 0)."""
    advantages: torch.Tensor
    """[B], the episode's advantage for every one of its sequences."""
    stats: dict[str, float]


def _masked(trajectory: Trajectory, mask_truncated: bool) -> str | None:
    if not trajectory.sequences:
        return "no_token_ids"
    if trajectory.infra_failure or trajectory.reward is None:
        return "infra_failure"
    if mask_truncated and trajectory.truncation is not None:
        return "truncated"
    return None


def training_reward(trajectory: Trajectory, malformed_penalty: float = 0.0) -> float:
    """The reward the advantages see: the env server's (the instance's tests), less `malformed_penalty` when the
    agent emitted a tool call the parser rejected. The tests only see the final repository, so an episode that
    solved the task and also wrote garbage calls (`{"name": "finish", "finish", ...}`) earns 1 like a clean one, and
    reinforcing it teaches the garbage: in the embedded default's runs without the penalty the share of successful
    rollouts with a malformed call grew from under 10 % to over half, and repetitions spread into the commands."""
    reward = float(trajectory.reward)  # type: ignore[arg-type]
    return reward - malformed_penalty if trajectory.malformed_tool_calls else reward


def build_batch(trajectories: list[Trajectory], pad_token_id: int, config: GRPOConfig | None = None) -> RolloutBatch:
    """Group episodes by task, compute advantages, and pad every sequence of every episode into one batch. `config`:
    the advantage settings (default `GRPOConfig()`): the baseline (`advantage`, `scale_by_std`,
    `negative_advantage_scale`), `malformed_call_penalty` (subtracted from the reward of an episode with any malformed
    tool call before the advantages, `training_reward`), `mask_truncated`, and `drop_zero_variance`: groups whose
    rewards are all equal (or with under 2 rewards) leave the loss entirely (their tokens are in no normalizer;
    DAPO's filter); off, they stay with advantage 0, as TRL keeps them: they add nothing to the policy-gradient term
    but count in its token normalizer, and their tokens carry the KL term — without them a run whose groups all
    succeed (or all fail) would get no KL anchor at all. Either way they are counted (`num_groups_zero_std`,
    `num_groups_too_few`)."""
    config = config if config is not None else GRPOConfig()
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for trajectory in trajectories:
        groups[trajectory.task_id].append(trajectory)
    size = max(len(members) for members in groups.values())
    rewards = torch.full((len(groups), size), math.nan, dtype=torch.float64)
    masked: dict[str, int] = defaultdict(int)
    for row, members in enumerate(groups.values()):
        for col, trajectory in enumerate(members):
            reason = _masked(trajectory, config.mask_truncated)
            if reason:
                masked[reason] += 1
            else:
                rewards[row, col] = training_reward(trajectory, config.malformed_call_penalty)
    advantages, keep, stats = compute_advantages(
        rewards,
        mode=config.advantage,
        scale_by_std=config.scale_by_std,
        negative_scale=config.negative_advantage_scale,
    )
    rows: list[tuple[Any, float, bool]] = []
    for row, members in enumerate(groups.values()):
        for col, trajectory in enumerate(members):
            trains = (bool(keep[row]) or not config.drop_zero_variance) and not math.isnan(float(rewards[row, col]))
            for sequence in trajectory.sequences:
                rows.append((sequence, float(advantages[row, col]), trains))
    if not rows:
        raise ValueError("no trajectory in this batch has token ids")
    length = max(len(sequence.token_ids) for sequence, _, _ in rows)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    loss_mask = torch.zeros(shape, dtype=torch.float32)
    engine_logprobs = torch.zeros(shape, dtype=torch.float32)
    for index, (sequence, _, trains) in enumerate(rows):
        n = len(sequence.token_ids)
        input_ids[index, :n] = torch.tensor(sequence.token_ids)
        attention_mask[index, :n] = 1
        if trains:
            loss_mask[index, :n] = torch.tensor(sequence.loss_mask, dtype=torch.float32)
        engine_logprobs[index, :n] = torch.tensor(sequence.logprobs, dtype=torch.float32)
    # Masked episodes and dropped (zero-variance) groups train nothing: their tokens leave the loss and its
    # token count entirely, rather than diluting it with zero-advantage tokens.
    advantage = torch.tensor([a for _, a, _ in rows], dtype=torch.float32)
    stats = {
        **{k: float(v) for k, v in stats.items()},
        **{f"masked_{k}": float(v) for k, v in masked.items()},
        "sequences": float(len(rows)),
        "sequences_trained": float(sum(t for _, _, t in rows)),
        "episodes": float(len(trajectories)),
    }
    return RolloutBatch(input_ids, attention_mask, loss_mask, engine_logprobs, advantage, stats)
