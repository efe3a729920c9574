"""Setting a run up: the policy and its tokenizer (built, loaded, or resumed from a checkpoint), the warm start, the
optimizers (GRPO's AdamW and L_CA's own), the frozen reference, the records a resumed run continues, and the
sampler. `start_run` builds the `Run` that every step uses."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agent.trajectory import read_jsonl, write_jsonl
from trainer.checkpoint import load_trainer_state
from trainer.config import TrainerConfig
from trainer.data import task_instances, training_pairs
from trainer.distributed import DistContext, broadcast_object, broadcast_parameters
from trainer.rollout import make_engine, served_tasks, sync_weights


@dataclass
class Run:
    """What every step uses (built once by `start_run`)."""

    config: TrainerConfig
    ctx: DistContext
    model: Any
    tokenizer: Any
    engine: Any
    """The sampler (rank 0 only; None elsewhere)."""
    env_urls: list[str]
    task_pool: list[str]
    pairs: list[Any]
    heldout: list[Any]
    position: dict[str, int]
    """Data position (epoch, cursor per stream): what a checkpoint needs to draw the same next batches."""
    optimizer: Any
    scheduler: Any
    ca_optimizer: Any
    """L_CA's own AdamW (`ca.separate_updates` > 0), None when L_CA shares `optimizer`."""
    ca_scheduler: Any
    ref_model: Any
    """The frozen reference of the KL term (None with `grpo.kl_coef` 0)."""
    runner: asyncio.Runner
    log: Any
    start_step: int = 0
    """Steps already taken (a resumed run's checkpoint)."""
    start_row: dict[str, Any] | None = None
    """The step-0 metrics row so far (the warm start's); None on resume."""
    homes: list[str] | None = None
    """Where the next step's tasks were announced (`announce_resets`): its collection sends them there."""


def local_server_name(output_dir: Path) -> str:
    """Stable per output folder: after a kill -9 of the trainer, the resumed run's env server removes the containers
    its predecessor left."""
    import hashlib

    return "trainer-" + hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:12]


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


def load_policy(config: TrainerConfig, ctx: DistContext, checkpoint: Path | None) -> tuple[Any, Any]:
    """The policy in train mode and its tokenizer, on every rank (rank 0 builds the tiny model, the others read it)."""
    main = ctx.is_main
    if main or checkpoint is not None:
        model, tokenizer = load_model_and_tokenizer(config, config.output_dir, checkpoint)
    broadcast_object(None, ctx)  # rank 0 built the tiny model before the others read it
    if not main and checkpoint is None:
        model, tokenizer = load_model_and_tokenizer(config, config.output_dir, checkpoint, build=False)
    return model.train(), tokenizer


def warm_start(
    model: Any, tokenizer: Any, env_url: str, tasks: list[Any], config: TrainerConfig, runner: asyncio.Runner, log: Any
) -> tuple[dict[str, float], dict[str, Any]]:
    """Demonstrations through the env server, then `warm_start_steps` SFT steps on them (DESIGN: a random policy
    never earns a reward, so GRPO would have no signal). Returns the metrics and the SFT optimizer's second moments
    (`trainer.warmstart.second_moments`)."""
    from trainer.warmstart import demonstrations, second_moments, sft_steps

    started = time.perf_counter()
    # The run's prompt and limits, with room for the scripted turns (a command, then `finish`).
    settings = config.agent.model_copy(
        update={"max_turns": max(2, config.agent.max_turns), "max_tokens_per_turn": 4096}
    )
    demos = runner.run(demonstrations(env_url, tasks, tokenizer, settings, log=log, token=config.env_server_token()))
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


