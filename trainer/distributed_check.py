"""`torchrun --nproc_per_node N -m trainer.distributed_check CASES OUT`: run `optimizer_step` on saved cases.

CASES is a `torch.save`d list of dicts, each one step to take from fresh weights:
    model_dir   the model to load (float32, train mode)
    ref_dir     a reference model for the KL term, or None
    batch       a RolloutBatch (the global batch; every rank loads the same) or None
    pairs       a collated pair batch (trainer.pairs.collate_presentations) or None
    config      a TrainerConfig (its loss sections and max_grad_norm)
    lr, eps (AdamW's), strategy
Every rank writes OUT/case{i}-rank{r}.pt: loss, metrics, grad_norm and rank_spread (0.0 when all ranks hold the very
same weights after the step); rank 0 also the updated parameters and the summed gradients.
tests/trainer/test_distributed.py compares them with one process on the same global batch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from trainer.distributed import DistContext


def rank_spread(model: torch.nn.Module, ctx: DistContext) -> float:
    """max over all weights of (largest − smallest value across the ranks): 0.0 when every rank holds the very same
    weights."""
    if not ctx.is_distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    high, low = flat.clone(), -flat
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return float((high.double() + low.double()).max())


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    from transformers import AutoModelForCausalLM

    from trainer.distributed import broadcast_parameters, destroy_distributed, init_distributed
    from trainer.step import optimizer_step

    args = sys.argv[1:] if argv is None else argv
    cases_path, out_dir = Path(args[0]), Path(args[1])
    cases = torch.load(cases_path, weights_only=False)
    ctx = init_distributed()
    ready = time.perf_counter()
    torch.set_num_threads(1)  # the ranks share the machine's cores
    for index, case in enumerate(cases):
        model = AutoModelForCausalLM.from_pretrained(case["model_dir"], dtype=torch.float32).train()
        broadcast_parameters(model, ctx)
        ref = None
        if case.get("ref_dir"):
            ref = AutoModelForCausalLM.from_pretrained(case["ref_dir"], dtype=torch.float32).eval()
            ref.requires_grad_(False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=case["lr"], eps=case.get("eps", 1e-8))
        out = optimizer_step(
            model,
            optimizer,
            case["batch"],
            case["pairs"],
            case["config"],
            ctx,
            ref_model=ref,
            strategy=case.get("strategy", "balanced"),
        )
        record = {
            "loss": out.loss,
            "metrics": out.metrics,
            "grad_norm": out.grad_norm,
            "world_size": ctx.world_size,
            "rank_spread": rank_spread(model, ctx),
        }
        if ctx.is_main:
            record["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            record["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save(record, out_dir / f"case{index}-rank{ctx.rank}.pt")
    if ctx.is_main:
        print(
            f"distributed_check: world size {ctx.world_size} ({ctx.backend}), imports + group "
            f"{ready - started:.1f} s, {len(cases)} steps {time.perf_counter() - ready:.1f} s",
            file=sys.stderr,
        )
    destroy_distributed(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
