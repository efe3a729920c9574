"""`python -m trainer.run [--config FILE] [--resume]`: GRPO + λ·L_CA against env servers.

Each step: B tasks × G rollouts through the agent loop (the sampler is the policy itself for `hf`, or a vLLM server
that reloads the new weights after every step), group-relative advantages, pair batches presented in both orders,
optimizer updates on L = L_GRPO + λ·L_CA (or, with `ca_updates_per_step`, GRPO's updates and then L_CA's own, each
loss with its own AdamW); then the held-out context-selection accuracy. Before the first step and
after the last, a success evaluation plays every task with the same fixed seeds (`eval-rollouts.jsonl`). Metrics go to
`metrics.jsonl` (and TensorBoard when installed) and `metrics.png`; checkpoints let `--resume` draw the same next
batches as an uninterrupted run.

With no config, the embedded default runs on a CPU machine: the tiny model, a local env server on the sample tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from agent.engines.hf import HFEngine
from agent.loop import AgentConfig
from agent.trajectory import Trajectory, read_jsonl, write_jsonl
from envserver.client import AsyncEnvClient, EnvClient, EnvServerError
from envserver.local import LocalServer
from trainer.batch import build_batch
from trainer.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from trainer.config import TrainerConfig
from trainer.distributed import (
    DistContext,
    StepOutput,
    broadcast_object,
    broadcast_parameters,
    destroy_distributed,
    distributed_step,
    init_distributed,
    shard_indices,
    shard_rollouts,
    shard_rollouts_with_old,
)
from trainer.losses import GRPOLossConfig
from trainer.metrics import MetricsLog
from trainer.objective import ObjectiveConfig
from trainer.pairs import balanced_presentations, collate_presentations, load_pairs, present
from trainer.summary import SUCCESS_EVAL_TASK_PREFIX, print_summary, start_end_summary


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
        chunk = order[cursor : cursor + count - len(taken)]
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


EVAL_STEP = -1
"""The `step` of the success evaluation's sampling seeds: the same at both ends of a run, never a training step's."""


async def collect_rollouts(
    engine: Any,
    env_urls: list[str],
    task_ids: list[str],
    config: TrainerConfig,
    tokenizer: Any,
    step: int,
    group_size: int | None = None,
    log: Any = print,
) -> list[Trajectory]:
    """B × G episodes (G: `group_size`, default the config's), spread over the env servers by `agent.fleet.Fleet`
    (task i's episodes on `env_urls[i % n]`, where `announce_resets` started their containers, while that server is
    live and has room; else on the live server with the most free capacity); sampling seeds depend only on (seed,
    step, task's place in `task_ids`, group). With `replay_lost_episodes`, an episode lost with its env server is
    played again (same seed) on a live one; the lost attempt comes back too, marked `replayed` (before its replay;
    `rollouts_for_batch` leaves it out). Raises `FleetUnavailable` when no env server is live for its patience.
    With several env servers, or any failure, logs each server's state and episodes."""
    from agent.collect import episode_player, mark_lost_attempt
    from agent.fleet import Fleet, summary_lines

    group_size = config.group_size if group_size is None else group_size
    semaphore = asyncio.Semaphore(config.concurrency)

    async with Fleet(env_urls, log=log) as fleet:
        replays = fleet.config.lost_replays if config.replay_lost_episodes else 0

        async def one(index: int, task_id: str, group: int) -> list[Trajectory]:
            settings = agent_config(
                config, seed=(config.seed * 1_000_003 + step * 10_007 + index * 101 + group) % 2**31
            )
            lost: list[Trajectory] = []

            play = episode_player(engine, task_id, settings, tokenizer, group)

            async def keep_lost(trajectory: Trajectory, attempt: int) -> None:
                mark_lost_attempt(trajectory, attempt)
                lost.append(trajectory)

            async with semaphore:
                final = await fleet.run(
                    play, prefer=env_urls[index % len(env_urls)], replays=replays, on_lost=keep_lost
                )
            return [*lost, final]

        try:
            # A TaskGroup: when the fleet gives up (FleetUnavailable), the waiting episodes are cancelled with it.
            async with asyncio.TaskGroup() as episodes:
                tasks = [
                    episodes.create_task(one(i, task_id, g))
                    for i, task_id in enumerate(task_ids)
                    for g in range(group_size)
                ]
        except BaseExceptionGroup as exc:
            raise exc.exceptions[0] from None
        finally:
            if len(fleet.replicas) > 1 or any(r.failed or not r.live for r in fleet.replicas):
                for line in summary_lines(fleet):
                    log(f"step {step}: {line}" if step != EVAL_STEP else f"success eval: {line}")
    return [trajectory for task in tasks for trajectory in task.result()]


def rollouts_for_batch(trajectories: list[Trajectory]) -> list[Trajectory]:
    """The group's rollouts: every trajectory but the attempts lost with their env server and replayed (those are
    written to the rollouts file, never trained on or scored)."""
    from agent.collect import is_replayed_attempt

    return [trajectory for trajectory in trajectories if not is_replayed_attempt(trajectory)]


async def announce_resets(
    env_urls: list[str], task_ids: list[str], group_size: int, ttl_s: float = 600.0, log: Any = print
) -> None:
    """Announce B × G resets to the env servers as `collect_rollouts` will spread them (task i's episodes on
    `env_urls[i % n]`): their containers start now. A server that cannot take the announcement is only logged."""
    per_url: dict[str, dict[str, int]] = {}
    for index, task_id in enumerate(task_ids):
        counts = per_url.setdefault(env_urls[index % len(env_urls)], {})
        counts[task_id] = counts.get(task_id, 0) + group_size

    async def one(url: str, counts: dict[str, int]) -> None:
        async with AsyncEnvClient(url) as client:
            try:
                await client.prefetch(counts, ttl_s=ttl_s)
            except (EnvServerError, httpx.HTTPError) as exc:
                log(f"could not announce the next step's resets to {url}: {exc}")

    await asyncio.gather(*(one(url, counts) for url, counts in per_url.items()))


def success_eval_tasks(task_pool: list[str], config: TrainerConfig) -> list[str]:
    """The success evaluation's tasks: the pool, or a sample of `success_eval_tasks` of it fixed by the seed (in the
    pool's order)."""
    if config.success_eval_tasks is None or config.success_eval_tasks >= len(task_pool):
        return list(task_pool)
    chosen = set(random.Random(config.seed).sample(range(len(task_pool)), config.success_eval_tasks))
    return [task_id for index, task_id in enumerate(task_pool) if index in chosen]


def evaluate_success(
    engine: Any,
    env_urls: list[str],
    task_ids: list[str],
    config: TrainerConfig,
    tokenizer: Any,
    runner: asyncio.Runner,
    log: Any,
) -> dict[str, Any]:
    """`success_eval_episodes` episodes of every task with the evaluation's fixed seeds (EVAL_STEP); appended to
    `eval-rollouts.jsonl`. Returns the metrics row's `success_eval` (the share resolved), its infrastructure
    failures (`success_eval_infra_failures`), its seconds (`success_eval_s`) and each task's share
    (`SUCCESS_EVAL_TASK_PREFIX` + task id)."""
    started = time.perf_counter()
    trajectories = runner.run(
        collect_rollouts(
            engine, env_urls, task_ids, config, tokenizer, EVAL_STEP, group_size=config.success_eval_episodes, log=log
        )
    )
    write_jsonl(config.output_dir / "eval-rollouts.jsonl", trajectories)
    lost_replayed = len(trajectories)
    trajectories = rollouts_for_batch(trajectories)
    lost_replayed -= len(trajectories)
    by_task: dict[str, list[bool]] = {task_id: [] for task_id in task_ids}
    for trajectory in trajectories:
        by_task[trajectory.task_id].append(bool(trajectory.resolved))
    row: dict[str, Any] = {
        "success_eval": sum(map(sum, by_task.values())) / len(trajectories),
        "success_eval_infra_failures": sum(t.infra_failure for t in trajectories),
        "success_eval_lost_replayed": lost_replayed,
        "success_eval_s": time.perf_counter() - started,
        **{SUCCESS_EVAL_TASK_PREFIX + task_id: sum(v) / len(v) for task_id, v in by_task.items()},
    }
    log(
        f"success eval ({len(task_ids)} tasks × {config.success_eval_episodes} episodes, fixed seeds): "
        f"{row['success_eval']:.2f} ({row['success_eval_s']:.0f} s)"
    )
    return row


def selection_accuracy(model: Any, tokenizer: Any, pairs: list[Any], max_context_tokens: int = 1024) -> float:
    """Context-selection accuracy on pairs, each in both orders, scored exactly as the probe scores an hf model
    (trainer.probe_scoring: the option logits at the answer position)."""
    from trainer.probe_scoring import score_hf

    if not pairs:
        return float("nan")
    answers = score_hf(
        model, tokenizer, balanced_presentations(pairs, random.Random(0)), max_context_tokens, batch_size=32
    )
    return sum(answer.correct for answer in answers) / len(answers)


def load_model_and_tokenizer(
    config: TrainerConfig, output_dir: Path, resume_from: Path | None, build: bool = True
) -> tuple[Any, Any]:
    """The policy and its tokenizer: from the checkpoint resumed from, else the configured model (`tiny`: built into
    `<output_dir>/base-model`, or read from there when `build` is False — the other ranks under torchrun)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if resume_from is not None:
        path = resume_from / "model"
    elif config.model == "tiny" and not build:
        path = output_dir / "base-model"
    elif config.model == "tiny":
        from agent.tiny import build_tiny_model

        path = build_tiny_model(
            output_dir / "base-model",
            seed=config.seed,
            tokenizer=config.tiny_tokenizer,
            hidden_size=config.tiny_hidden_size,
            num_layers=config.tiny_layers,
            intermediate_size=2 * config.tiny_hidden_size,
        )
    else:
        path = Path(config.model)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer_path = config.tokenizer or (str(output_dir / "base-model") if config.model == "tiny" else config.model)
    return model, AutoTokenizer.from_pretrained(tokenizer_path)


def agent_config(config: TrainerConfig, seed: int | None = None) -> AgentConfig:
    """The agent loop's settings of this run (rollouts and demonstrations share the prompt and limits)."""
    return AgentConfig(
        max_turns=config.max_turns,
        max_tokens_per_turn=config.max_tokens_per_turn,
        max_context_tokens=config.max_context_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        seed=seed,
        tools=tuple(config.agent_tools) if config.agent_tools is not None else None,
    )


def task_instances(config: TrainerConfig, local: bool) -> list[Any]:
    """The task file's instances (gold patches, test lists): the configured file, or the sample tasks that a local
    env server serves; none for remote servers without a task file."""
    from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks

    path = config.task_file or (SAMPLE_TASKS_PATH if local else None)
    return load_tasks(path) if path else []


def training_pairs(
    config: TrainerConfig, tasks: list[Any], output_dir: Path | None, log: Any = print
) -> tuple[list[Any], list[Any]]:
    """(train pairs, held-out pairs): the pair file's (`file_pairs`) and, with `synthetic_pairs` and tasks, the
    synthetic test-outcome pairs of the task file besides them; written to `output_dir` (when given) as
    `pairs.train.jsonl` and `pairs.heldout.jsonl`, so the run's data can be read back."""
    train, heldout = file_pairs(config, log)
    if config.synthetic_pairs and tasks:
        from trainer.pairs.synthetic import synthetic_pairs

        made_train, made_heldout = synthetic_pairs(tasks, seed=config.seed)
        log(
            f"pairs: {len(made_train)} train / {len(made_heldout)} held-out synthetic test-outcome pairs from "
            f"{len(tasks)} tasks"
        )
        train, heldout = train + made_train, heldout + made_heldout
    if not train and not heldout:
        return train, heldout
    log(f"pairs: {len(train)} train, {len(heldout)} held out in all")
    if output_dir is not None:
        from trainer.pairs import write_pairs

        write_pairs(output_dir / "pairs.train.jsonl", train)
        write_pairs(output_dir / "pairs.heldout.jsonl", heldout)
    return train, heldout


def file_pairs(config: TrainerConfig, log: Any = print) -> tuple[list[Any], list[Any]]:
    """(train, held-out) from the configured files: `pairs_file` whole and `heldout_pairs` when that is given, else
    `pairs_file` split by group (`heldout_fraction` of its groups held out: a mined pair and its mirror never sit on
    both sides, trainer/pairs/split.py)."""
    from trainer.pairs import pair_group, split_by_group

    pairs = load_pairs(config.pairs_file) if config.pairs_file else []
    if config.heldout_pairs:
        train, heldout = pairs, load_pairs(config.heldout_pairs)
    else:
        train, heldout = split_by_group(pairs, config.heldout_fraction, config.seed)
    train_groups, heldout_groups = ({pair_group(pair) for pair in side} for side in (train, heldout))
    if pairs and config.heldout_pairs:
        log(f"pairs: {config.pairs_file}: {len(train)} train ({len(train_groups)} groups): the whole file")
    elif pairs:
        log(
            f"pairs: {config.pairs_file}: {len(train)} train ({len(train_groups)} groups), {len(heldout)} held out "
            f"({len(heldout_groups)} groups, heldout_fraction {config.heldout_fraction:g})"
        )
    if config.heldout_pairs:
        log(f"pairs: {config.heldout_pairs}: {len(heldout)} held out ({len(heldout_groups)} groups)")
    if train_groups & heldout_groups:  # only a separate heldout_pairs file can share groups with the pair file
        log(
            f"pairs: warning: {len(train_groups & heldout_groups)} groups of {config.heldout_pairs} are also in "
            f"{config.pairs_file}: the held-out accuracy is partly on pairs trained on"
        )
    return train, heldout


def warm_start(
    model: Any, tokenizer: Any, env_url: str, tasks: list[Any], config: TrainerConfig, runner: asyncio.Runner, log: Any
) -> tuple[dict[str, float], dict[str, Any]]:
    """Demonstrations through the env server, then `warm_start_steps` SFT steps on them (DESIGN: a random policy
    never earns a reward, so GRPO would have no signal). Returns the metrics and the SFT optimizer's second moments
    (`trainer.warmstart.second_moments`)."""
    from trainer.warmstart import demonstrations, second_moments, sft_steps

    started = time.perf_counter()
    # The run's prompt and limits, with room for the scripted turns (a command, then `finish`).
    settings = agent_config(config)
    settings.max_turns, settings.max_tokens_per_turn = max(2, settings.max_turns), 4096
    demos = runner.run(demonstrations(env_url, tasks, tokenizer, settings, log=log))
    if not demos:
        raise RuntimeError("warm start: no demonstration earned reward 1; check the task file and the env server")
    write_jsonl(config.output_dir / "demonstrations.jsonl", demos, append=False)
    log(
        f"warm start: {len(demos)}/{len(tasks)} tasks demonstrated; {config.warm_start_steps} SFT steps "
        f"at lr {config.warm_start_lr:g}"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.warm_start_lr, weight_decay=0.0)
    losses = sft_steps(
        model,
        demos,
        config.warm_start_steps,
        lr=config.warm_start_lr,
        seed=config.seed,
        chunk_size=config.logprob_chunk_size,
        optimizer=optimizer,
        log=log,
        log_every=max(1, config.warm_start_steps // 10),
    )
    return (
        {
            "warm_start/demonstrations": len(demos),
            "warm_start/first_loss": losses[0] if losses else float("nan"),
            "warm_start/last_loss": losses[-1] if losses else float("nan"),
            "warm_start/seconds": time.perf_counter() - started,
        },
        second_moments(model, optimizer),
    )


def save_warm_start(model: Any, tokenizer: Any, moments: dict[str, Any], folder: Path) -> None:
    """The warm-started policy, its tokenizer and the SFT optimizer's second moments: another run (a λ = 0 control,
    another seed) can start RL here with `model: <folder>` and warm_start_steps: 0."""
    from trainer.warmstart import MOMENTS_WEIGHTS_FILE, SECOND_MOMENTS_FILE, weights_fingerprint

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(moments, folder / SECOND_MOMENTS_FILE)
    (folder / MOMENTS_WEIGHTS_FILE).write_text(json.dumps(weights_fingerprint(model)))


def saved_second_moments(config: TrainerConfig, model: Any, log: Any = print) -> dict[str, Any] | None:
    """The second moments a warm start saved beside the configured model (`save_warm_start`), if any — and only if
    `model` (loaded from that folder) still holds the weights they were taken with: weights saved over the folder
    later (another fine-tune) make them some other model's scale, and they are left out with a message."""
    from trainer.warmstart import MOMENTS_WEIGHTS_FILE, SECOND_MOMENTS_FILE, same_weights

    folder = Path(config.model)
    path = folder / SECOND_MOMENTS_FILE
    if config.model == "tiny" or not path.is_file():
        return None
    fingerprint = folder / MOMENTS_WEIGHTS_FILE
    if not fingerprint.is_file() or not same_weights(json.loads(fingerprint.read_text()), model):
        log(
            f"{path}: not used — the weights in {folder} are not the ones these moments were saved with "
            f"(no {MOMENTS_WEIGHTS_FILE}, or it does not match); RL's AdamW starts fresh"
        )
        return None
    return torch.load(path, weights_only=True)


def make_engine(config: TrainerConfig, model: Any, tokenizer: Any, version: int) -> Any:
    """The sampler: the policy module itself (`hf`), or a vLLM server that reloads the weights after each step."""
    if config.engine == "hf":
        # processed logprobs: the behaviour policy (after temperature / top-k / top-p) that truncated importance
        # sampling compares the trainer's tempered logprobs with.
        engine: Any = HFEngine(
            model, model_name=config.model, eos_token_ids=[tokenizer.eos_token_id], logprobs_mode="processed_logprobs"
        )
    else:
        from agent.engines.vllm import VLLMEngine

        if not config.engine_url:
            raise ValueError("engine: vllm needs engine_url (the server's http://HOST:PORT/v1)")
        engine = VLLMEngine(config.engine_url, reload_method=config.engine_reload_method)
    engine.weights_version = version
    return engine


def keep_rollouts_before(path: Path, step: int) -> None:
    """On resume from the checkpoint after `step` steps: drop the rollouts of the steps that will be redone (sampled
    with weights version ≥ step) and a line half-written by a killed run, so that the record holds each step's
    rollouts once — as the metrics log does with its rows."""
    if path.exists():
        kept = [trajectory for trajectory in read_jsonl(path) if (trajectory.weights_version or 0) < step]
        partial = path.with_name(path.name + ".partial")  # replaced in one rename: a kill now loses nothing
        write_jsonl(partial, kept, append=False)
        partial.replace(path)


def sync_weights(engine: Any, model: Any, config: TrainerConfig, version: int, runner: asyncio.Runner) -> float:
    """Make the sampler use the current weights; returns the seconds it took. `hf` shares the module (nothing to
    move); vLLM reloads them from `weights_dir`, written atomically (a server never reads a half-written file)."""
    started = time.perf_counter()
    if config.engine == "hf":
        engine.weights_version = version
        return 0.0
    import shutil

    target = config.weights_dir or config.output_dir / "weights"
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    runner.run(engine.update_weights(str(target.resolve()), version=version))
    return time.perf_counter() - started


@dataclass
class _RunState:
    """What every step uses (built once by `train`)."""

    config: TrainerConfig
    ctx: DistContext
    model: Any
    tokenizer: Any
    engine: Any
    """The sampler (rank 0 only; None elsewhere)."""
    env_urls: list[str]
    task_pool: list[str]
    eval_tasks: list[str]
    pairs: list[Any]
    heldout: list[Any]
    position: dict[str, int]
    """Data position (epoch, cursor per stream): what a checkpoint needs to draw the same next batches."""
    optimizer: Any
    scheduler: Any
    ca_optimizer: Any
    """L_CA's own AdamW (`ca_updates_per_step` > 0), None when L_CA shares `optimizer`."""
    ca_scheduler: Any
    objective_config: ObjectiveConfig
    ref_model: Any
    runner: asyncio.Runner
    log: Any


def train(config: TrainerConfig, resume: bool = False, log: Any = print) -> dict[str, Any]:
    """Run (or resume) training; returns the first and last metrics rows and the start/end summary.

    Under `torchrun` every rank runs this: rank 0 holds the env server, the sampler, the warm start, the metrics and
    the checkpoints; each step's rollouts are broadcast, and every rank takes its shard of the global batch
    (trainer.distributed)."""
    ctx = init_distributed()
    main = ctx.is_main
    log = log if main else (lambda *_: None)
    output_dir = config.output_dir
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(config.model_dump_json(indent=2))
    checkpoint = latest_checkpoint(output_dir / "checkpoints") if resume else None
    if main or checkpoint is not None:
        model, tokenizer = load_model_and_tokenizer(config, output_dir, checkpoint)
    broadcast_object(None, ctx)  # rank 0 built the tiny model before the others read it
    if not main and checkpoint is None:
        model, tokenizer = load_model_and_tokenizer(config, output_dir, checkpoint, build=False)
    model.train()
    # In the trainer's process group: a kill -9 of the run takes its env server with it.
    local = (
        LocalServer(output_dir, "--max-sessions", "64", name=local_server_name(output_dir), own_process_group=False)
        if main and not config.env_urls
        else None
    )
    env_urls = config.env_urls or ([local.url] if local is not None else [])
    metrics: MetricsLog | None = None
    try:
        with asyncio.Runner() as runner:
            tasks = task_instances(config, not config.env_urls)
            pairs, heldout = training_pairs(config, tasks, output_dir if main else None, log)
            reference_dir = output_dir / "reference-model"
            start_step, position, start_row = 0, {}, {"step": 0}
            moments = None  # the second moments RL's optimizer starts from (config.inherit_warm_start_moments)
            if checkpoint is None:
                if config.warm_start_steps > 0:
                    if not tasks:
                        raise ValueError("warm_start_steps > 0 needs task_file (the tasks' gold patches)")
                    if main:
                        warm_row, moments = warm_start(model, tokenizer, env_urls[0], tasks, config, runner, log)
                        start_row.update(warm_row)
                        save_warm_start(model, tokenizer, moments, output_dir / "warm-start-model")
                elif main and config.inherit_warm_start_moments:
                    moments = saved_second_moments(config, model, log)
                broadcast_parameters(model, ctx)  # every rank starts RL from rank 0's (warm-started) weights
                if config.inherit_warm_start_moments:
                    moments = broadcast_object(moments, ctx)
                if config.grpo.kl_coef > 0 and main:  # the reference is the policy RL starts from (for --resume)
                    model.save_pretrained(reference_dir)
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps
            )
            if checkpoint is None and moments and config.inherit_warm_start_moments:
                from trainer.warmstart import adopt_second_moments

                adopt_second_moments(model, optimizer, moments)
                log(f"RL optimizer: the warm start's second moments ({len(moments)} tensors), first moments zero")
            scheduler = warmup_scheduler(optimizer, config)
            ca_optimizer = ca_scheduler = None
            if separate_ca_updates(config, pairs):
                embeddings = {id(p) for p in token_embeddings(model)}
                ca_params = [p for p in model.parameters() if config.ca_trains_embeddings or id(p) not in embeddings]
                ca_optimizer = torch.optim.AdamW(
                    ca_params, lr=config.ca_weight * config.lr, weight_decay=config.weight_decay, eps=config.adam_eps
                )
                ca_scheduler = warmup_scheduler(ca_optimizer, config)
            if checkpoint is not None:
                start_step, position = load_trainer_state(checkpoint, optimizer, scheduler, ca_optimizer, ca_scheduler)
                log(f"resumed from {checkpoint.name} (step {start_step})")
            if main:
                metrics = MetricsLog(
                    output_dir, resume_step=None if checkpoint is None else start_step, tensorboard=config.tensorboard
                )
                if checkpoint is None:  # a fresh run in a used folder starts its rollout record afresh too
                    (output_dir / "rollouts.jsonl").unlink(missing_ok=True)
                else:
                    keep_rollouts_before(output_dir / "rollouts.jsonl", start_step)
            ref_model = None
            if config.grpo.kl_coef > 0:
                import copy

                from transformers import AutoModelForCausalLM

                broadcast_object(None, ctx)  # rank 0 has written the reference
                ref_model = (
                    (
                        AutoModelForCausalLM.from_pretrained(str(reference_dir), dtype=torch.float32)
                        if reference_dir.exists()
                        else copy.deepcopy(model)
                    )
                    .eval()
                    .requires_grad_(False)
                )
            all_tasks = None
            if main:
                with EnvClient(env_urls[0]) as client:
                    all_tasks = sorted(t.instance_id for t in client.list_tasks().tasks)
            all_tasks = broadcast_object(all_tasks, ctx)
            task_pool = all_tasks if config.tasks == "all" else list(config.tasks)
            eval_tasks = success_eval_tasks(task_pool, config)
            engine = None
            if main:
                engine = make_engine(config, model, tokenizer, start_step)
                if config.engine != "hf":
                    sync_weights(engine, model, config, start_step, runner)
                eval_rollouts = output_dir / "eval-rollouts.jsonl"
                if checkpoint is None:
                    eval_rollouts.unlink(missing_ok=True)
                    if heldout:
                        start_row["heldout_ca_accuracy"] = selection_accuracy(model, tokenizer, heldout)
                    if config.success_eval_episodes > 0:
                        start_row.update(evaluate_success(engine, env_urls, eval_tasks, config, tokenizer, runner, log))
                    metrics.write(start_row)  # type: ignore[union-attr]
                else:  # an evaluation after the checkpoint (the end's, cut short by the kill) is redone
                    keep_rollouts_before(eval_rollouts, start_step + 1)
            state = _RunState(
                config=config,
                ctx=ctx,
                model=model,
                tokenizer=tokenizer,
                engine=engine,
                env_urls=env_urls,
                task_pool=task_pool,
                eval_tasks=eval_tasks,
                pairs=pairs,
                heldout=heldout,
                position=position,
                optimizer=optimizer,
                scheduler=scheduler,
                ca_optimizer=ca_optimizer,
                ca_scheduler=ca_scheduler,
                objective_config=objective_config(config),
                ref_model=ref_model,
                runner=runner,
                log=log,
            )
            for step in range(start_step, config.steps):
                row = _train_step(state, step)
                if main:
                    metrics.write(row)  # type: ignore[union-attr]
                    if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                        save_checkpoint(
                            output_dir / "checkpoints",
                            model,
                            optimizer,
                            scheduler,
                            step + 1,
                            position,
                            ca_optimizer,
                            ca_scheduler,
                        )
            if engine is not None:
                runner.run(engine.close())
    finally:
        if metrics is not None:
            metrics.close()
        if local is not None:
            local.stop()
        destroy_distributed(ctx)
    if not main:
        return {}
    from trainer.plots import plot_metrics

    rows = metrics.rows()  # type: ignore[union-attr]
    plot_metrics(metrics.path, output_dir / "metrics.png")  # type: ignore[union-attr]
    summary = start_end_summary(rows)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"first": rows[0] if rows else {}, "last": rows[-1] if rows else {}, "summary": summary}


def separate_ca_updates(config: TrainerConfig, pairs: list[Any]) -> bool:
    """Whether L_CA takes its own updates with its own AdamW (`ca_updates_per_step` > 0 and L_CA on)."""
    return bool(pairs) and config.ca_weight > 0 and config.ca_updates_per_step > 0


def warmup_scheduler(optimizer: Any, config: TrainerConfig) -> Any:
    """The linear learning-rate warm-up over `warmup_steps` steps, then constant."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )


def objective_config(config: TrainerConfig) -> ObjectiveConfig:
    return ObjectiveConfig(
        grpo=GRPOLossConfig(
            clip_low=config.grpo.clip_low,
            clip_high=config.grpo.clip_high,
            aggregation=config.grpo.aggregation,
            kl_coef=config.grpo.kl_coef,
            kl_clamp=config.grpo.kl_clamp,
            tis_cap=config.grpo.tis_cap,
        ),
        ca_weight=config.ca_weight,
        ca_clip=config.ca_clip,
        ca_clip_mode=config.ca_clip_mode,
        logprob_chunk_size=config.logprob_chunk_size,
        gradient_checkpointing=config.gradient_checkpointing,
        temperature=config.temperature,
    )


def _sampling_logprobs(state: _RunState, batch: Any) -> torch.Tensor:
    """The sampling policy's logprobs of the batch, recomputed by the trainer before the step's first update: the
    denominator of the importance ratio in every later update (a step with more than one: `grpo.updates_per_step`
    passes × `grpo.minibatches`)."""
    from trainer.objective import rollout_logprobs

    on_device = shard_rollouts(batch, list(range(batch.input_ids.shape[0])), state.ctx.device)
    with torch.no_grad():
        return rollout_logprobs(state.model, on_device, state.objective_config).cpu()


def minibatch_indices(batch: Any, count: int) -> list[list[int]]:
    """The batch's rows in `count` mini-batches (fewer when it has fewer rows), balanced by length like the ranks'
    shards so that each update costs about the same."""
    lengths = batch.attention_mask.sum(dim=1).tolist()
    parts = min(count, len(lengths))
    return [shard_indices(lengths, part, parts, "balanced") for part in range(parts)]


def _ca_updates(state: _RunState, step: int, first_update: int) -> list[StepOutput]:
    """L_CA's own updates of a step (`ca_updates_per_step`): its AdamW at λ·lr, each update on its own pair batch,
    the token embeddings and output head left as they are unless `ca_trains_embeddings`."""
    config = state.config
    ca_config = dataclasses.replace(state.objective_config, ca_weight=1.0)  # λ is in L_CA's learning rate
    outputs = []
    with frozen(token_embeddings(state.model) if not config.ca_trains_embeddings else []):
        for update in range(config.ca_updates_per_step):
            outputs.append(
                distributed_step(
                    state.model,
                    state.ca_optimizer,
                    None,
                    _pair_batch(state, step, first_update + update),
                    ca_config,
                    state.ctx,
                    max_grad_norm=config.max_grad_norm,
                )
            )
    state.ca_scheduler.step()
    return outputs


def token_embeddings(model: Any) -> list[Any]:
    """The token embedding matrix and the output head (one tensor when tied)."""
    return list(
        {id(p): p for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values()
    )


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


def _pair_batch(state: _RunState, step: int, update: int = 0) -> dict[str, Any] | None:
    """This update's pairs, each in both orders (collated); None without pairs or with λ = 0."""
    config = state.config
    if not state.pairs or config.ca_weight <= 0:
        return None
    chosen = take(state.pairs, config.pairs_per_step, config.seed + 1, state.position, "pair")
    presentations = [
        present(p, state.tokenizer, first, max_context_tokens=1024)
        for p, first in balanced_presentations(chosen, random.Random(step if not update else f"{step}:{update}"))
    ]
    batch = collate_presentations(presentations, state.tokenizer.pad_token_id)
    batch["positive_is_first"] = torch.tensor([p.positive_is_first for p in presentations])
    return batch


def _train_step(state: _RunState, step: int) -> dict[str, Any]:
    """One step: rollouts (rank 0, broadcast), a pair batch, one optimizer update over all ranks' shards, the new
    weights to the sampler; returns the metrics row (complete on rank 0)."""
    config, main = state.config, state.ctx.is_main
    started = time.perf_counter()
    task_ids = take(state.task_pool, config.tasks_per_step, config.seed, state.position, "task")
    trajectories = None
    if main:
        trajectories = state.runner.run(
            collect_rollouts(state.engine, state.env_urls, task_ids, config, state.tokenizer, step, log=state.log)
        )
        write_jsonl(config.output_dir / "rollouts.jsonl", trajectories)
        if config.announce_next_step and step + 1 < config.steps:
            # A peek (on a copy of the position): the next step takes exactly these.
            upcoming = take(state.task_pool, config.tasks_per_step, config.seed, dict(state.position), "task")
            state.runner.run(announce_resets(state.env_urls, upcoming, config.group_size))
    trajectories = broadcast_object(trajectories, state.ctx)
    # Attempts lost with their env server are in rollouts.jsonl; the batch, its groups and the metrics take only the
    # rollouts (their replays), so a group keeps G columns.
    lost_replayed = len(trajectories)
    trajectories = rollouts_for_batch(trajectories)
    lost_replayed -= len(trajectories)
    rollout_s = time.perf_counter() - started
    batch = build_batch(
        trajectories,
        state.tokenizer.pad_token_id,
        mode=config.grpo.advantage,
        scale_by_std=config.grpo.scale_by_std,
        mask_truncated=config.grpo.mask_truncated,
        drop_zero_variance=config.grpo.drop_zero_variance,
        negative_scale=config.grpo.negative_advantage_scale,
        malformed_penalty=config.grpo.malformed_call_penalty,
    )
    # All-zero advantages with no KL term give a zero GRPO gradient: skip its forward and backward.
    has_tokens = bool(batch.loss_mask.sum() > 0) and (bool((batch.advantages != 0).any()) or config.grpo.kl_coef > 0)
    update_started = time.perf_counter()
    minibatches = minibatch_indices(batch, config.grpo.minibatches)
    updates = config.grpo.updates_per_step * len(minibatches)
    old_logprobs = _sampling_logprobs(state, batch) if has_tokens and updates > 1 else None
    separate = state.ca_optimizer is not None
    outputs = []
    for update in range(updates):
        part, part_old = shard_rollouts_with_old(batch, old_logprobs, minibatches[update % len(minibatches)])
        pair_batch = None if separate else _pair_batch(state, step, update)
        outputs.append(
            distributed_step(
                state.model,
                state.optimizer,
                part if has_tokens else None,
                pair_batch,
                state.objective_config,
                state.ctx,
                ref_model=state.ref_model,
                max_grad_norm=config.max_grad_norm,
                old_logprobs=part_old,
            )
        )
    ca_outputs = _ca_updates(state, step, first_update=updates) if separate else []
    out = merge_step_outputs(outputs, ca_outputs, config.ca_weight)
    state.scheduler.step()
    update_s = time.perf_counter() - update_started
    sync_s = sync_weights(state.engine, state.model, config, step + 1, state.runner) if main else 0.0
    rewards = [t.reward for t in trajectories if t.reward is not None]
    row = {
        "step": step + 1,
        "reward": statistics.fmean(rewards) if rewards else float("nan"),
        "success_rate": sum(bool(t.resolved) for t in trajectories) / len(trajectories),
        "infra_failures": sum(t.infra_failure for t in trajectories),
        "lost_replayed": lost_replayed,
        "truncated": sum(t.truncation is not None for t in trajectories),
        "malformed_episodes": sum(bool(t.malformed_tool_calls) for t in trajectories),
        "malformed_successes": sum(bool(t.malformed_tool_calls and t.resolved) for t in trajectories),
        "weights_version": step + 1,
        "grad_norm": out.grad_norm,
        "lr": state.scheduler.get_last_lr()[0],
        "rollout_s": rollout_s,
        "update_s": update_s,
        "sync_s": sync_s,
        "tasks": task_ids,
        "world_size": state.ctx.world_size,
        **{f"batch/{k}": v for k, v in batch.stats.items()},
        **out.metrics,
    }
    if state.heldout and main and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
        row["heldout_ca_accuracy"] = selection_accuracy(state.model, state.tokenizer, state.heldout)
    row["step_s"] = time.perf_counter() - started  # the step itself: the end evaluation has its own success_eval_s
    if main and config.success_eval_episodes > 0 and step + 1 == config.steps:
        row.update(
            evaluate_success(
                state.engine, state.env_urls, state.eval_tasks, config, state.tokenizer, state.runner, state.log
            )
        )
    state.log(
        f"step {step + 1}/{config.steps}: reward {row['reward']:.3f} success {row['success_rate']:.2f} "
        f"loss {row['loss']:.4f}"
        + (f" heldout-acc {row['heldout_ca_accuracy']:.2f}" if "heldout_ca_accuracy" in row else "")
        + f" ({row['step_s']:.1f} s)"
    )
    return row


def config_from_args(config_file: Path | None, overrides: list[str]) -> TrainerConfig:
    """`TrainerConfig.from_yaml(config_file, overrides)`, its errors as a message for the command line."""
    from pydantic import ValidationError

    try:
        return TrainerConfig.from_yaml(config_file, overrides)
    except ValidationError as exc:
        raise SystemExit(f"invalid configuration:\n{exc}") from None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file with TrainerConfig fields (default: embedded).")
    parser.add_argument("--resume", action="store_true", help="Continue from the output folder's last checkpoint.")
    parser.add_argument("--steps", type=int, help="Override the number of steps.")
    parser.add_argument("--output-dir", type=Path, help="Override the output folder.")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one config field (repeatable; dotted keys for sections), e.g. the λ = 0 "
        "control: --set ca_weight=0 --output-dir runs/lambda0.",
    )
    args = parser.parse_args(argv)
    import signal
    import sys

    # `kill PID` (SIGTERM) unwinds like Ctrl-C: the local env server and its containers are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = config_from_args(args.config, args.overrides)
    if args.steps is not None:
        config.steps = args.steps
    if args.output_dir is not None:
        config.output_dir = args.output_dir
    result = train(config, resume=args.resume, log=lambda line: print(line, flush=True))
    if result:  # rank 0 (the other ranks of a torchrun return nothing to report)
        print_summary(result["summary"], config.output_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
