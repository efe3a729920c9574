"""Rollout collection: the sampler (the policy itself, or a vLLM server that reloads the weights after each step), B × G
episodes through the agent loop over a fleet of env servers, the next step's resets announced to the live ones, and
the success evaluation's fixed-seed episodes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from agent.trajectory import Trajectory, write_jsonl
from envserver.client import EnvClient, EnvServerError
from trainer.config import TrainerConfig
from trainer.summary import SUCCESS_EVAL_TASK_PREFIX

EVAL_STEP = -1
"""The `step` of the success evaluation's sampling seeds: the same at both ends of a run, never a training step's."""


def home_urls(fleet: Any, count: int) -> list[str]:
    """The env server each of `count` tasks' episodes go to first: task i to the (i mod n)-th of the fleet's servers
    while that one is live, a dead one's tasks in turn to the live ones (none live: the plain spread; the fleet waits
    for one). Announcements and collection use the same homes, so the announced containers are the ones used."""
    urls = [replica.url for replica in fleet.replicas]
    live = [replica.url for replica in fleet.live()]
    homes: list[str] = []
    moved = 0
    for index in range(count):
        url = urls[index % len(urls)]
        if live and url not in live:
            url, moved = live[moved % len(live)], moved + 1
        homes.append(url)
    return homes


async def collect_rollouts(
    engine: Any,
    fleet: Any,
    task_ids: list[str],
    config: TrainerConfig,
    tokenizer: Any,
    step: int,
    group_size: int | None = None,
    homes: list[str] | None = None,
    log: Any = print,
) -> list[Trajectory]:
    """B × G episodes (G: `group_size`, default the config's) over the env servers of `fleet` (an
    `envserver.fleet.Fleet`): task i's episodes on `homes[i]` (default `home_urls`; where `announce_resets` started
    their containers) while that server is live and has room, else on the live server with the most free capacity;
    sampling seeds depend only on (seed, step, task's place in `task_ids`, group). With `replay_lost_episodes`, an
    episode lost with its env server is played again (same seed) on a live one; the lost attempt comes back too, marked
    `replayed` (before its replay; `rollouts_for_batch` leaves it out). Raises `FleetUnavailable` when no env server is
    live for its patience. With several env servers, or any failure, logs each server's state and episodes."""
    from agent.collect import episode_player, mark_lost_attempt
    from envserver.fleet import summary_lines

    group_size = config.group_size if group_size is None else group_size
    homes = homes if homes is not None and len(homes) == len(task_ids) else home_urls(fleet, len(task_ids))
    semaphore = asyncio.Semaphore(config.concurrency)
    replays = fleet.config.lost_replays if config.replay_lost_episodes else 0

    async def one(index: int, task_id: str, group: int) -> list[Trajectory]:
        seed = (config.seed * 1_000_003 + step * 10_007 + index * 101 + group) % 2**31
        settings = config.agent.model_copy(update={"seed": seed})
        lost: list[Trajectory] = []
        play = episode_player(engine, task_id, settings, tokenizer, group)

        async def keep_lost(trajectory: Trajectory, attempt: int) -> None:
            mark_lost_attempt(trajectory, attempt)
            lost.append(trajectory)

        async with semaphore:
            final = await fleet.run(play, prefer=homes[index], replays=replays, on_lost=keep_lost)
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


async def collect_and_announce(
    engine: Any,
    env_urls: list[str],
    task_ids: list[str],
    config: TrainerConfig,
    tokenizer: Any,
    step: int,
    *,
    group_size: int | None = None,
    homes: list[str] | None = None,
    announce: list[str] | None = None,
    log: Any = print,
) -> tuple[list[Trajectory], list[str] | None]:
    """`collect_rollouts` through a fleet of `env_urls` (with the run's bearer token), then, given the next step's
    task ids (`announce`), `announce_resets` through the same fleet: only to the servers it saw live. Returns the
    trajectories and the homes announced (None when nothing was)."""
    from envserver.fleet import Fleet

    async with Fleet(env_urls, token=config.env_server_token(), log=log) as fleet:
        trajectories = await collect_rollouts(engine, fleet, task_ids, config, tokenizer, step, group_size, homes, log)
        next_homes = await announce_resets(fleet, announce, config.group_size, log=log) if announce else None
    return trajectories, next_homes


def rollouts_for_batch(trajectories: list[Trajectory]) -> list[Trajectory]:
    """The group's rollouts: every trajectory but the attempts lost with their env server and replayed (those are
    written to the rollouts file, never trained on or scored)."""
    from agent.collect import is_replayed_attempt

    return [trajectory for trajectory in trajectories if not is_replayed_attempt(trajectory)]


async def announce_resets(
    fleet: Any, task_ids: list[str], group_size: int, ttl_s: float = 600.0, log: Any = print
) -> list[str]:
    """Announce B × G resets to the live env servers of `fleet` as `collect_rollouts` will spread them (`home_urls`):
    their containers start now. A server that is down (or draining) when announced to leaves the rotation and its
    tasks are announced to the live servers that will take them instead; any other refusal (a wrong token, say) is
    only logged.
    Returns the homes announced to: pass them to the next `collect_rollouts`."""
    from envserver.fleet import is_draining, takes_replica_down

    asked: dict[tuple[str, str], int] = {}  # (url, task id) → resets already announced there (or refused for good)
    homes = home_urls(fleet, len(task_ids))
    for _ in range(len(fleet.replicas)):
        wanted: dict[tuple[str, str], int] = {}
        for task_id, url in zip(task_ids, homes):
            wanted[url, task_id] = wanted.get((url, task_id), 0) + group_size
        delta: dict[str, dict[str, int]] = {}
        for (url, task_id), count in wanted.items():
            if count > asked.get((url, task_id), 0):
                delta.setdefault(url, {})[task_id] = count - asked.get((url, task_id), 0)

        async def one(url: str, counts: dict[str, int]) -> None:
            replica = fleet.by_url(url)
            try:
                await replica.client.prefetch(counts, ttl_s=ttl_s)
            except (EnvServerError, httpx.HTTPError) as exc:
                if is_draining(exc):
                    fleet.mark_draining(replica)
                    return
                log(f"could not announce the next step's resets to {url}: {exc}")
                if takes_replica_down(exc):
                    await fleet.mark_failed(replica, exc)
                    return
            for task_id, count in counts.items():
                asked[url, task_id] = asked.get((url, task_id), 0) + count

        await asyncio.gather(*(one(url, counts) for url, counts in delta.items()))
        again = home_urls(fleet, len(task_ids))
        if again == homes:
            break
        homes = again
    return homes


def served_tasks(env_url: str, token: str | None) -> list[str]:
    """The ids of the tasks an env server serves (sorted); a server that refuses the token says so plainly."""
    try:
        with EnvClient(env_url, token=token) as client:
            return sorted(t.instance_id for t in client.list_tasks().tasks)
    except EnvServerError as exc:
        if exc.status == 401:
            raise RuntimeError(
                f"env server {env_url} refused the trainer ({exc}): set `env_token` in the config or the "
                "ENVSERVER_AUTH_TOKEN environment variable to its token"
            ) from None
        raise


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
    trajectories, _ = runner.run(
        collect_and_announce(
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


def make_engine(config: TrainerConfig, model: Any, tokenizer: Any, version: int) -> Any:
    """The sampler: the policy module itself (`hf`), or a vLLM server that reloads the weights after each step."""
    if config.engine == "hf":
        # processed logprobs: the behaviour policy (after temperature / top-k / top-p) that truncated importance
        # sampling compares the trainer's tempered logprobs with.
        from agent.engines.hf import HFEngine

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
