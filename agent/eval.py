"""`python -m agent.eval`: resolve rate on a task set through the env server — pass@1 with its spread over the k
rollouts, and pass@k (the unbiased estimator of Chen et al. 2021) — the SWE-bench-style evaluation.

Episodes are collected exactly as `agent.collect` does (same file format, resumable); infra failures are left out
of the denominators and reported.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from math import comb
from pathlib import Path
from typing import Annotated

import typer

from agent.collect import run_cli
from agent.loop import AgentConfig
from agent.trajectory import Trajectory, read_jsonl


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (of n, c correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate(records: list[Trajectory], k: int) -> dict[str, float]:
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for record in records:
        by_task[record.task_id].append(record)
    graded = {task: [r for r in runs if r.reward is not None] for task, runs in by_task.items()}
    tasks = [task for task, runs in graded.items() if runs]
    if not tasks:
        return {"tasks": 0, "pass@1": 0.0, "pass@1_std": 0.0, f"pass@{k}": 0.0, "infra_failures": len(records)}
    pass1 = statistics.fmean(statistics.fmean(r.reward or 0.0 for r in graded[t]) for t in tasks)
    # Spread: pass@1 of each rollout index taken across tasks (one "run" per index), then their std.
    per_run = []
    for index in range(k):
        rewards = [r.reward for t in tasks for r in graded[t] if r.group == index and r.reward is not None]
        if rewards:
            per_run.append(statistics.fmean(rewards))
    passk = statistics.fmean(
        pass_at_k(len(graded[t]), sum(r.reward == 1.0 for r in graded[t]), min(k, len(graded[t]))) for t in tasks
    )
    return {
        "tasks": len(tasks),
        "pass@1": pass1,
        "pass@1_std": statistics.stdev(per_run) if len(per_run) > 1 else 0.0,
        f"pass@{k}": passk,
        "infra_failures": sum(r.infra_failure for r in records),
    }


app = typer.Typer(add_completion=False)


@app.command()
def main(
    *,
    env_url: Annotated[list[str], typer.Option("--env-url", help="Env server URL (repeat for several).")],
    engine: Annotated[str, typer.Option(help="Engine: vllm, hf or openai.")] = "vllm",
    engine_url: Annotated[str | None, typer.Option(help="Engine endpoint.")] = None,
    model: Annotated[str, typer.Option(help="Model name (hf: local directory).")],
    tokenizer: Annotated[Path | None, typer.Option(help="Tokenizer directory.")] = None,
    tasks: Annotated[str, typer.Option(help="`all`, a task/ids file, or comma-separated ids.")] = "all",
    k: Annotated[int, typer.Option(help="Rollouts per task; reports pass@1 (mean ± spread) and pass@k.")] = 1,
    concurrency: Annotated[int, typer.Option(help="Episodes in flight.")] = 32,
    out: Annotated[Path, typer.Option(help="Trajectory JSONL (resumable).")],
    max_turns: Annotated[int, typer.Option(help="Assistant turns per episode.")] = 30,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy for k=1).")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Base seed.")] = 0,
    env_token: Annotated[
        str | None, typer.Option(envvar="ENVSERVER_AUTH_TOKEN", help="Env server bearer token.")
    ] = None,
) -> None:
    """Evaluate a model's resolve rate."""
    summary = run_cli(
        env_url,
        engine,
        engine_url,
        model,
        tokenizer,
        tasks,
        k,
        concurrency,
        out,
        AgentConfig(max_turns=max_turns, temperature=temperature, seed=seed),
        env_token,
    )
    for line in summary.lines():
        typer.echo(line)
    result = evaluate(list(read_jsonl(out)), k)
    typer.echo(
        f"pass@1 = {result['pass@1']:.3f} ± {result['pass@1_std']:.3f} over {result['tasks']} tasks; "
        f"pass@{k} = {result[f'pass@{k}']:.3f}; infra failures: {result['infra_failures']}"
    )


if __name__ == "__main__":
    app()
