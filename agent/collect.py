"""`python -m agent.collect`: G rollouts per task against one or more env servers, written as trajectory JSONL.

Resumable: episodes already in the output file (by `episode_id`) are skipped on a rerun; an interrupted writer's
half line is ignored. Sessions are spread over the env servers by `envserver.fleet.Fleet`: the live server with the most
free capacity first; a server that stops answering leaves the rotation until its /healthz answers again, and a reset
it fails is retried on another. With no server live, collection waits `--patience` seconds, then stops with an error
naming each server and its last failure. A server at its session cap answers 429 and the client backs off. An episode
lost with its server (a kill mid-episode) is written as an infra failure marked `replayed` under its own id
(`task/group@lost0`) and, unless `--no-replay-lost`, played again from its reset with the same seed on a live server
(at most `FleetConfig.lost_replays` times), so every task still gets its G rollouts. Ends with a summary: resolve
rate, turns, tokens, errors, each env server's episodes, and where the time went (engine, env server, agent).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.engines.base import ChatEngine, Engine
from agent.loop import AgentConfig, run_episode
from agent.trajectory import Trajectory, read_jsonl, write_jsonl
from envserver.fleet import Fleet, FleetConfig, FleetUnavailable, status_line, summary_lines


@dataclass
class Summary:
    episodes: int = 0
    skipped: int = 0
    resolved: int = 0
    graded: int = 0
    infra_failures: int = 0
    lost_replayed: int = 0
    """Attempts lost with their env server and then played again (written, marked `replayed`, not counted above)."""
    errors: int = 0
    truncated: dict[str, int] = field(default_factory=dict)
    malformed_tool_calls: int = 0
    turns: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    engine_s: float = 0.0
    env_s: float = 0.0
    agent_s: float = 0.0
    wall_s: float = 0.0
    env_servers: list[str] = field(default_factory=list)
    """The fleet's lines at the end: live or dead (and why), episodes served and failed per env server."""

    def add(self, trajectory: Trajectory) -> None:
        self.episodes += 1
        self.resolved += bool(trajectory.resolved)
        self.graded += trajectory.reward is not None
        self.infra_failures += trajectory.infra_failure
        self.errors += trajectory.error is not None
        if trajectory.truncation:
            self.truncated[trajectory.truncation] = self.truncated.get(trajectory.truncation, 0) + 1
        self.malformed_tool_calls += trajectory.malformed_tool_calls
        self.turns.append(trajectory.num_turns)
        self.tokens.append(sum(len(seq.token_ids) for seq in trajectory.sequences[-1:]))
        self.engine_s += trajectory.timings.engine_s
        self.env_s += trajectory.timings.env_s
        self.agent_s += trajectory.timings.agent_s

    def lines(self) -> list[str]:
        busy = self.engine_s + self.env_s + self.agent_s or 1.0
        mean = lambda xs: statistics.fmean(xs) if xs else 0.0
        return [
            f"episodes: {self.episodes} new, {self.skipped} already done; wall {self.wall_s:.1f} s "
            f"({60 * self.episodes / max(self.wall_s, 1e-9):.1f} episodes/min)",
            f"resolve rate: {self.resolved}/{self.graded} graded "
            f"({100 * self.resolved / max(self.graded, 1):.1f}%); infra failures: {self.infra_failures}; "
            f"lost with their env server and replayed: {self.lost_replayed}; agent errors: {self.errors}",
            f"turns: mean {mean(self.turns):.1f}, max {max(self.turns, default=0)}; tokens per episode: mean "
            f"{mean(self.tokens):.0f}; malformed tool calls: {self.malformed_tool_calls}; truncated: "
            f"{self.truncated or 'none'}",
            f"time: engine {100 * self.engine_s / busy:.1f}%, env server {100 * self.env_s / busy:.1f}%, "
            f"agent {100 * self.agent_s / busy:.1f}%",
            *self.env_servers,
        ]


