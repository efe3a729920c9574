"""Trainer step benchmark, every number measured side by side in one run (not a timed test).

1. GRPO step throughput: full optimizer steps (forward + backward + gradient clipping + AdamW) through
   `trainer.step.optimizer_step` at world size 1 — the call trainer.run makes — on a Qwen3-architecture
   model with the real 151,669-token Qwen vocabulary (agent.tiny.build_tiny_model, wider and deeper than the test
   default), over a synthetic rollout batch shaped like agentic rollouts: B sequences of T tokens, each a prompt
   (loss mask 0) then alternating sampled assistant turns (mask 1) and tool observations (mask 0), ~25% sampled;
   rewards 0/1 in groups of G, group-relative advantages (trainer.losses.compute_advantages), engine logprobs for
   truncated importance sampling. Tokens per second of all tokens and of the sampled (mask-1) tokens.
2. The added cost of L_CA at the paper's 8:1 mix: the same step with B / 8 contrastive pairs added (rollout sequences
   : pairs = 8 : 1), each pair shown in both orders (trainer.pairs.balanced_presentations → present →
   collate_presentations, with max_context_tokens=1024 as trainer.run passes). The pairs are PairRecords whose two
   contexts are agent-trajectory-like renderings of different source files of this repository, long enough to be
   truncated to the budget. Rounds of one step without and one with pairs (order alternating; one warm-up each);
   share = median over rounds of (t_with − t_without) / median t_with. Target: < 15%.
3. Peak memory of the logprob computation (trainer.logprobs, chunked) vs the naive full float32 log-softmax at 8,192
   tokens × 151,669 vocabulary, forward + backward, measured by benchmarks/bench_logprobs.py's subprocess workers
   (imported, not copied). Target: chunked ≤ 1/8 of naive.

Then one table with all three, targets and PASS/FAIL, and a JSON of everything at --out (default
benchmarks/results/, which git ignores). Also: where a step's time goes (the warm-up step without pairs, profiled),
and L_CA's forward + backward timed on its own as a cross-check of the with − without difference.

    python benchmarks/bench_trainer_step.py [--threads 1]   # full sizes (see --help), 7–10 min on 2 cores
    python benchmarks/bench_trainer_step.py --quick         # smoke run, ~1.5 min; its verdicts are not the acceptance

On a machine another process keeps busy, use --threads 1: with torch's default threads each of the decoder's many
small ops waits at a barrier for a descheduled thread, which slows the step several times over and inflates L_CA's
share (L_CA is all decoder, the rollouts' step mostly a few big head matmuls).

Exit status: 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_logprobs
import torch

from agent.tiny import build_tiny_model
from trainer.batch import RolloutBatch
from trainer.config import TrainerConfig
from trainer.distributed import init_distributed
from trainer.losses import compute_advantages
from trainer.objective import ca_component
from trainer.pairs import balanced_presentations, collate_presentations, present
from trainer.pairs.record import PairRecord
from trainer.step import optimizer_step

QWEN3_VOCAB = 151_669
NUM_BPE_TOKENS = 151_643  # ids below this are ordinary BPE tokens: the synthetic rollouts draw from them
GIB = 2**30

CA_SHARE_TARGET = 0.15
MEMORY_RATIO_TARGET = 1 / 8
MEMORY_TARGET_TOKENS = 8192


@dataclass(frozen=True)
class Sizes:
    """What one run measures; the defaults are the full mode, `--quick` swaps in QUICK."""

    rollouts: int = 16
    """B: rollout sequences per step."""
    seq_len: int = 1024
    """T: tokens per rollout sequence (all of them real tokens: no padding)."""
    group_size: int = 4
    """G: rollouts per task (trainer default)."""
    pair_ratio: int = 8
    """Rollout sequences per contrastive pair (the paper's 8:1 mix)."""
    max_context_tokens: int = 1024
    """Both contexts' token budget in one presentation (trainer.run passes 1024; each context gets half)."""
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    intermediate: int = 512
    steps: int = 3
    """Timed steps of each kind (after one warm-up of each)."""
    memory_tokens: int = MEMORY_TARGET_TOKENS
    """Sequence length of the logprob peak-memory comparison."""


QUICK = Sizes(rollouts=8, seq_len=512, layers=2, steps=1, memory_tokens=2048)


# ------------------------------------------------------------------------------------------------- rollouts


def synthetic_rollouts(sizes: Sizes, seed: int = 0) -> RolloutBatch:
    """B × T rollout tensors with an agentic loss mask: a prompt (system + issue, 10–20% of T, mask 0), then
    assistant turns of 64–320 sampled tokens (mask 1) and tool observations of 200–800 tokens (mask 0) until T."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    b, t = sizes.rollouts, sizes.seq_len
    input_ids = torch.randint(0, NUM_BPE_TOKENS, (b, t), generator=gen)
    loss_mask = torch.zeros(b, t)
    for row in range(b):
        pos = int(t * rng.uniform(0.10, 0.20))
        while pos < t:
            turn = rng.randint(64, 320)
            loss_mask[row, pos : pos + turn] = 1.0
            pos += turn + rng.randint(200, 800)
    engine_logprobs = -torch.rand(b, t, generator=gen) * 4.0 * loss_mask
    groups = b // sizes.group_size
    rewards = torch.zeros(groups, sizes.group_size, dtype=torch.float64)
    for group in range(groups):  # every group mixed (1 … G−1 successes): no group is dropped for zero variance
        for col in rng.sample(range(sizes.group_size), rng.randint(1, sizes.group_size - 1)):
            rewards[group, col] = 1.0
    advantages, _keep, stats = compute_advantages(rewards, mode="grpo", scale_by_std=True)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=torch.ones(b, t, dtype=torch.long),
        loss_mask=loss_mask,
        engine_logprobs=engine_logprobs,
        advantages=advantages.reshape(-1).to(torch.float32),
        stats={k: float(v) for k, v in stats.items()},
    )


# ---------------------------------------------------------------------------------------------------- pairs


def _trajectory_text(path: Path) -> str:
    """A context as an agent trajectory renders it: a tool call that printed a source file, and its output."""
    call = json.dumps({"name": "execute_bash", "arguments": {"command": f"cat -n {path.relative_to(ROOT)}"}})
    body = "\n".join(f"{i:6d}\t{line}" for i, line in enumerate(path.read_text().splitlines(), start=1))
    return (
        f"[assistant]\nLet me read the module first.\n<tool_call>\n{call}\n</tool_call>\n"
        f"[tool: execute_bash]\n{body}\n[Current working directory: /testbed]\n"
        "[Command finished with exit code 0]"
    )


def repo_pairs(count: int) -> list[PairRecord]:
    """`count` pairs whose contexts are trajectory renderings of two different (long) source files of this repository;
    the query is the positive file's module docstring, the answer one of its lines."""
    files = sorted(p for p in (ROOT / "trainer").rglob("*.py") if len(p.read_text()) > 8000)
    files += sorted(p for p in (ROOT / "agent").rglob("*.py") if len(p.read_text()) > 8000)
    if len(files) < 2:
        raise RuntimeError("need at least two long source files for the pair contexts")
    pairs = []
    for index in range(count):
        positive, negative = files[index % len(files)], files[(index + 1) % len(files)]
        text = positive.read_text()
        lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 40]
        query = (text.split('"""')[1] if text.count('"""') >= 2 else text[:1500]).strip()[:1500]
        pairs.append(
            PairRecord(
                pair_id=f"bench-{index}",
                query=f"{query}\nWhere in the code is this handled?",
                answer=f"{positive.relative_to(ROOT)}: {lines[len(lines) // 2]}",
                positive=_trajectory_text(positive),
                negative=_trajectory_text(negative),
                provenance={"source": "bench_trainer_step"},
                funnel_stage="synthetic",
            )
        )
    return pairs


