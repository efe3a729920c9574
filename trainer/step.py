"""One training step: B × G rollouts (rank 0 collects them, every rank gets them), their advantages, GRPO's optimizer
updates on L = L_GRPO + λ·L_CA (`grpo.updates_per_step` passes × `grpo.minibatches`), then — with
`ca.separate_updates` — L_CA's own updates with its own AdamW; the new weights go to the sampler, and the step's
metrics row comes back.

`optimizer_step` is one update, in one process or on every rank of many (trainer/distributed.py): this rank's shard
of the update's batch, the objective with the step's global normalizers (trainer/objective.py), gradients summed over
the ranks, clipped, one `optimizer.step()`.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
from typing import Any, NamedTuple

import torch

from agent.trajectory import Trajectory, write_jsonl
from trainer.batch import RolloutBatch, build_batch
from trainer.config import TrainerConfig
from trainer.data import pair_batch, take
from trainer.distributed import (
    DistContext,
    ShardStrategy,
    broadcast_object,
    reduce_gradients,
    reduce_metrics,
    shard_indices,
    shard_pairs,
    shard_rollouts,
    shard_rollouts_with_old,
)
from trainer.objective import objective, rollout_logprobs
from trainer.pairs import balanced_presentations
from trainer.rollout import collect_and_announce, rollouts_for_batch, sync_weights
from trainer.setup import Run, token_embeddings


class StepOutput(NamedTuple):
    loss: float
    """The update's global loss L = L_GRPO + λ·L_CA (what one process on the whole batch reports)."""
    metrics: dict[str, float]
    """The global metrics: those of `trainer.objective.objective` on the whole batch."""
    grad_norm: float
    """Total gradient norm before clipping (0.0 when nothing had a gradient and no step was taken)."""


def optimizer_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    global_batch: RolloutBatch | None,
    global_pairs: dict[str, Any] | None,
    config: TrainerConfig,
    ctx: DistContext | None = None,
    ref_model: Any = None,
    old_logprobs: torch.Tensor | None = None,
    strategy: ShardStrategy = "balanced",
) -> StepOutput:
    """One optimizer update on a global batch held (identically) by every rank (`ctx`; None: one process): this
    rank's shard of the rollout rows and of the presentations, forward and backward with the global normalizers,
    gradients summed over the ranks, clipped to `max_grad_norm`, one `optimizer.step()` — the same update as one
    process on the whole batch. GRPO is left out when the batch has no mask-1 token, L_CA when there is no
    presentation or λ = 0, and no step is taken when nothing has a gradient. `old_logprobs`: [B, T] for the whole
    batch (see `trainer.objective.grpo_component`), sharded like the rows. The learning-rate scheduler is the
    caller's. Every rank must call this."""
    ctx = ctx or DistContext()
    shard = pair_shard = local_old = None
    if global_batch is not None:
        lengths = global_batch.attention_mask.sum(dim=1).tolist()
        indices = shard_indices(lengths, ctx.rank, ctx.world_size, strategy)
        shard, local_old = shard_rollouts_with_old(global_batch, old_logprobs, indices, ctx.device)
    if global_pairs is not None:
        lengths = global_pairs["attention_mask"].sum(dim=1).tolist()
        pair_shard = shard_pairs(global_pairs, shard_indices(lengths, ctx.rank, ctx.world_size, strategy), ctx.device)
    optimizer.zero_grad(set_to_none=True)
    out = objective(model, shard, pair_shard, config, ref_model, local_old, ctx)
    if out.loss.requires_grad:
        out.loss.backward()
    reduce_gradients(model, ctx)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = 0.0
    if params:  # the same on every rank: reduce_gradients gave the same parameters the same gradients everywhere
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
    metrics = reduce_metrics(out.metrics, out.weights, ctx)
    return StepOutput(metrics["loss"], metrics, grad_norm)


def minibatch_indices(batch: Any, count: int) -> list[list[int]]:
    """The batch's rows in `count` mini-batches (fewer when it has fewer rows), balanced by length like the ranks'
    shards so that each update costs about the same."""
    lengths = batch.attention_mask.sum(dim=1).tolist()
    parts = min(count, len(lengths))
    return [shard_indices(lengths, part, parts, "balanced") for part in range(parts)]