def repair_jsonl(out: Path) -> None:
    """Drop a half-written last line (a collection killed mid-write) so appends start on a fresh line."""
    if not out.exists():
        return
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(out, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def done_episode_ids(out: Path) -> set[str]:
    return {record.episode_id for record in read_jsonl(out)} if out.exists() else set()


LOST_MARK = "@lost"
"""Between an episode's id and the attempt number in the id of an attempt lost with its env server and replayed."""


def is_replayed_attempt(trajectory: Trajectory) -> bool:
    """An attempt lost with its env server and played again: kept in the file, never its group's rollout."""
    return bool((trajectory.model_extra or {}).get("replayed"))


def mark_lost_attempt(trajectory: Trajectory, attempt: int) -> None:
    """Give a lost attempt its own id, so a resumed collection does not take it for the episode's rollout."""
    episode_id = trajectory.episode_id
    trajectory.episode_id = f"{episode_id}{LOST_MARK}{attempt}"
    _set_extra(trajectory, attempt=attempt, replayed=True)


def mark_replay(trajectory: Trajectory, attempt: int) -> None:
    """Name the lost attempt a replay stands for (`attempt` > 0)."""
    _set_extra(trajectory, attempt=attempt, replay_of=f"{trajectory.episode_id}{LOST_MARK}{attempt - 1}")


def _set_extra(trajectory: Trajectory, **values: Any) -> None:
    """Set keys a Trajectory has no field for (it allows extra keys)."""
    for name, value in values.items():
        setattr(trajectory, name, value)


def episode_player(
    engine: Engine | ChatEngine, task_id: str, config: AgentConfig, tokenizer: Any, group: int
) -> Callable[[Any], Awaitable[Trajectory]]:
    """What `Fleet.run` plays: one episode on the env it is handed, marked as a replay when it is one (the same
    config, so the same seed, as the attempt it replaces)."""

    async def play(env: Any) -> Trajectory:
        trajectory = await run_episode(engine, env, task_id, config, tokenizer=tokenizer, group=group)
        if env.attempt > 0:
            mark_replay(trajectory, env.attempt)
        return trajectory

    return play


def lost_attempts(out: Path) -> dict[str, int]:
    """Per episode id, its lost attempts already in `out`: a resumed collection numbers its next attempt after them
    and counts them against `lost_replays`, so it neither replays an episode twice nor past the bound."""
    counts: dict[str, int] = {}
    for record in read_jsonl(out) if out.exists() else ():
        if is_replayed_attempt(record):
            base = record.episode_id.rsplit(LOST_MARK, 1)[0]
            counts[base] = counts.get(base, 0) + 1
    return counts


async def collect(
    engine: Engine | ChatEngine,
    env_urls: Sequence[str],
    task_ids: Sequence[str],
    group_size: int,
    out: Path,
    config: AgentConfig,
    tokenizer: Any = None,
    concurrency: int = 32,
    token: str | None = None,
    on_episode: Callable[[Trajectory], None] | None = None,
    fleet: Fleet | None = None,
    fleet_config: FleetConfig | None = None,
    replay_lost: bool = True,
) -> Summary:
    """Run every (task, group) episode not yet in `out`, `concurrency` at a time, appending each as it ends.

    Episodes are routed by `fleet` (started and closed by the caller), else by a fleet of `env_urls` made here.
    Raises `envserver.fleet.FleetUnavailable` when no env server is live for the fleet's `patience_s`; the episodes
    finished until then are in `out`, and a rerun resumes after them. `replay_lost`: an episode lost with its env
    server is written (marked `replayed`) and played again, at most the fleet's `lost_replays` times in all."""
    repair_jsonl(out)
    done = done_episode_ids(out)
    earlier_lost = lost_attempts(out)
    todo = [(task_id, group) for task_id in task_ids for group in range(group_size) if f"{task_id}/{group}" not in done]
    summary = Summary(skipped=len(task_ids) * group_size - len(todo))
    own_fleet = fleet is None
    if fleet is None:
        fleet = Fleet(env_urls, fleet_config, token=token)
        await fleet.start()
    routing = fleet
    allowed = fleet.config.lost_replays if replay_lost else 0
    semaphore = asyncio.Semaphore(concurrency)
    write_lock = asyncio.Lock()
    started = time.perf_counter()

    async def one(task_id: str, group: int) -> None:
        async with semaphore:
            episode_config = config
            if config.seed is not None:  # distinct, reproducible seeds per rollout
                episode_config = AgentConfig(**{**config.__dict__, "seed": config.seed + 7919 * group})
            play = episode_player(engine, task_id, episode_config, tokenizer, group)

            async def keep_lost(trajectory: Trajectory, attempt: int) -> None:
                mark_lost_attempt(trajectory, attempt)
                async with write_lock:  # written before its replay starts: a kill then leaves the count right
                    write_jsonl(out, [trajectory])
                    summary.lost_replayed += 1

            prior = earlier_lost.get(f"{task_id}/{group}", 0)
            # The same episode_config, so the same seed: a replay samples as the lost attempt would have.
            trajectory = await routing.run(
                play, replays=max(0, allowed - prior), on_lost=keep_lost, first_attempt=prior
            )
            async with write_lock:  # one whole line at a time: a kill leaves at most one half line
                write_jsonl(out, [trajectory])
                summary.add(trajectory)
                if on_episode:
                    on_episode(trajectory)

    try:
        # A TaskGroup: when the fleet gives up (FleetUnavailable), the waiting episodes are cancelled with it.
        async with asyncio.TaskGroup() as group_of_episodes:
            for task_id, group in todo:
                group_of_episodes.create_task(one(task_id, group))
    except BaseExceptionGroup as exc:
        raise exc.exceptions[0] from None  # the first failure as itself (the others are its consequences)
    finally:
        summary.wall_s = time.perf_counter() - started
        summary.env_servers = summary_lines(fleet)
        if own_fleet:
            await fleet.aclose()
    return summary


def resolve_task_ids(tasks: str, env_url: str, token: str | None = None) -> list[str]:
    """`all`: every task of the first env server; a file: instance ids (a task JSON/JSONL/parquet file, or one id
    per line); otherwise a comma-separated list of ids."""
    if tasks == "all":
        from envserver.client import EnvClient

        with EnvClient(env_url, token=token) as client:
            return [task.instance_id for task in client.list_tasks().tasks if task.playable]
    path = Path(tasks)
    if path.is_file():
        if path.suffix in {".json", ".jsonl", ".parquet"}:
            from envserver.tasks import load_tasks

            return [task.instance_id for task in load_tasks(path)]
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [item.strip() for item in tasks.split(",") if item.strip()]


def read_url_file(path: Path) -> list[str]:
    """Env server URLs, one a line; blank lines and `#` comments skipped (one file for a fleet's hosts)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


app = typer.Typer(add_completion=False)


@app.command()
def main(
    *,
    env_url: Annotated[list[str] | None, typer.Option("--env-url", help="Env server URL (repeat for several).")] = None,
    env_urls_file: Annotated[
        Path | None,
        typer.Option(help="A file of env server URLs, one a line (`#` starts a comment); added to any --env-url."),
    ] = None,
    engine: Annotated[str, typer.Option(help="Engine: vllm, hf or openai.")] = "vllm",
    engine_url: Annotated[str | None, typer.Option(help="Engine endpoint, e.g. http://HOST:8001/v1.")] = None,
    model: Annotated[str, typer.Option(help="Model name served by the engine (hf: a local model directory).")],
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="Tokenizer directory (default: the hf model's own, else the bundled Qwen3 tokenizer)."),
    ] = None,
    tasks: Annotated[str, typer.Option(help="`all`, a task/ids file, or comma-separated ids.")] = "all",
    group_size: Annotated[int, typer.Option(help="Rollouts per task (G).")] = 8,
    concurrency: Annotated[int, typer.Option(help="Episodes in flight.")] = 32,
    out: Annotated[Path, typer.Option(help="Trajectory JSONL (appended; finished episodes are skipped on rerun).")],
    max_turns: Annotated[int, typer.Option(help="Assistant turns per episode.")] = 30,
    max_context_tokens: Annotated[int, typer.Option(help="Context length limit per episode.")] = 8192,
    max_tokens_per_turn: Annotated[int, typer.Option(help="Tokens sampled per turn.")] = 1024,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    think_mode: Annotated[str, typer.Option(help="Earlier <think> blocks: keep or drop.")] = "keep",
    seed: Annotated[int | None, typer.Option(help="Base seed for reproducible sampling.")] = None,
    env_token: Annotated[
        str | None, typer.Option(envvar="ENVSERVER_AUTH_TOKEN", help="Env server bearer token.")
    ] = None,
    patience: Annotated[
        float, typer.Option(help="Seconds to wait while no env server is live before stopping with an error.")
    ] = FleetConfig.patience_s,
    replay_lost: Annotated[
        bool,
        typer.Option(
            help="Play an episode lost with its env server again from its reset on a "
            "live one (same seed; the lost attempt stays in --out, marked `replayed`).",
        ),
    ] = True,
) -> None:
    """Collect trajectories."""
    env_url = (env_url or []) + (read_url_file(env_urls_file) if env_urls_file else [])
    if not env_url:
        raise typer.BadParameter("give --env-url (repeat for several) or --env-urls-file")
    if think_mode not in ("keep", "drop"):
        raise typer.BadParameter(f"--think-mode must be keep or drop, not {think_mode!r}")
    summary = run_cli(
        env_url,
        engine,
        engine_url,
        model,
        tokenizer,
        tasks,
        group_size,
        concurrency,
        out,
        AgentConfig(
            max_turns=max_turns,
            max_context_tokens=max_context_tokens,
            max_tokens_per_turn=max_tokens_per_turn,
            temperature=temperature,
            think_mode="drop" if think_mode == "drop" else "keep",
            seed=seed,
        ),
        env_token,
        patience_s=patience,
        replay_lost=replay_lost,
    )
    for line in summary.lines():
        typer.echo(line)


def run_cli(
    env_urls: list[str],
    engine_kind: str,
    engine_url: str | None,
    model: str,
    tokenizer_path: Path | None,
    tasks: str,
    group_size: int,
    concurrency: int,
    out: Path,
    config: AgentConfig,
    env_token: str | None,
    patience_s: float = FleetConfig.patience_s,
    replay_lost: bool = True,
) -> Summary:
    """Shared by `agent.collect` and `agent.eval`: build the engine, run, show a progress bar (with the env servers
    live). No env server live for `patience_s`: the error and each server's state on stderr, exit status 1."""
    from tqdm import tqdm

    from agent.engines import load_tokenizer, make_engine

    engine = make_engine(engine_kind, model, engine_url)
    tokenizer = None
    if not isinstance(engine, ChatEngine):
        tokenizer = load_tokenizer(tokenizer_path or (model if engine_kind == "hf" else None))
    task_ids = resolve_task_ids(tasks, env_urls[0], env_token)
    total = len(task_ids) * group_size
    bar = tqdm(
        total=total,
        initial=len(done_episode_ids(out) & {f"{t}/{g}" for t in task_ids for g in range(group_size)}),
        desc="episodes",
        unit="ep",
    )
    resolved = 0
    fleet = Fleet(
        env_urls,
        FleetConfig(patience_s=patience_s),
        token=env_token,
        log=lambda line: tqdm.write(line, file=sys.stderr),
    )

    def tick(trajectory: Trajectory) -> None:
        nonlocal resolved
        resolved += bool(trajectory.resolved)
        failed = sum(replica.failed for replica in fleet.replicas)
        bar.set_postfix(resolved=resolved, env_live=status_line(fleet), env_failed=failed, refresh=False)
        bar.update(1)

    async def run() -> Summary:
        try:
            async with fleet:
                return await collect(
                    engine,
                    env_urls,
                    task_ids,
                    group_size,
                    out,
                    config,
                    tokenizer,
                    concurrency,
                    env_token,
                    on_episode=tick,
                    fleet=fleet,
                    replay_lost=replay_lost,
                )
        finally:
            await engine.close()

    try:
        return asyncio.run(run())
    except FleetUnavailable as exc:
        bar.close()
        for line in summary_lines(fleet):
            typer.echo(line, err=True)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        bar.close()


if __name__ == "__main__":
    app()