def pair_batch(pairs: list[PairRecord], tokenizer: Any, max_context_tokens: int, step: int) -> dict[str, Any]:
    """What trainer.run's `_pair_batch` does for one step: both orders, present, collate, positive_is_first."""
    presentations = [
        present(p, tokenizer, first, max_context_tokens=max_context_tokens)
        for p, first in balanced_presentations(pairs, random.Random(step))
    ]
    batch = collate_presentations(presentations, tokenizer.pad_token_id)
    batch["positive_is_first"] = torch.tensor([p.positive_is_first for p in presentations])
    return batch


# ----------------------------------------------------------------------------------------------------- steps


def profiled(run: Any) -> tuple[float, dict[str, float]]:
    """`run()` under torch.profiler: its wall time and the seconds spent in the output head's forward and backward
    (the chunked logprob autograd Function), in AdamW's step, and everything else (decoder forward + backward, loss,
    clipping, zero_grad). Big CPU ops dominate, so the profiler's own overhead is small."""
    from torch.profiler import ProfilerActivity, profile

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    wall = time.perf_counter() - started
    totals = {event.key: event.cpu_time_total / 1e6 for event in prof.key_averages()}
    parts = {
        "head_forward_s": totals.get("_ChunkedTokenLogprobs", 0.0),
        "head_backward_s": totals.get("_ChunkedTokenLogprobsBackward", 0.0),
        "adamw_s": totals.get("Optimizer.step#AdamW.step", 0.0),
    }
    return wall, {"step_s": wall, **parts, "other_s": wall - sum(parts.values())}


