"""Data-parallel training (trainer/distributed.py): `torchrun --nproc_per_node 2` with gloo on CPU (real processes)
gives the same loss, metrics, gradients and updated weights as one process on the same global batch.

The global batches are built so that a wrong normalizer shows: rollout sequences of different lengths and loss-mask
counts (one with none), an odd number of them and of pair presentations (uneven shards), and a case where rank 1
gets no row at all."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.batch import RolloutBatch
from trainer.config import TrainerConfig
from trainer.distributed import DistContext, reduce_metrics, shard_indices, shard_pairs, shard_rollouts
from trainer.logprobs import model_token_logprobs
from trainer.objective import ca_component, grpo_component, objective
from trainer.pairs import PairRecord, balanced_presentations, collate_presentations, present
from trainer.step import optimizer_step

ROOT = Path(__file__).resolve().parents[2]


def settings(grpo: dict, ca_weight: float, max_grad_norm: float = 1.0) -> TrainerConfig:  # type: ignore[type-arg]
    """The loss of a case: no KL clamp or importance-sampling cap unless it says so, T = 1, the paper's L_CA clip."""
    return TrainerConfig(
        grpo={"kl_coef": 0.0, "kl_clamp": None, "tis_cap": None, **grpo},
        ca={"weight": ca_weight, "clip_mode": "symmetric"},
        agent={"temperature": 1.0},
        max_grad_norm=max_grad_norm,
    )