def start_policy(
    config: TrainerConfig, ctx: DistContext, model: Any, tokenizer: Any, tasks: list[Any], env_urls: list[str], run: Any
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A fresh run's policy on every rank: rank 0's, warm-started when `warm_start_steps` > 0 (then saved as
    `warm-start-model/`), and saved as the KL reference. Returns the step-0 row so far and the second moments RL's
    AdamW starts from (`inherit_warm_start_moments`; else None). `run`: (runner, log)."""
    runner, log = run
    row: dict[str, Any] = {"step": 0}
    moments = None
    if config.warm_start_steps > 0:
        if not tasks:
            raise ValueError("warm_start_steps > 0 needs task_file (the tasks' gold patches)")
        if ctx.is_main:
            warm_row, moments = warm_start(model, tokenizer, env_urls[0], tasks, config, runner, log)
            row.update(warm_row)
            save_warm_start(model, tokenizer, moments, config.output_dir / "warm-start-model")
    elif ctx.is_main and config.inherit_warm_start_moments:
        moments = saved_second_moments(config, model, log)
    broadcast_parameters(model, ctx)  # every rank starts RL from rank 0's (warm-started) weights
    if config.inherit_warm_start_moments:
        moments = broadcast_object(moments, ctx)
    if config.grpo.kl_coef > 0 and ctx.is_main:  # the reference is the policy RL starts from (for --resume)
        model.save_pretrained(config.output_dir / "reference-model")
    return row, moments if config.inherit_warm_start_moments else None


def warmup_scheduler(optimizer: Any, config: TrainerConfig) -> Any:
    """The linear learning-rate warm-up over `warmup_steps` steps, then constant."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )


def token_embeddings(model: Any) -> list[Any]:
    """The token embedding matrix and the output head (one tensor when tied)."""
    return list(
        {id(p): p for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values()
    )


def separate_ca_updates(config: TrainerConfig, pairs: list[Any]) -> bool:
    """Whether L_CA takes its own updates with its own AdamW (`ca.separate_updates` > 0 and L_CA on)."""
    return bool(pairs) and config.ca.weight > 0 and config.ca.separate_updates > 0


def make_optimizers(
    config: TrainerConfig, model: Any, pairs: list[Any], moments: dict[str, Any] | None, log: Any
) -> tuple[Any, Any, Any, Any]:
    """(optimizer, scheduler, ca_optimizer, ca_scheduler): GRPO's AdamW on every parameter (from the warm start's
    second moments when given), and L_CA's own at λ·lr on the decoder layers (and the embeddings with
    `ca.trains_embeddings`) when it takes separate updates (else None, None)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps
    )
    if moments:
        from trainer.warmstart import adopt_second_moments

        adopt_second_moments(model, optimizer, moments)
        log(f"RL optimizer: the warm start's second moments ({len(moments)} tensors), first moments zero")
    ca_optimizer = ca_scheduler = None
    if separate_ca_updates(config, pairs):
        embeddings = {id(p) for p in token_embeddings(model)}
        ca_params = [p for p in model.parameters() if config.ca.trains_embeddings or id(p) not in embeddings]
        ca_optimizer = torch.optim.AdamW(
            ca_params, lr=config.ca.weight * config.lr, weight_decay=config.weight_decay, eps=config.adam_eps
        )
        ca_scheduler = warmup_scheduler(ca_optimizer, config)
    return optimizer, warmup_scheduler(optimizer, config), ca_optimizer, ca_scheduler


def load_reference(config: TrainerConfig, model: Any, ctx: DistContext) -> Any:
    """The frozen reference of the KL term (None with `grpo.kl_coef` 0): the policy RL started from, as `start_policy`
    saved it (a resumed run reads it back)."""
    if config.grpo.kl_coef <= 0:
        return None
    from transformers import AutoModelForCausalLM

    broadcast_object(None, ctx)  # rank 0 has written the reference
    reference_dir = config.output_dir / "reference-model"
    reference = (
        AutoModelForCausalLM.from_pretrained(str(reference_dir), dtype=torch.float32)
        if reference_dir.exists()
        else copy.deepcopy(model)
    )
    return reference.eval().requires_grad_(False)


def keep_rollouts_before(path: Path, step: int) -> None:
    """On resume from the checkpoint after `step` steps: drop the rollouts of the steps that will be redone (sampled
    with weights version ≥ step) and a line half-written by a killed run, so that the record holds each step's
    rollouts once — as the metrics log does with its rows."""
    if path.exists():
        kept = [trajectory for trajectory in read_jsonl(path) if (trajectory.weights_version or 0) < step]
        partial = path.with_name(path.name + ".partial")  # replaced in one rename: a kill now loses nothing
        write_jsonl(partial, kept, append=False)
        partial.replace(path)


def start_run(
    config: TrainerConfig,
    ctx: DistContext,
    checkpoint: Path | None,
    env_urls: list[str],
    runner: asyncio.Runner,
    log: Any,
) -> Run:
    """Everything a run's steps use, on every rank: the policy (warm-started, or the checkpoint's), the data, the
    optimizers (restored from the checkpoint), the reference, the task pool and (rank 0) the sampler."""
    model, tokenizer = load_policy(config, ctx, checkpoint)
    tasks = task_instances(config, not config.env_urls)
    pairs, heldout = training_pairs(config, tasks, config.output_dir if ctx.is_main else None, log)
    start_row, moments, start_step = None, None, 0
    position: dict[str, int] = {}
    if checkpoint is None:
        start_row, moments = start_policy(config, ctx, model, tokenizer, tasks, env_urls, (runner, log))
    optimizer, scheduler, ca_optimizer, ca_scheduler = make_optimizers(config, model, pairs, moments, log)
    if checkpoint is not None:
        start_step, position = load_trainer_state(checkpoint, optimizer, scheduler, ca_optimizer, ca_scheduler)
        log(f"resumed from {checkpoint.name} (step {start_step})")
    ref_model = load_reference(config, model, ctx)
    served = broadcast_object(served_tasks(env_urls[0], config.env_server_token()) if ctx.is_main else None, ctx)
    engine = None
    if ctx.is_main:
        engine = make_engine(config, model, tokenizer, start_step)
        if config.engine != "hf":
            sync_weights(engine, model, config, start_step, runner)
    return Run(
        config=config,
        ctx=ctx,
        model=model,
        tokenizer=tokenizer,
        engine=engine,
        env_urls=env_urls,
        task_pool=served if config.tasks == "all" else list(config.tasks),
        pairs=pairs,
        heldout=heldout,
        position=position,
        optimizer=optimizer,
        scheduler=scheduler,
        ca_optimizer=ca_optimizer,
        ca_scheduler=ca_scheduler,
        ref_model=ref_model,
        runner=runner,
        log=log,
        start_step=start_step,
        start_row=start_row,
    )