def bench_steps(sizes: Sizes, model_dir: Path, breakdown: bool, log: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx = init_distributed()
    if ctx.world_size != 1:
        raise SystemExit("run this benchmark as one process (no torchrun)")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)  # trainer.run's, at its defaults
    config = TrainerConfig(
        grpo={"aggregation": "token_mean", "kl_coef": 0.0, "tis_cap": 2.0},
        ca={"weight": 0.1, "clip": 5.0, "clip_mode": "symmetric"},
        agent={"temperature": 1.0},
        logprob_chunk_size=1024,
        max_grad_norm=1.0,
    )

    batch = synthetic_rollouts(sizes)
    n_pairs = max(1, round(sizes.rollouts / sizes.pair_ratio))
    pairs = repo_pairs(n_pairs)
    prep_times = []
    for step in range(3):
        started = time.perf_counter()
        pairs_batch = pair_batch(pairs, tokenizer, sizes.max_context_tokens, step)
        prep_times.append(time.perf_counter() - started)
    presentation_lengths = pairs_batch["attention_mask"].sum(dim=1).tolist()
    rollout_tokens = int(batch.attention_mask.sum())
    sampled_tokens = int(batch.loss_mask.sum())
    pair_tokens = int(sum(presentation_lengths))
    log(
        f"model: Qwen3 arch, V={QWEN3_VOCAB}, hidden {sizes.hidden}, {sizes.layers} layers, {sizes.heads} heads "
        f"({sizes.kv_heads} kv) × {sizes.head_dim}, MLP {sizes.intermediate}, tied head: {params / 1e6:.1f} M params "
        f"({model.get_output_embeddings().weight.numel() / params:.0%} in the embedding/head); float32, "
        f"{torch.get_num_threads()} torch threads"
    )
    log(
        f"rollouts: {sizes.rollouts} × {sizes.seq_len} tokens = {rollout_tokens} tokens, {sampled_tokens} sampled "
        f"({sampled_tokens / rollout_tokens:.1%}), groups of {sizes.group_size}"
    )
    log(
        f"pairs (8:1 = rollout sequences : pairs): {n_pairs} pair(s) × 2 orders = {len(presentation_lengths)} "
        f"presentations of {min(presentation_lengths)}–{max(presentation_lengths)} tokens "
        f"(max_context_tokens={sizes.max_context_tokens}), {pair_tokens} tokens"
    )

    def one(with_pairs: bool) -> float:
        started = time.perf_counter()
        out = optimizer_step(model, optimizer, batch, pairs_batch if with_pairs else None, config, ctx)
        seconds = time.perf_counter() - started
        if not (out.loss == out.loss):  # NaN
            raise RuntimeError("the step's loss is NaN")
        return seconds

    breakdown_parts = None
    if breakdown:
        log("warm-up: one step without pairs (under torch.profiler, for the breakdown) and one with pairs …")
        warm_without, breakdown_parts = profiled(lambda: one(False))
    else:
        log("warm-up: one step without pairs and one with pairs …")
        warm_without = one(False)
    warm = {"without": warm_without, "with": one(True)}
    times: dict[str, list[float]] = {"without": [], "with": []}
    for index in range(sizes.steps):  # rounds of one step each, alternating which goes first, so drift hits both
        order = (False, True) if index % 2 == 0 else (True, False)
        for with_pairs in order:
            seconds = one(with_pairs)
            times["with" if with_pairs else "without"].append(seconds)
        log(f"  round {index + 1}: without pairs {times['without'][-1]:.2f} s, with pairs {times['with'][-1]:.2f} s")
    t_without, t_with = statistics.median(times["without"]), statistics.median(times["with"])
    # The added cost: the median over rounds of (with − without) in the same round — adjacent steps, so a slow
    # stretch of a shared machine cancels out — rather than the difference of the two medians.
    added = statistics.median(w - wo for w, wo in zip(times["with"], times["without"]))

    def ca_alone() -> float:  # L_CA's forward + backward on its own: a cross-check of the with − without difference
        optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        loss, _ = ca_component(model, pairs_batch, config, normalizer=float(len(presentation_lengths)))
        (config.ca.weight * loss).backward()
        seconds = time.perf_counter() - started
        optimizer.zero_grad(set_to_none=True)
        return seconds

    t_ca_alone = statistics.median([ca_alone() for _ in range(2)])
    share = added / t_with
    prep = statistics.median(prep_times)
    result: dict[str, Any] = {
        "model": {
            "vocab": QWEN3_VOCAB,
            "hidden": sizes.hidden,
            "layers": sizes.layers,
            "heads": sizes.heads,
            "kv_heads": sizes.kv_heads,
            "head_dim": sizes.head_dim,
            "intermediate": sizes.intermediate,
            "params": params,
            "dtype": "float32",
            "threads": torch.get_num_threads(),
        },
        "rollouts": {
            "sequences": sizes.rollouts,
            "seq_len": sizes.seq_len,
            "tokens": rollout_tokens,
            "sampled_tokens": sampled_tokens,
            "group_size": sizes.group_size,
        },
        "pairs": {
            "pairs": n_pairs,
            "presentations": len(presentation_lengths),
            "presentation_tokens": presentation_lengths,
            "tokens": pair_tokens,
            "max_context_tokens": sizes.max_context_tokens,
            "mix": f"{sizes.rollouts} rollout sequences : {n_pairs} pair(s) "
            f"({sizes.rollouts / n_pairs:g}:1), each pair in both orders",
        },
        "warmup_s": warm,
        "step_s": times,
        "grpo": {
            "step_s": t_without,
            "tokens_per_s": rollout_tokens / t_without,
            "sampled_tokens_per_s": sampled_tokens / t_without,
        },
        "with_pairs": {"step_s": t_with, "tokens_per_s": (rollout_tokens + pair_tokens) / t_with},
        "ca": {
            "added_s": added,
            "added_s_from_medians": t_with - t_without,
            "share": share,
            "per_presentation_s": added / len(presentation_lengths),
            "alone_forward_backward_s": t_ca_alone,
            "pair_prep_s": prep,
            "share_with_prep": (added + prep) / (t_with + prep),
            "target": CA_SHARE_TARGET,
            "pass": share < CA_SHARE_TARGET,
        },
    }
    if breakdown_parts is not None:
        result["breakdown"] = breakdown_parts
    return result


