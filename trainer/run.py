"""`python -m trainer.run [--config FILE] [--resume]`: GRPO + λ·L_CA against env servers.

Each step: B tasks × G rollouts through the agent loop (the sampler is the policy itself for `hf`, or a vLLM server
that reloads the new weights after every step), group-relative advantages, pair batches presented in both orders,
optimizer updates on L = L_GRPO + λ·L_CA (or, with `ca.separate_updates`, GRPO's updates and then L_CA's own, each
loss with its own AdamW); then the held-out context-selection accuracy. Before the first step and after the last, a
success evaluation plays every task with the same fixed seeds (`eval-rollouts.jsonl`). Metrics go to `metrics.jsonl`
(and TensorBoard when installed) and `metrics.png`; checkpoints let `--resume` draw the same next batches as an
uninterrupted run.

With no config, the embedded default runs on a CPU machine: the tiny model, a local env server on the sample tasks.

The code, in the order a run meets it: trainer/config.py (the settings), trainer/setup.py (policy, warm start,
optimizers, reference, resume), trainer/data.py (task and pair streams), trainer/rollout.py (sampler, env servers,
success evaluation), trainer/step.py (one step and its optimizer updates), trainer/objective.py (the loss),
trainer/distributed.py (torchrun), trainer/checkpoint.py and trainer/metrics.py (records).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from envserver.local import LocalServer
from trainer.checkpoint import latest_checkpoint, save_checkpoint
from trainer.config import TrainerConfig
from trainer.data import success_eval_tasks
from trainer.distributed import destroy_distributed, init_distributed
from trainer.metrics import MetricsLog
from trainer.rollout import evaluate_success, rollouts_for_batch
from trainer.setup import Run, keep_rollouts_before, local_server_name, start_run
from trainer.step import selection_accuracy, train_step
from trainer.summary import print_summary, start_end_summary

__all__ = ["config_from_args", "main", "rollouts_for_batch", "train"]  # rollouts_for_batch: tests/integration


def open_records(run: Run) -> MetricsLog:
    """Rank 0's metrics log, and the rollout records a resumed run continues (the steps and the evaluation after its
    checkpoint are redone, so their records are dropped) or a fresh run starts afresh; a fresh run's step-0 row (the
    warm start, the held-out accuracy, the first success evaluation) is written."""
    config, output_dir, resumed = run.config, run.config.output_dir, run.start_row is None
    metrics = MetricsLog(output_dir, resume_step=run.start_step if resumed else None, tensorboard=config.tensorboard)
    if resumed:
        keep_rollouts_before(output_dir / "rollouts.jsonl", run.start_step)
        keep_rollouts_before(output_dir / "eval-rollouts.jsonl", run.start_step + 1)
        return metrics
    (output_dir / "rollouts.jsonl").unlink(missing_ok=True)
    (output_dir / "eval-rollouts.jsonl").unlink(missing_ok=True)
    row = dict(run.start_row or {})
    if run.heldout:
        row["heldout_ca_accuracy"] = selection_accuracy(run.model, run.tokenizer, run.heldout)
    if config.success_eval_episodes > 0:
        eval_tasks = success_eval_tasks(run.task_pool, config)
        row.update(evaluate_success(run.engine, run.env_urls, eval_tasks, config, run.tokenizer, run.runner, run.log))
    metrics.write(row)
    return metrics


def run_steps(run: Run, metrics: MetricsLog | None) -> None:
    """The steps from the run's start to `steps`: each step's row to the metrics log, a checkpoint every
    `checkpoint_every` steps and after the last, and the success evaluation after the last (rank 0)."""
    config = run.config
    for step in range(run.start_step, config.steps):
        row = train_step(run, step)
        last = step + 1 == config.steps
        if metrics is None:
            continue
        if last and config.success_eval_episodes > 0:
            eval_tasks = success_eval_tasks(run.task_pool, config)
            row.update(
                evaluate_success(run.engine, run.env_urls, eval_tasks, config, run.tokenizer, run.runner, run.log)
            )
        metrics.write(row)
        if (step + 1) % config.checkpoint_every == 0 or last:
            save_checkpoint(
                config.output_dir / "checkpoints",
                run.model,
                run.optimizer,
                run.scheduler,
                step + 1,
                run.position,
                run.ca_optimizer,
                run.ca_scheduler,
            )


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
            run = start_run(config, ctx, checkpoint, env_urls, runner, log)
            metrics = open_records(run) if main else None
            run_steps(run, metrics)
            if run.engine is not None:
                runner.run(run.engine.close())
    finally:
        if metrics is not None:
            metrics.close()
        if local is not None:
            local.stop()
        destroy_distributed(ctx)
    if metrics is None:
        return {}
    from trainer.plots import plot_metrics

    rows = metrics.rows()
    plot_metrics(metrics.path, output_dir / "metrics.png")
    summary = start_end_summary(rows)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"first": rows[0] if rows else {}, "last": rows[-1] if rows else {}, "summary": summary}


def config_from_args(config_file: Path | None, overrides: list[str]) -> TrainerConfig:
    """`TrainerConfig.from_yaml(config_file, overrides)`, its errors as a message for the command line."""
    from pydantic import ValidationError

    from envserver.settings import validation_problems

    try:
        return TrainerConfig.from_yaml(config_file, overrides)
    except ValidationError as exc:
        raise SystemExit(f"invalid configuration: {validation_problems(exc)}") from None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with TrainerConfig fields (default: embedded).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the output folder's last checkpoint.")
    ] = False,
    steps: Annotated[int | None, typer.Option(help="Override the number of steps.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Override the output folder.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one config field (repeatable; dotted keys for sections), e.g. the λ = 0 "
            "control: --set ca.weight=0 --output-dir runs/lambda0.",
        ),
    ] = None,
) -> None:
    """GRPO + λ·L_CA against env servers (see the module docstring)."""
    import signal
    import sys

    # `kill PID` (SIGTERM) unwinds like Ctrl-C: the local env server and its containers are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = config_from_args(config, list(set_ or []))
    if steps is not None:
        settings.steps = steps
    if output_dir is not None:
        settings.output_dir = output_dir
    result = train(settings, resume=resume, log=lambda line: print(line, flush=True))
    if result:  # rank 0 (the other ranks of a torchrun return nothing to report)
        print_summary(result["summary"], settings.output_dir)


def main(argv: list[str] | None = None) -> int:
    """The command line, for callers in Python: exit codes as `python -m trainer.run` gives them."""
    try:
        app(args=argv, standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    return 0


if __name__ == "__main__":
    app()