def sampling_logprobs(run: Run, batch: RolloutBatch) -> torch.Tensor:
    """The sampling policy's logprobs of the batch, recomputed by the trainer before the step's first update: the
    denominator of the importance ratio in every later update (a step with more than one: `grpo.updates_per_step`
    passes × `grpo.minibatches`)."""
    on_device = shard_rollouts(batch, list(range(batch.input_ids.shape[0])), run.ctx.device)
    with torch.no_grad():
        return rollout_logprobs(run.model, on_device, run.config).cpu()


@contextlib.contextmanager
def frozen(params: list[Any]) -> Any:
    """`params` take no gradient inside the block (so no optimizer step moves them, and no stale gradient of theirs
    enters a clipped norm), and train again after it."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def grpo_updates(run: Run, batch: RolloutBatch, step: int) -> list[StepOutput]:
    """The step's GRPO updates: `grpo.updates_per_step` passes over its rollouts, each in `grpo.minibatches`
    mini-batches; each update's loss also holds a pair batch when L_CA has no updates of its own."""
    config = run.config
    # All-zero advantages with no KL term give a zero GRPO gradient: skip its forward and backward.
    has_tokens = bool(batch.loss_mask.sum() > 0) and (bool((batch.advantages != 0).any()) or config.grpo.kl_coef > 0)
    minibatches = minibatch_indices(batch, config.grpo.minibatches)
    updates = config.grpo.updates_per_step * len(minibatches)
    old_logprobs = sampling_logprobs(run, batch) if has_tokens and updates > 1 else None
    outputs = []
    for update in range(updates):
        part, part_old = shard_rollouts_with_old(batch, old_logprobs, minibatches[update % len(minibatches)])
        pairs = None if run.ca_optimizer is not None else _pairs(run, step, update)
        outputs.append(
            optimizer_step(
                run.model,
                run.optimizer,
                part if has_tokens else None,
                pairs,
                config,
                run.ctx,
                ref_model=run.ref_model,
                old_logprobs=part_old,
            )
        )
    return outputs


def ca_updates(run: Run, step: int, first_update: int) -> list[StepOutput]:
    """L_CA's own updates of a step (`ca.separate_updates`): its AdamW at λ·lr, each update on its own pair batch,
    the token embeddings and output head left as they are unless `ca.trains_embeddings`."""
    config = run.config
    unweighted = config.model_copy(update={"ca": config.ca.model_copy(update={"weight": 1.0})})  # λ is in the lr
    outputs = []
    with frozen(token_embeddings(run.model) if not config.ca.trains_embeddings else []):
        for update in range(config.ca.separate_updates):
            pairs = _pairs(run, step, first_update + update)
            outputs.append(optimizer_step(run.model, run.ca_optimizer, None, pairs, unweighted, run.ctx))
    run.ca_scheduler.step()
    return outputs


def _pairs(run: Run, step: int, update: int) -> dict[str, Any] | None:
    return pair_batch(run.pairs, run.tokenizer, run.config, run.position, step, update)


def merge_step_outputs(outputs: list[StepOutput], ca_outputs: list[StepOutput], ca_weight: float) -> StepOutput:
    """One metrics row from a step's updates: each metric's mean over the updates that report it (the last update's
    alone would hide the first's) and the GRPO updates' gradient norm. L_CA's own updates (`ca_outputs`) add their
    `ca/` metrics and their gradient norm as `ca/grad_norm`; the loss is then L = L_GRPO + λ·L_CA of those means."""
    everything = [o.metrics for o in outputs + ca_outputs]
    keys = dict.fromkeys(key for m in everything for key in m if key != "loss")
    metrics = {key: statistics.fmean(m[key] for m in everything if key in m) for key in keys}
    grpo_loss = statistics.fmean(o.loss for o in outputs) if outputs else 0.0
    grad_norm = statistics.fmean(o.grad_norm for o in outputs) if outputs else 0.0
    metrics["loss"] = grpo_loss
    if ca_outputs:
        metrics["ca/grad_norm"] = statistics.fmean(o.grad_norm for o in ca_outputs)
        metrics["loss"] = grpo_loss + ca_weight * metrics["ca/ca_loss"]
    return StepOutput(metrics["loss"], metrics, grad_norm)


def selection_accuracy(model: Any, tokenizer: Any, pairs: list[Any], max_context_tokens: int = 1024) -> float:
    """Context-selection accuracy on pairs, each in both orders, scored exactly as the probe scores an hf model
    (trainer.probe_scoring: the option logits at the answer position)."""
    from trainer.probe_scoring import score_hf

    if not pairs:
        return math.nan
    answers = score_hf(
        model, tokenizer, balanced_presentations(pairs, random.Random(0)), max_context_tokens, batch_size=32
    )
    return sum(answer.correct for answer in answers) / len(answers)