# ---------------------------------------------------------------------------------------------------- memory


def bench_memory(sizes: Sizes, threads: int, log: Any) -> dict[str, Any]:
    args = argparse.Namespace(
        tokens=sizes.memory_tokens,
        hidden=sizes.hidden,
        vocab=QWEN3_VOCAB,
        chunk_size=1024,
        device="cpu",
        threads=threads,
    )
    log(
        f"logprob memory: {args.tokens} tokens × V={args.vocab}, H={args.hidden}, chunk 1024, forward + backward, "
        "each method in its own subprocess (bench_logprobs.measure) …"
    )
    results = {method: bench_logprobs.measure(method, args) for method in ("chunked", "naive")}
    ratio = results["chunked"]["extra_peak_bytes"] / results["naive"]["extra_peak_bytes"]
    return {
        "tokens": args.tokens,
        "vocab": args.vocab,
        "hidden": args.hidden,
        "chunk_size": args.chunk_size,
        **results,
        "ratio": ratio,
        "target": MEMORY_RATIO_TARGET,
        "pass": ratio <= MEMORY_RATIO_TARGET,
        "at_target_size": args.tokens >= MEMORY_TARGET_TOKENS,
    }


# ----------------------------------------------------------------------------------------------------- report


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(steps: dict[str, Any], memory: dict[str, Any] | None, quick: bool) -> str:
    g, ca, r, p = steps["grpo"], steps["ca"], steps["rollouts"], steps["pairs"]
    verdict = lambda ok: "PASS" if ok else "FAIL"
    rows = [
        ("measure", "value", "target", "verdict"),
        (
            f"GRPO step, {r['sequences']}×{r['seq_len']} tokens ({r['sampled_tokens']} sampled)",
            f"{g['step_s']:.2f} s/step",
            "—",
            "—",
        ),
        ("  tokens/s (all tokens)", f"{g['tokens_per_s']:,.0f}", "—", "—"),
        ("  sampled tokens/s", f"{g['sampled_tokens_per_s']:,.0f}", "—", "—"),
        (
            f"step + L_CA ({p['pairs']} pair(s), {p['presentations']} presentations, {p['tokens']} tokens)",
            f"{steps['with_pairs']['step_s']:.2f} s/step",
            "—",
            "—",
        ),
        (
            "  L_CA added cost, share of step time",
            f"{ca['share']:.1%} (+{ca['added_s']:.2f} s; rounds: "
            + ", ".join(f"{w - wo:+.2f}" for w, wo in zip(steps["step_s"]["with"], steps["step_s"]["without"]))
            + ")",
            f"< {CA_SHARE_TARGET:.0%}",
            verdict(ca["pass"]),
        ),
        ("  per presentation", f"{ca['per_presentation_s']:.3f} s", "—", "—"),
        ("  cross-check: L_CA forward + backward alone", f"{ca['alone_forward_backward_s']:.2f} s", "—", "—"),
        (
            "  pair prep (tokenize + collate; outside the step)",
            f"{ca['pair_prep_s'] * 1000:.0f} ms (share incl. prep {ca['share_with_prep']:.1%})",
            "—",
            "—",
        ),
    ]
    if memory is not None:
        mem_note = "" if memory["at_target_size"] else f" (at {memory['tokens']} tokens, not 8k)"
        rows += [
            (
                f"logprob peak memory{mem_note}: chunked",
                f"{memory['chunked']['extra_peak_bytes'] / GIB:.2f} GiB",
                "—",
                "—",
            ),
            ("  naive full log-softmax", f"{memory['naive']['extra_peak_bytes'] / GIB:.2f} GiB", "—", "—"),
            (
                "  ratio chunked / naive",
                f"{memory['ratio']:.4f} (1/{1 / memory['ratio']:.1f})",
                "≤ 1/8",
                verdict(memory["pass"]),
            ),
        ]
    out = table(rows)
    if quick:
        out += "\n(--quick: smoke sizes, not the acceptance sizes; the verdicts are indicative only)"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Sizes()
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke sizes: 8×512 rollouts, 2 layers, 1 timed step "
        "each, memory at 2,048 tokens (overrides the size options).",
    )
    parser.add_argument("--rollouts", type=int, default=defaults.rollouts, help="B: rollout sequences per step.")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help="T: tokens per rollout sequence.")
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="Model width (also the memory test's H).")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="Decoder layers.")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="Timed steps of each kind.")
    parser.add_argument(
        "--max-context-tokens",
        type=int,
        default=defaults.max_context_tokens,
        help="Both contexts' budget per presentation (trainer.run: 1024).",
    )
    parser.add_argument(
        "--memory-tokens",
        type=int,
        default=defaults.memory_tokens,
        help="Sequence length of the logprob memory comparison (target: 8,192).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default). On a shared, busy machine 1 thread gives steadier "
        "numbers: a multi-threaded op waits for its slowest thread, which may be descheduled.",
    )
    parser.add_argument(
        "--no-breakdown", action="store_true", help="Do not run the warm-up step without pairs under torch.profiler."
    )
    parser.add_argument("--skip-memory", action="store_true", help="Skip the logprob memory comparison.")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=ROOT / ".cache" / "bench_trainer_step",
        help="Where the benchmark's model is built (reused when its arguments match).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "trainer_step.json",
        help="Where the JSON of results is written.",
    )
    args = parser.parse_args()

    if args.quick:
        sizes = QUICK
    else:
        sizes = Sizes(
            rollouts=args.rollouts,
            seq_len=args.seq_len,
            hidden=args.hidden,
            layers=args.layers,
            steps=args.steps,
            max_context_tokens=args.max_context_tokens,
            memory_tokens=args.memory_tokens,
        )
    if sizes.rollouts % sizes.group_size:
        raise SystemExit(f"--rollouts must be a multiple of the group size {sizes.group_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    log = lambda message: print(message, flush=True)
    log(
        f"load average {load_before[0]:.2f} on {os.cpu_count()} CPUs"
        + (" — the machine is busy: step times will be noisy and slower" if load_before[0] > 0.5 else "")
    )
    model_dir = args.model_dir / f"h{sizes.hidden}-l{sizes.layers}-i{sizes.intermediate}"
    build_tiny_model(
        model_dir,
        hidden_size=sizes.hidden,
        num_layers=sizes.layers,
        num_heads=sizes.heads,
        num_kv_heads=sizes.kv_heads,
        head_dim=sizes.head_dim,
        intermediate_size=sizes.intermediate,
        init_std=0.02,
        max_position_embeddings=max(4096, sizes.seq_len),
    )
    steps = bench_steps(sizes, model_dir, breakdown=not args.no_breakdown, log=log)
    memory = bench_memory(sizes, args.threads, log) if not args.skip_memory else None

    print()
    if "breakdown" in steps:
        b = steps["breakdown"]
        print(
            f"where a GRPO step's time goes (the profiled warm-up step, {b['step_s']:.2f} s): output head forward "
            f"{b['head_forward_s']:.2f} s ({b['head_forward_s'] / b['step_s']:.0%}), head backward "
            f"{b['head_backward_s']:.2f} s ({b['head_backward_s'] / b['step_s']:.0%}), AdamW "
            f"{b['adamw_s']:.2f} s ({b['adamw_s'] / b['step_s']:.0%}), rest (decoder forward + backward, loss, "
            f"clipping) {b['other_s']:.2f} s ({b['other_s'] / b['step_s']:.0%})"
        )
    print(f"mix: {steps['pairs']['mix']}")
    print(report(steps, memory, args.quick))
    total = time.perf_counter() - started
    load_after = os.getloadavg()
    print(f"total {total:.0f} s; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    results = {
        "mode": "quick" if args.quick else "full",
        "sizes": asdict(sizes),
        "steps": steps,
        "memory": memory,
        "total_s": total,
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}")
    ok = steps["ca"]["pass"] and (memory is None or memory["pass"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
