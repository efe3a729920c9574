"""Data-parallel training with torch.distributed (launched by `torchrun`): the process group, the split of a step's
global batch across ranks, and the reductions that make the ranks' step the same as one process's on the whole batch
(the same loss, gradients and updated weights). The objective (trainer/objective.py) and the optimizer step
(trainer/step.py `optimizer_step`) use these; in one process each of them is a no-op.

The correctness point is the normalizers (DESIGN.md decision 7). GRPO's "token_mean" divides by the mask-1 tokens of
the whole step, the "seq_mean_*" aggregations by its number of sequences, L_CA by its number of presentations. Each
rank therefore computes its shard's *sum* divided by the *global* count (`all_reduce_sum` of the counts first, so a
rank may also hold a batch it built itself), the ranks' losses add up to the single-process loss, and the gradients
are **summed** across ranks — not averaged. Metrics are reduced the same way (`reduce_metrics`): masked means
weighted by each rank's token (or pair) count, counts and losses summed, maxima maxed; so they equal the
single-process metrics too.

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
group, no collective.

Use (every rank holds the same global batch, e.g. built from rollouts broadcast by rank 0):

    ctx = init_distributed()
    broadcast_parameters(model, ctx)          # once, after loading: every rank starts from rank 0's weights
    ...
    out = optimizer_step(model, optimizer, batch, pair_batch, config, ctx, ref_model=ref_model)   # trainer/step.py
    out.loss, out.metrics, out.grad_norm      # global values, identical on every rank
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist

from trainer.batch import RolloutBatch

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
    if device.type == "cuda":
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
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


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """The sums over the ranks of each rank's `values` (the values themselves in one process)."""
    if not ctx.is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


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