def load(path: Path, train: bool = True):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.train() if train else model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The tiny model, and a reference model near it (so the KL term and its gradient are not zero)."""
    from agent.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("distributed")
    # Narrower than the default tiny model (the 151k-row tied embedding is most of every step's work).
    model_dir = build_tiny_model(root / "model", hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
    ref = load(model_dir, train=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in ref.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    ref.save_pretrained(str(root / "ref"))
    return {"root": root, "model": model_dir, "ref": root / "ref"}


def rollout_batch(model_dir: Path, lengths: list[int], masked: tuple[int, ...] = (), seed: int = 0) -> RolloutBatch:
    """Right-padded sequences of the given lengths: a prompt, then sampled tokens with a tool-output gap (loss mask
    0); rows in `masked` have no loss-mask token. Engine logprobs are the model's own plus noise, so the truncated
    importance weights are near 1 and some hit the cap."""
    generator = torch.Generator().manual_seed(seed)
    shape = (len(lengths), max(lengths))
    input_ids = torch.full(shape, 151643, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    loss_mask = torch.zeros(shape)
    for row, n in enumerate(lengths):
        input_ids[row, :n] = torch.randint(0, 150000, (n,), generator=generator)
        attention_mask[row, :n] = 1
        if row not in masked:
            prompt = 2 + row % 3
            loss_mask[row, prompt:n] = 1
            gap = (prompt + n) // 2
            loss_mask[row, gap : gap + 2] = 0  # a tool output inside the episode
    with torch.no_grad():
        engine = model_token_logprobs(load(model_dir, train=False), input_ids, attention_mask)
    engine = (engine + 0.3 * torch.randn(shape, generator=generator)) * loss_mask
    advantages = torch.randn(len(lengths), generator=generator)
    return RolloutBatch(input_ids, attention_mask, loss_mask, engine, advantages, {"sequences": float(len(lengths))})


def pair_batch(model_dir: Path, count: int) -> dict:  # type: ignore[type-arg]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pairs = [
        PairRecord(
            pair_id=f"p{i}",
            query=f"Why does test_{i} fail?",
            answer=f"Because of bug {i}.",
            positive=f"traceback: bug {i} in module m{i} " + "frame " * (3 * i),
            negative=f"unrelated log line {i}" + " ok" * (5 - i),
            provenance={"source": "test"},
            funnel_stage="synthetic",
        )
        for i in range(count)
    ]
    items = balanced_presentations(pairs, random.Random(0), both_orders=False)
    presentations = [present(pair, tokenizer, first, max_context_tokens=256) for pair, first in items]
    collated = collate_presentations(presentations, tokenizer.pad_token_id)
    collated["positive_is_first"] = torch.tensor([p.positive_is_first for p in presentations])
    return collated


@pytest.fixture(scope="module")
def cases(dirs) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    five = rollout_batch(dirs["model"], [41, 13, 29, 7, 34], masked=(3,))
    one = rollout_batch(dirs["model"], [23], seed=1)
    no_tokens = rollout_batch(dirs["model"], [11, 17, 9], masked=(0, 1, 2), seed=2)
    pairs5 = pair_batch(dirs["model"], 5)
    # AdamW's eps at 1e-6, not 1e-8: its first step moves a weight by about lr·g/(|g| + eps), so float32 rounding of
    # the gradient sums (~1e-8 on the tiny gradients; the ranks add in another order than one process does) moves a
    # weight by up to lr·1e-8/eps. At eps 1e-8 that is ~lr (seen: 1.2e-5 at lr 1e-3); at 1e-6, < 1e-5 at this lr.
    base = {
        "model_dir": str(dirs["model"]),
        "ref_dir": None,
        "lr": 3e-4,
        "eps": 1e-6,
        "max_grad_norm": 1.0,
        "strategy": "balanced",
    }
    return [
        # token_mean + KL to a reference + truncated importance sampling; 5 sequences and 5 presentations.
        {
            **base,
            "name": "token_mean+kl+tis",
            "batch": five,
            "pairs": pairs5,
            "ref_dir": str(dirs["ref"]),
            "config": settings({"aggregation": "token_mean", "kl_coef": 0.05, "tis_cap": 1.2}, ca_weight=0.5),
        },
        # seq_mean_token_sum (Dr. GRPO constant), 3 presentations, contiguous shards, no clipping.
        {
            **base,
            "name": "seq_mean_token_sum",
            "batch": five,
            "pairs": shard_pairs(pairs5, [0, 1, 2]),
            "strategy": "contiguous",
            "max_grad_norm": 1e9,
            "config": settings({"aggregation": "seq_mean_token_sum", "max_tokens": 64}, 0.3, max_grad_norm=1e9),
        },
        # one sequence and one presentation: rank 1 holds nothing at all.
        {
            **base,
            "name": "rank-without-rows",
            "batch": one,
            "pairs": shard_pairs(pairs5, [4]),
            "config": settings({"aggregation": "seq_mean_token_mean"}, ca_weight=1.0),
        },
        # no loss-mask token in the step: GRPO is skipped (as trainer.run does), L_CA alone.
        {**base, "name": "pairs-only", "batch": no_tokens, "pairs": pairs5, "config": settings({}, ca_weight=1.0)},
    ]


def single_process_step(case: dict) -> dict:  # type: ignore[type-arg]
    """What trainer.run does today in one process on the whole batch."""
    model = load(Path(case["model_dir"]))
    ref = load(Path(case["ref_dir"]), train=False) if case["ref_dir"] else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=case["lr"], eps=case["eps"])
    batch = case["batch"]
    has_tokens = batch is not None and batch.loss_mask.sum() > 0
    loss, metrics, _ = objective(model, batch if has_tokens else None, case["pairs"], case["config"], ref)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), case["max_grad_norm"]))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return {
        "loss": float(loss.detach()),
        "metrics": metrics,
        "grad_norm": grad_norm,
        "grads": grads,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
    }


def assert_metrics_match(
    got: dict,
    want: dict,
    rel: float = 1e-5,  # type: ignore[type-arg]
    abs_: float = 1e-6,
) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=rel, abs=abs_), key


def max_diff(a: dict, b: dict) -> float:  # type: ignore[type-arg]
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_shard_indices_cover_every_row_once() -> None:
    costs = [41, 13, 29, 7, 34, 3, 3]
    for world in (1, 2, 3, 8):
        for strategy in ("balanced", "contiguous"):
            shards = [shard_indices(costs, r, world, strategy) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(len(costs)))
            assert all(s == sorted(s) for s in shards)
    assert [shard_indices(costs, r, 2, "contiguous") for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6]]
    loads = [sum(costs[i] for i in shard_indices(costs, r, 2)) for r in range(2)]
    assert abs(loads[0] - loads[1]) <= 7
    assert shard_indices([5], 1, 2) == []


@pytest.mark.slow  # ~8 s CPU: left out of scripts/test.sh --fast
def test_shards_with_global_normalizers_add_up(dirs, cases) -> None:  # type: ignore[no-untyped-def]
    """In-process: each shard's components with the step's global normalizers (what `objective` gives a rank) sum to
    the whole batch's loss, and their metrics, reduced as the ranks would, equal the whole batch's."""
    case = cases[0]
    config = case["config"]
    model, ref = load(dirs["model"]), load(dirs["ref"], train=False)
    whole = objective(model, case["batch"], case["pairs"], config, ref)
    n_tok, n_pairs = float(case["batch"].loss_mask.sum()), case["pairs"]["input_ids"].shape[0]
    total = 0.0
    for rank in range(2):
        rows = shard_indices(case["batch"].attention_mask.sum(1).tolist(), rank, 2)
        prs = shard_indices(case["pairs"]["attention_mask"].sum(1).tolist(), rank, 2)
        grpo, _ = grpo_component(model, shard_rollouts(case["batch"], rows), config, ref, normalizer=n_tok)
        ca, _ = ca_component(model, shard_pairs(case["pairs"], prs), config, normalizer=n_pairs)
        total += float(grpo.detach()) + config.ca.weight * float(ca.detach())
    assert total == pytest.approx(float(whole.loss.detach()), abs=1e-5)
    assert whole.weights["tokens"] == n_tok and whole.weights["pairs"] == n_pairs
    assert_metrics_match(reduce_metrics(whole.metrics, whole.weights, DistContext()), whole.metrics)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(dirs, cases) -> None:  # type: ignore[no-untyped-def]
    root: Path = dirs["root"]
    all_cases = cases
    torch.save(all_cases, root / "cases.pt")
    out = root / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "trainer.distributed_check",
            str(root / "cases.pt"),
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    print(f"torchrun: {time.perf_counter() - started:.1f} s;", run.stderr.strip().splitlines()[-1])

    for index, case in enumerate(all_cases):
        want = single_process_step(case)
        ranks = [torch.load(out / f"case{index}-rank{r}.pt", weights_only=False) for r in range(2)]
        got = ranks[0]
        assert got["world_size"] == 2
        name = case["name"]
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-5), name
        assert_metrics_match(got["metrics"], want["metrics"])
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), name
        assert got["grads"].keys() == want["grads"].keys(), name
        for key, grad in want["grads"].items():
            torch.testing.assert_close(got["grads"][key], grad, rtol=1e-4, atol=1e-6, msg=f"{name}: grad {key}")
        assert max_diff(got["params"], want["params"]) < 1e-5, name
        # Both ranks end with the very same weights (compared across the ranks by the check itself).
        assert got["rank_spread"] == 0.0 and ranks[1]["rank_spread"] == 0.0, name
        assert ranks[1]["loss"] == got["loss"] and ranks[1]["grad_norm"] == got["grad_norm"]
        assert_metrics_match(ranks[1]["metrics"], got["metrics"], rel=0.0, abs_=0.0)

        # And the same step through optimizer_step in one process (no process group) is the plain step.
        model = load(Path(case["model_dir"]))
        ref = load(Path(case["ref_dir"]), train=False) if case["ref_dir"] else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=case["lr"], eps=case["eps"])
        single = optimizer_step(model, optimizer, case["batch"], case["pairs"], case["config"], ref_model=ref)
        assert single.loss == pytest.approx(want["loss"], abs=1e-6), name
        assert_metrics_match(single.metrics, want["metrics"])
        assert max_diff({n: p.detach() for n, p in model.named_parameters()}, want["params"]) < 1e-6, name
