"""`python -m trainer.run [--config FILE] [--resume]`: GRPO + λ·L_CA against env servers.

Each step: B tasks × G rollouts through the agent loop (the sampler is the policy itself for `hf`, or a vLLM server
that reloads the new weights after every step), group-relative advantages, a pair batch presented in both orders,
one optimizer step on L = L_GRPO + λ·L_CA; then the held-out context-selection accuracy. Metrics go to
`metrics.jsonl` (and TensorBoard when installed) and `metrics.png`; checkpoints let `--resume` draw the same next
batches as an uninterrupted run.

With no config, the embedded default runs on a CPU machine: the tiny model, a local env server on the sample tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from agent.engines.hf import HFEngine
from agent.loop import AgentConfig, run_episode
from agent.trajectory import Trajectory, write_jsonl
from envserver.client import AsyncEnvClient, EnvClient
from envserver.local import LocalServer
from trainer.batch import build_batch
from trainer.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from trainer.config import TrainerConfig
from trainer.losses import GRPOLossConfig, ca_loss, ca_margin
from trainer.objective import ObjectiveConfig, objective
from trainer.pairs import balanced_presentations, collate_presentations, load_pairs, present


def epoch_order(items: list[Any], seed: int, epoch: int) -> list[Any]:
    """A fixed permutation per epoch: the data position is just (epoch, cursor), no RNG state needed."""
    order = list(items)
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def take(items: list[Any], count: int, seed: int, position: dict[str, int], key: str) -> list[Any]:
    """The next `count` items in epoch order, advancing position[key + '_epoch'/'_cursor']."""
    taken: list[Any] = []
    while len(taken) < count and items:
        epoch, cursor = position.get(f"{key}_epoch", 0), position.get(f"{key}_cursor", 0)
        order = epoch_order(items, seed, epoch)
        chunk = order[cursor: cursor + count - len(taken)]
        taken += chunk
        cursor += len(chunk)
        if cursor >= len(order):
            epoch, cursor = epoch + 1, 0
        position[f"{key}_epoch"], position[f"{key}_cursor"] = epoch, cursor
    return taken


def local_server_name(output_dir: Path) -> str:
    """Stable per output folder: after a kill -9 of the trainer, the resumed run's env server removes the containers
    its predecessor left."""
    import hashlib

    return "trainer-" + hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:12]


async def collect_rollouts(engine: Any, env_urls: list[str], task_ids: list[str], config: TrainerConfig,
                           tokenizer: Any, step: int) -> list[Trajectory]:
    """B × G episodes, spread over the env servers; sampling seeds depend only on (seed, step, task, group)."""
    clients = [AsyncEnvClient(url) for url in env_urls]
    semaphore = asyncio.Semaphore(config.concurrency)

    async def one(index: int, task_id: str, group: int) -> Trajectory:
        agent_config = AgentConfig(max_turns=config.max_turns, max_tokens_per_turn=config.max_tokens_per_turn,
                                   max_context_tokens=config.max_context_tokens, temperature=config.temperature,
                                   seed=(config.seed * 1_000_003 + step * 10_007 + index * 101 + group) % 2**31)
        async with semaphore:
            return await run_episode(engine, clients[index % len(clients)], task_id, agent_config,
                                     tokenizer=tokenizer, group=group)

    try:
        return list(await asyncio.gather(*(one(i, task_id, g) for i, task_id in enumerate(task_ids)
                                           for g in range(config.group_size))))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


@torch.no_grad()
def selection_accuracy(model: Any, tokenizer: Any, pairs: list[Any], clip: float) -> float:
    """Context-selection accuracy on pairs, each in both orders (a margin > 0 picks the positive)."""
    if not pairs:
        return float("nan")
    presentations = [present(pair, tokenizer, first, max_context_tokens=1024)
                     for pair, first in balanced_presentations(pairs, random.Random(0))]
    collated = collate_presentations(presentations, tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    outputs = model.model(input_ids=collated["input_ids"], attention_mask=collated["attention_mask"])
    model.train(was_training)
    hidden = outputs.last_hidden_state[torch.arange(len(presentations)), collated["answer_positions"]]
    weight = model.get_output_embeddings().weight
    ids = torch.stack([collated["positive_ids"], collated["negative_ids"]], dim=1)
    two = torch.einsum("nh,nkh->nk", hidden.float(), weight[ids].float())
    _, metrics = ca_loss(ca_margin(two, (0, 1), torch.ones(len(presentations), dtype=torch.bool)), clip)
    return metrics["ca_accuracy"]


def load_model_and_tokenizer(config: TrainerConfig, output_dir: Path, resume_from: Path | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if resume_from is not None:
        path = resume_from / "model"
    elif config.model == "tiny":
        from agent.tiny import build_tiny_model

        path = build_tiny_model(output_dir / "base-model", seed=config.seed)
    else:
        path = Path(config.model)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer_path = config.tokenizer or (str(output_dir / "base-model") if config.model == "tiny" else config.model)
    return model, AutoTokenizer.from_pretrained(tokenizer_path)


def train(config: TrainerConfig, resume: bool = False, log: Any = print) -> dict[str, Any]:
    """Run (or resume) training; returns the first and last metrics rows."""
    output_dir = config.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(config.model_dump_json(indent=2))
    checkpoint = latest_checkpoint(output_dir / "checkpoints") if resume else None
    model, tokenizer = load_model_and_tokenizer(config, output_dir, checkpoint)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0)
    start_step, position = 0, {}
    if checkpoint is not None:
        start_step, position = load_trainer_state(checkpoint, optimizer, scheduler)
        log(f"resumed from {checkpoint.name} (step {start_step})")
    objective_config = ObjectiveConfig(
        grpo=GRPOLossConfig(clip_low=config.grpo.clip_low, clip_high=config.grpo.clip_high,
                            aggregation=config.grpo.aggregation, kl_coef=config.grpo.kl_coef,
                            tis_cap=config.grpo.tis_cap),
        ca_weight=config.ca_weight, ca_clip=config.ca_clip, logprob_chunk_size=config.logprob_chunk_size,
        gradient_checkpointing=config.gradient_checkpointing)
    ref_model = None
    if config.grpo.kl_coef > 0:
        import copy

        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    pairs = load_pairs(config.pairs) if config.pairs else []
    heldout = load_pairs(config.heldout_pairs) if config.heldout_pairs else []
    engine = HFEngine(model, model_name=config.model, eos_token_ids=[tokenizer.eos_token_id])
    engine.weights_version = start_step
    # In the trainer's process group: a kill -9 of the run takes its env server with it.
    local = LocalServer(output_dir, "--max-sessions", "64", name=local_server_name(output_dir),
                        own_process_group=False) if not config.env_urls else None
    env_urls = config.env_urls or [local.url]  # type: ignore[union-attr]
    metrics_path = output_dir / "metrics.jsonl"
    if checkpoint is None:
        metrics_path.unlink(missing_ok=True)
    elif metrics_path.exists():  # rows written after the checkpoint we resume from are redone
        kept = [line for line in metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start_step]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    try:
        with EnvClient(env_urls[0]) as client:
            all_tasks = sorted(t.instance_id for t in client.list_tasks().tasks)
        task_pool = all_tasks if config.tasks == "all" else list(config.tasks)
        for step in range(start_step, config.steps):
            started = time.perf_counter()
            task_ids = take(task_pool, config.tasks_per_step, config.seed, position, "task")
            trajectories = asyncio.run(collect_rollouts(engine, env_urls, task_ids, config, tokenizer, step))
            write_jsonl(output_dir / "rollouts.jsonl", trajectories)
            rollout_s = time.perf_counter() - started
            batch = build_batch(trajectories, tokenizer.pad_token_id, mode=config.grpo.advantage,
                                scale_by_std=config.grpo.scale_by_std, mask_truncated=config.grpo.mask_truncated)
            pair_batch = None
            if pairs and config.ca_weight > 0:
                chosen = take(pairs, config.pairs_per_step, config.seed + 1, position, "pair")
                presentations = [present(p, tokenizer, first, max_context_tokens=1024)
                                 for p, first in balanced_presentations(chosen, random.Random(step))]
                pair_batch = collate_presentations(presentations, tokenizer.pad_token_id)
                pair_batch["positive_is_first"] = torch.tensor([p.positive_is_first for p in presentations])
            has_tokens = batch.loss_mask.sum() > 0
            loss, metrics = objective(model, batch if has_tokens else None, pair_batch, objective_config, ref_model)
            optimizer.zero_grad(set_to_none=True)
            grad_norm = 0.0
            if loss.requires_grad:
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm))
                optimizer.step()
            scheduler.step()
            engine.weights_version = step + 1  # the hf engine samples from this very module
            rewards = [t.reward for t in trajectories if t.reward is not None]
            row = {"step": step + 1, "reward": statistics.fmean(rewards) if rewards else float("nan"),
                   "success_rate": sum(bool(t.resolved) for t in trajectories) / len(trajectories),
                   "infra_failures": sum(t.infra_failure for t in trajectories),
                   "truncated": sum(t.truncation is not None for t in trajectories),
                   "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0], "rollout_s": rollout_s,
                   "step_s": time.perf_counter() - started, "tasks": task_ids,
                   **{f"batch/{k}": v for k, v in batch.stats.items()}, **metrics}
            if heldout:
                row["heldout_ca_accuracy"] = selection_accuracy(model, tokenizer, heldout, config.ca_clip)
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            log(f"step {step + 1}/{config.steps}: reward {row['reward']:.3f} success {row['success_rate']:.2f} "
                f"loss {row['loss']:.4f}" + (f" heldout-acc {row['heldout_ca_accuracy']:.2f}" if heldout else "")
                + f" ({row['step_s']:.1f} s)")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                save_checkpoint(output_dir / "checkpoints", model, optimizer, scheduler, step + 1, position)
    finally:
        if local is not None:
            local.stop()
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    from trainer.plots import plot_metrics

    plot_metrics(metrics_path, output_dir / "metrics.png")
    return {"first": rows[0] if rows else {}, "last": rows[-1] if rows else {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file with TrainerConfig fields (default: embedded).")
    parser.add_argument("--resume", action="store_true", help="Continue from the output folder's last checkpoint.")
    parser.add_argument("--steps", type=int, help="Override the number of steps.")
    parser.add_argument("--output-dir", type=Path, help="Override the output folder.")
    args = parser.parse_args(argv)
    config = TrainerConfig.from_yaml(args.config) if args.config else TrainerConfig()
    if args.steps is not None:
        config.steps = args.steps
    if args.output_dir is not None:
        config.output_dir = args.output_dir
    summary = train(config, resume=args.resume)
    print(json.dumps({k: {m: v for m, v in row.items() if m in ("step", "reward", "success_rate", "loss",
                                                                  "heldout_ca_accuracy")}
                      for k, row in summary.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
