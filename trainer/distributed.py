"""Data-parallel training with torch.distributed (launched by `torchrun`): one optimizer step on a global batch whose
rollout sequences and pair presentations are split across ranks, with the same loss, gradients and updated weights
as one process on the whole batch.

The correctness point is the normalizers (DESIGN.md decision 7). GRPO's "token_mean" divides by the mask-1 tokens of
the whole step, the "seq_mean_*" aggregations by its number of sequences, L_CA by its number of presentations. Each
rank therefore computes its shard's *sum* divided by the *global* count (the counts are all-reduced first, so a rank
may also hold a batch it built itself), the ranks' losses add up to the single-process loss, and the gradients are
**summed** across ranks — not averaged. Metrics are reduced the same way: masked means weighted by each rank's token
(or pair) count, counts and losses summed, maxima maxed; so they equal the single-process metrics too.

Why a plain all-reduce of gradients and not DistributedDataParallel: the objective never calls `model(...)`; it calls
`model.model(...)` and reads `model.get_output_embeddings().weight` directly (trainer/logprobs.py, trainer/objective.py)
so that the [T, V] logits are never built. DDP prepares its gradient reduction in its own `forward`, so with those
calls its hooks never expect a backward and the gradients would silently stay per-rank; and DDP *averages*, which
would need the loss pre-scaled by world_size. `reduce_gradients` sums the gradients after `backward()` in flat
buckets (one all-reduce per ~25 MB, like DDP's buckets, without DDP's overlap of communication with backward — at
these batch sizes a step is dominated by the forward/backward, not the reduction). It also handles ranks whose shard
is empty (no graph, no gradients): a parameter gets a gradient wherever any rank produced one, so AdamW treats it
exactly as the single process does (a `None` gradient skips a parameter; a zero one does not).

FSDP is not supported: FSDP2's `fully_shard` unshards a module's parameters in that module's forward hooks, and the
output head's weight is read here without calling the head, so it would be read sharded. It would also need gloo's
reduce-scatter for CPU. Supporting it means computing the head through module calls; that is for GPU hosts and is
neither done nor tested here.

Backends: gloo on CPU (what the tests run: real processes under torchrun), nccl when CUDA is available (the rank's
device is cuda:LOCAL_RANK). Without WORLD_SIZE (or with WORLD_SIZE=1) everything here is single-process: no process
group, no collective, the same numbers as `trainer.objective.objective` on the whole batch.

Use (the trainer's step; every rank holds the same global batch, e.g. built from rollouts broadcast by rank 0):

    ctx = init_distributed()
    broadcast_parameters(model, ctx)          # once, after loading: every rank starts from rank 0's weights
    ...
    out = distributed_step(model, optimizer, batch, pair_batch, objective_config, ctx, ref_model=ref_model,
                           max_grad_norm=config.max_grad_norm)
    out.loss, out.metrics, out.grad_norm      # global values, identical on every rank
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist

from trainer.batch import RolloutBatch
from trainer.losses import ca_loss, grpo_loss
from trainer.objective import ObjectiveConfig, ca_component, grpo_component

ShardStrategy = Literal["balanced", "contiguous"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job."""

    rank: int = 0
    """This process's rank, 0 … world_size − 1."""
    world_size: int = 1
    """Number of processes; 1 means no process group."""
    local_rank: int = 0
    """Rank on this host (the CUDA device index under nccl)."""
    backend: str | None = None
    """"gloo" or "nccl"; None for a single process."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where this rank's tensors (and collectives' buffers) live."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, writes metrics and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """The process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    backend: None picks nccl when CUDA is available, else gloo. Without WORLD_SIZE, or with WORLD_SIZE=1, no group
    is created and a single-process context is returned. An already initialised default group is reused.
    """
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world_size, local_rank, backend, _device(backend, local_rank))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: launch with torchrun")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = _device(backend, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, timeout=timedelta(seconds=timeout_s), **({"device_id": device} if device.type == "cuda" else {})
    )
    return DistContext(rank, world_size, local_rank, backend, device)


def _device(backend: str, local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")


def destroy_distributed(ctx: DistContext) -> None:
    """Tear the process group down (at the end of training)."""
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(model: Any, ctx: DistContext, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank (once after loading, so all start identical)."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=src)


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank `src`'s picklable object on every rank (e.g. the step's trajectories, collected on rank 0)."""
    if not ctx.is_distributed:
        return obj
    holder = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(holder, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return holder[0]


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's picklable object, in rank order (e.g. trajectories each rank collected for its own tasks)."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


# ----------------------------------------------------------------------------------------------------- sharding


def shard_indices(
    costs: list[float] | torch.Tensor, rank: int, world_size: int, strategy: ShardStrategy = "balanced"
) -> list[int]:
    """The rows (ascending) that `rank` takes out of len(costs) rows; every row goes to exactly one rank, and every
    rank computes the same split (it depends on nothing but the arguments). A rank may get no row.

    "contiguous": rank r takes the r-th of world_size near-equal consecutive slices (sizes differ by at most one).
    "balanced": longest-first greedy on `costs` (e.g. each row's token count): each row goes to the rank with the
        least cost so far (ties: fewer rows, then lower rank), so ranks finish their forward/backward together.
    """
    n = len(costs)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if strategy == "contiguous":
        base, extra = divmod(n, world_size)
        start = rank * base + min(rank, extra)
        return list(range(start, start + base + (1 if rank < extra else 0)))
    if strategy != "balanced":
        raise ValueError(f"unknown shard strategy {strategy!r}")
    values = [float(c) for c in costs]
    load = [(0.0, 0, r) for r in range(world_size)]
    mine: list[int] = []
    for index in sorted(range(n), key=lambda i: (-values[i], i)):
        target = min(range(world_size), key=lambda r: load[r])
        cost, count, owner = load[target]
        load[target] = (cost + values[index], count + 1, owner)
        if owner == rank:
            mine.append(index)
    return sorted(mine)


def _occupied_length(attention_mask: torch.Tensor) -> int:
    """Columns up to the last one any row attends to (at least 1): trailing padding columns can be cut."""
    columns = attention_mask.bool().any(dim=0).nonzero()
    return int(columns.max()) + 1 if columns.numel() else 1


def shard_rollouts(batch: RolloutBatch, indices: list[int], device: torch.device | None = None) -> RolloutBatch:
    """The rows `indices` of a global batch, their common trailing padding cut (a causal model's outputs at the
    kept positions do not depend on it)."""
    rows = torch.tensor(indices, dtype=torch.long)
    length = _occupied_length(batch.attention_mask[rows]) if indices else 1

    def take(t: torch.Tensor) -> torch.Tensor:
        out = t[rows][:, :length] if t.dim() == 2 else t[rows]
        return out.to(device) if device is not None else out

    return RolloutBatch(
        take(batch.input_ids),
        take(batch.attention_mask),
        take(batch.loss_mask),
        take(batch.engine_logprobs),
        take(batch.advantages),
        dict(batch.stats),
    )


def shard_rollouts_with_old(
    batch: RolloutBatch, old_logprobs: torch.Tensor | None, indices: list[int], device: torch.device | None = None
) -> tuple[RolloutBatch, torch.Tensor | None]:
    """`shard_rollouts`, and the same rows of the batch's [B, T] old logprobs cut to the shard's length (None stays
    None): a rank's shard, or one mini-batch of a step."""
    shard = shard_rollouts(batch, indices, device)
    if old_logprobs is None:
        return shard, None
    old = old_logprobs[torch.tensor(indices, dtype=torch.long)][:, : shard.input_ids.shape[1]]
    return shard, old.to(device) if device is not None else old


def shard_pairs(pairs: dict[str, Any], indices: list[int], device: torch.device | None = None) -> dict[str, Any]:
    """The presentations `indices` of a collated pair batch (every tensor with one row per presentation is cut; the
    [N, T] ones lose their common trailing padding)."""
    n = pairs["input_ids"].shape[0]
    rows = torch.tensor(indices, dtype=torch.long)
    length = _occupied_length(pairs["attention_mask"][rows]) if indices else 1
    out: dict[str, Any] = {}
    for key, value in pairs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            value = value[rows]
            if value.dim() == 2 and key in ("input_ids", "attention_mask"):
                value = value[:, :length]
            value = value.to(device) if device is not None else value
        out[key] = value
    return out


# -------------------------------------------------------------------------------------------- loss and metrics


class StepOutput(NamedTuple):
    loss: float
    """The global loss L = L_GRPO + λ·L_CA of the step (what one process on the whole batch reports)."""
    metrics: dict[str, float]
    """The global metrics, with the keys and values of `trainer.objective.objective`'s on the whole batch."""
    grad_norm: float
    """Total gradient norm before clipping (0.0 when nothing had a gradient and no step was taken)."""


_SUMMED = {"grpo/num_tokens", "grpo/num_sequences", "grpo/loss", "ca/ca_num_pairs", "ca/ca_loss", "loss"}
_MAXED = {"grpo/ratio_max", "grpo/mismatch_abs_max"}


def _metric_weight(key: str, weights: dict[str, float]) -> float:
    """The count a rank's value of a mean metric stands for: GRPO metrics are means over mask-1 tokens, L_CA's over
    presentations (the per-order accuracies over presentations with that order)."""
    if key == "ca/ca_accuracy_pos_first":
        return weights["pos_first"]
    if key == "ca/ca_accuracy_pos_second":
        return weights["pos_second"]
    if key.startswith("ca/"):
        return weights["pairs"]
    if key.startswith("grpo/"):
        return weights["tokens"]
    raise KeyError(f"no reduction known for metric {key!r}")


def reduce_metrics(metrics: dict[str, float], weights: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Global metrics from every rank's local ones (every rank must pass the same keys). `weights`: this rank's
    local counts — "tokens" (mask-1 tokens), "pairs", "pos_first", "pos_second" (presentations)."""
    if not ctx.is_distributed:
        return dict(metrics)
    keys = sorted(metrics)
    summed, maxed = [], []
    for key in keys:
        value = metrics[key]
        if key in _SUMMED:
            summed.append(value)
        elif key in _MAXED:
            maxed.append(-math.inf if math.isnan(value) else value)
        else:
            weight = _metric_weight(key, weights)
            summed += [value * weight if weight > 0 else 0.0, weight]
    sums = torch.tensor(summed, dtype=torch.float64, device=ctx.device)
    maxes = torch.tensor(maxed, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    if maxed:
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
    sums_list, maxes_list = sums.tolist(), maxes.tolist()
    out: dict[str, float] = {}
    for key in keys:
        if key in _SUMMED:
            out[key] = sums_list.pop(0)
        elif key in _MAXED:
            value = maxes_list.pop(0)
            out[key] = math.nan if value == -math.inf else value
        else:
            total, weight = sums_list.pop(0), sums_list.pop(0)
            out[key] = total / weight if weight > 0 else math.nan
    return out


def _all_reduce_counts(counts: list[float], ctx: DistContext) -> list[float]:
    if not ctx.is_distributed:
        return counts
    tensor = torch.tensor(counts, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def _empty_grpo(config: ObjectiveConfig, with_ref: bool, normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
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


def _empty_ca(config: ObjectiveConfig, with_order: bool, normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
    """A rank without presentations: loss 0 and the same metric keys as a non-empty shard."""
    order = torch.zeros(0, dtype=torch.bool) if with_order else None
    return ca_loss(torch.zeros(0), config.ca_clip, order, normalizer=normalizer, clip_mode=config.ca_clip_mode)


def sharded_objective(
    model: Any,
    batch: RolloutBatch | None,
    pairs: dict[str, Any] | None,
    config: ObjectiveConfig,
    ctx: DistContext,
    ref_model: Any = None,
    old_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
    """This rank's part of L = L_GRPO + λ·L_CA: its shard's sums over the global normalizers, so the ranks' losses
    (and their gradients) add up to those of the whole batch. `batch` / `pairs`: this rank's shard (None or zero
    rows: nothing here; the ranks need not hold the same global batch — the counts are all-reduced).

    As in the trainer's single-process step, GRPO is skipped when the step has no mask-1 token at all, and L_CA when
    it has no presentation or λ = 0. Every rank must call this (it runs collectives).

    Returns (local loss tensor, local metrics, local metric weights) — `reduce_metrics` turns the last two global.
    """
    rows = batch.input_ids.shape[0] if batch is not None else 0
    n_pairs = pairs["input_ids"].shape[0] if pairs is not None else 0
    tokens = float(batch.loss_mask.sum()) if rows else 0.0
    first = float(pairs["positive_is_first"].sum()) if n_pairs and "positive_is_first" in pairs else 0.0
    g_tokens, g_rows, g_pairs = _all_reduce_counts([tokens, float(rows), float(n_pairs)], ctx)
    weights = {"tokens": tokens, "pairs": float(n_pairs), "pos_first": first, "pos_second": n_pairs - first}
    device = ctx.device
    total = torch.zeros((), dtype=torch.float32, device=device)
    metrics: dict[str, float] = {}
    if g_tokens > 0:
        normalizer = g_tokens if config.grpo.aggregation == "token_mean" else g_rows
        if rows:
            loss, grpo_metrics = grpo_component(model, batch, config, ref_model, old_logprobs, normalizer=normalizer)
        else:
            loss, grpo_metrics = _empty_grpo(config, ref_model is not None, normalizer)
        total = total + loss.to(device)
        metrics.update({f"grpo/{k}": v for k, v in grpo_metrics.items()})
    if g_pairs > 0 and config.ca_weight > 0:
        if n_pairs:
            loss, ca_metrics = ca_component(model, pairs, config, normalizer=g_pairs)
        else:
            # Every rank must report the same keys: the per-order accuracies come with `positive_is_first`, which an
            # empty shard cut by `shard_pairs` still carries; ranks that collate their own pairs must all set it or
            # none.
            with_order = pairs is not None and "positive_is_first" in pairs
            loss, ca_metrics = _empty_ca(config, with_order, g_pairs)
        total = total + config.ca_weight * loss.to(device)
        metrics.update({f"ca/{k}": v for k, v in ca_metrics.items()})
    metrics["loss"] = float(total.detach())
    return total, metrics, weights


# ------------------------------------------------------------------------------------------------ gradients


def reduce_gradients(model: Any, ctx: DistContext, bucket_bytes: int = 25 * 2**20) -> None:
    """Sum every parameter's gradient over the ranks, in place, in flat buckets of about `bucket_bytes`.

    A parameter that has a gradient on some rank gets one on every rank (zeros where its rank had none), and one
    that has none anywhere keeps `None`: exactly the parameters the single-process backward would have given one.
    """
    if not ctx.is_distributed:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads: list[torch.Tensor] = []
    for param, anywhere in zip(params, present.tolist()):
        if anywhere:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for grad in grads:  # consecutive gradients of one dtype and device share a bucket up to bucket_bytes
        nbytes = grad.numel() * grad.element_size()
        if (
            not buckets
            or size + nbytes > bucket_bytes
            or buckets[-1][0].dtype != grad.dtype
            or buckets[-1][0].device != grad.device
        ):
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += nbytes
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


# --------------------------------------------------------------------------------------------------- the step


def distributed_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    global_batch: RolloutBatch | None,
    global_pairs: dict[str, Any] | None,
    config: ObjectiveConfig,
    ctx: DistContext,
    ref_model: Any = None,
    max_grad_norm: float | None = 1.0,
    old_logprobs: torch.Tensor | None = None,
    strategy: ShardStrategy = "balanced",
) -> StepOutput:
    """One optimizer step on a global batch held (identically) by every rank: this rank's shard of the rollout
    rows and of the presentations, forward and backward with the global normalizers, gradients summed over the
    ranks, clipped to `max_grad_norm` (None: not clipped; the norm is still reported), one `optimizer.step()`.

    Same as the single-process step of trainer.run on the whole batch: GRPO is left out when the batch has no
    mask-1 token, L_CA when there is no presentation or λ = 0, and no step is taken when nothing has a gradient.
    `old_logprobs`: [B, T] for the whole batch (see `grpo_component`), sharded like the rows. The learning-rate
    scheduler is the caller's. Every rank must call this.
    """
    device = ctx.device
    shard = pair_shard = local_old = None
    if global_batch is not None:
        lengths = global_batch.attention_mask.sum(dim=1).tolist()
        indices = shard_indices(lengths, ctx.rank, ctx.world_size, strategy)
        shard, local_old = shard_rollouts_with_old(global_batch, old_logprobs, indices, device)
    if global_pairs is not None:
        lengths = global_pairs["attention_mask"].sum(dim=1).tolist()
        pair_shard = shard_pairs(global_pairs, shard_indices(lengths, ctx.rank, ctx.world_size, strategy), device)
    optimizer.zero_grad(set_to_none=True)
    loss, metrics, weights = sharded_objective(model, shard, pair_shard, config, ctx, ref_model, local_old)
    if loss.requires_grad:
        loss.backward()
    reduce_gradients(model, ctx)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = 0.0
    if params:  # the same on every rank: reduce_gradients gave the same parameters the same gradients everywhere
        clip = max_grad_norm if max_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        optimizer.step()
    metrics = reduce_metrics(metrics, weights, ctx)
    return StepOutput(metrics["loss"], metrics, grad_norm)