def step_rollouts(run: Run, step: int, task_ids: list[str]) -> tuple[list[Trajectory], int]:
    """The step's rollouts on every rank (rank 0 collects them, announces the next step's resets, and writes them to
    `rollouts.jsonl`), and how many attempts lost with their env server were replayed: those are in the record, while
    the batch, its groups and the metrics take only the replays, so a group keeps G columns."""
    config = run.config
    trajectories = None
    if run.ctx.is_main:
        upcoming = None
        if config.announce_next_step and step + 1 < config.steps:
            # A peek (on a copy of the position): the next step takes exactly these.
            upcoming = take(run.task_pool, config.tasks_per_step, config.seed, dict(run.position), "task")
        trajectories, run.homes = run.runner.run(
            collect_and_announce(
                run.engine,
                run.env_urls,
                task_ids,
                config,
                run.tokenizer,
                step,
                homes=run.homes,
                announce=upcoming,
                log=run.log,
            )
        )
        write_jsonl(config.output_dir / "rollouts.jsonl", trajectories)
    everything = broadcast_object(trajectories, run.ctx)
    rollouts = rollouts_for_batch(everything)
    return rollouts, len(everything) - len(rollouts)


def episode_metrics(trajectories: list[Trajectory]) -> dict[str, Any]:
    """The rollouts' share resolved, mean reward (NaN when none was graded) and counts of what went wrong."""
    rewards = [t.reward for t in trajectories if t.reward is not None]
    return {
        "reward": statistics.fmean(rewards) if rewards else math.nan,
        "success_rate": sum(bool(t.resolved) for t in trajectories) / len(trajectories),
        "infra_failures": sum(t.infra_failure for t in trajectories),
        "truncated": sum(t.truncation is not None for t in trajectories),
        "malformed_episodes": sum(bool(t.malformed_tool_calls) for t in trajectories),
        "malformed_successes": sum(bool(t.malformed_tool_calls and t.resolved) for t in trajectories),
    }


def train_step(run: Run, step: int) -> dict[str, Any]:
    """One step: rollouts, their batch, GRPO's updates and L_CA's, the new weights to the sampler; returns the
    metrics row (complete on rank 0)."""
    config, main = run.config, run.ctx.is_main
    started = time.perf_counter()
    task_ids = take(run.task_pool, config.tasks_per_step, config.seed, run.position, "task")
    trajectories, lost_replayed = step_rollouts(run, step, task_ids)
    rollout_s = time.perf_counter() - started
    batch = build_batch(trajectories, run.tokenizer.pad_token_id, config.grpo)
    update_started = time.perf_counter()
    outputs = grpo_updates(run, batch, step)
    ca_outputs = ca_updates(run, step, first_update=len(outputs)) if run.ca_optimizer is not None else []
    out = merge_step_outputs(outputs, ca_outputs, config.ca.weight)
    run.scheduler.step()
    update_s = time.perf_counter() - update_started
    sync_s = sync_weights(run.engine, run.model, config, step + 1, run.runner) if main else 0.0
    row = {
        "step": step + 1,
        **episode_metrics(trajectories),
        "lost_replayed": lost_replayed,
        "weights_version": step + 1,
        "grad_norm": out.grad_norm,
        "lr": run.scheduler.get_last_lr()[0],
        "rollout_s": rollout_s,
        "update_s": update_s,
        "sync_s": sync_s,
        "tasks": task_ids,
        "world_size": run.ctx.world_size,
        **{f"batch/{k}": v for k, v in batch.stats.items()},
        **out.metrics,
    }
    if run.heldout and main and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
        row["heldout_ca_accuracy"] = selection_accuracy(run.model, run.tokenizer, run.heldout)
    row["step_s"] = time.perf_counter() - started  # the step itself: the end evaluation has its own success_eval_s
    run.log(
        f"step {step + 1}/{config.steps}: reward {row['reward']:.3f} success {row['success_rate']:.2f} "
        f"loss {row['loss']:.4f}"
        + (f" heldout-acc {row['heldout_ca_accuracy']:.2f}" if "heldout_ca_accuracy" in row else "")
        + f" ({row['step_s']:.1f} s)"
    )
    return row
