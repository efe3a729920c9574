"""Fleet benchmark (not a test): collection throughput over 2 env server replicas, then the same collection with one
replica killed (`kill -9` of its process group) halfway through, side by side in one run: episodes per minute before
and after the kill, episodes lost with the replica and replayed, and the ratios.

The engine is scripted (agent/engines/replay.py playing `sleep 1` each turn, no grading), so the numbers measure the
fleet and the env servers, not a model. Each replica takes `--concurrency / 2` sessions (`--max-sessions`), so the
kill halves the fleet's capacity, as it would in production where replicas are sized to the load.

    python benchmarks/bench_fleet.py [--group-size 4] [--concurrency 8] [--turns 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.collect import collect
from agent.engines.replay import ReplayEngine, tool_call_text
from agent.loop import AgentConfig
from agent.tokenizer import build_qwen3_tokenizer
from agent.trajectory import Trajectory
from envserver.fleet import Fleet, FleetConfig
from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks
from tests.conftest import ServerProcess, start_server, stop_server

FAST = FleetConfig(patience_s=30.0, probe_interval_s=0.5, backoff_base_s=0.25, backoff_max_s=1.0)
"""Probes fast enough that the kill is noticed within a second even on a replica with no episode on it."""


async def run_phase(
    servers: list[ServerProcess],
    task_ids: list[str],
    group_size: int,
    concurrency: int,
    config: AgentConfig,
    tokenizer: object,
    out: Path,
    kill_after: int | None,
) -> dict[str, float]:
    """One collection; with `kill_after`, replica 2 is killed once that many episodes are written."""
    engine = ReplayEngine(tokenizer, [tool_call_text("execute_bash", command="sleep 1")])
    finished: list[float] = []
    killed_at: list[float] = []

    def on_episode(_: Trajectory) -> None:
        finished.append(time.perf_counter())
        if kill_after is not None and len(finished) == kill_after and not killed_at:
            os.killpg(servers[1].process.pid, signal.SIGKILL)  # no chance to clean up, like a lost host
            killed_at.append(time.perf_counter())

    async with Fleet([s.url for s in servers], FAST, log=lambda _: None) as fleet:
        started = time.perf_counter()
        summary = await collect(
            engine, [], task_ids, group_size, out, config, tokenizer, concurrency, on_episode=on_episode, fleet=fleet
        )
        ended = time.perf_counter()
        split = killed_at[0] if killed_at else ended
        before = sum(t <= split for t in finished)
        after = len(finished) - before
        return {
            "episodes": summary.episodes,
            "wall_s": ended - started,
            "rate": 60 * summary.episodes / (ended - started),
            "rate_before": 60 * before / max(split - started, 1e-9),
            "rate_after": 60 * after / (ended - split) if killed_at else float("nan"),
            "infra_failures": summary.infra_failures,
            "lost": fleet.lost,
            "replayed": fleet.replayed,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=4, help="Rollouts per sample task (8 tasks).")
    parser.add_argument("--concurrency", type=int, default=8, help="Episodes in flight (each replica takes half).")
    parser.add_argument("--turns", type=int, default=2, help="`sleep 1` turns per episode.")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    tokenizer = build_qwen3_tokenizer()
    task_ids = [task.instance_id for task in load_tasks(SAMPLE_TASKS_PATH)]
    config = AgentConfig(max_turns=args.turns, grade_on_truncation=False, seed=0)
    total = len(task_ids) * args.group_size
    per_replica = ["--max-sessions", str(max(1, args.concurrency // 2)), "--memory-overcommit", "0"]
    rows: dict[str, dict[str, float]] = {}
    for label, kill_after in (("2 replicas", None), ("1 killed at half", total // 2)):
        servers = [start_server(tmp, *per_replica) for _ in range(2)]
        try:
            print(f"{label}: {total} episodes, concurrency {args.concurrency} …", flush=True)
            rows[label] = asyncio.run(
                run_phase(
                    servers,
                    task_ids,
                    args.group_size,
                    args.concurrency,
                    config,
                    tokenizer,
                    tmp / f"{len(rows)}.jsonl",
                    kill_after,
                )
            )
        finally:
            for server in servers:
                stop_server(server)
                for container in server.containers():  # the killed replica's containers outlive it
                    container.remove(force=True)

    print()
    print(
        f"{'run':>18}{'episodes':>10}{'wall s':>9}{'ep/min':>9}{'before':>9}{'after':>9}{'lost':>6}"
        f"{'replayed':>10}{'infra':>7}"
    )
    for label, row in rows.items():
        print(
            f"{label:>18}{row['episodes']:>10.0f}{row['wall_s']:>9.1f}{row['rate']:>9.1f}{row['rate_before']:>9.1f}"
            f"{row['rate_after']:>9.1f}{row['lost']:>6.0f}{row['replayed']:>10.0f}{row['infra_failures']:>7.0f}"
        )
    base, cut = rows["2 replicas"], rows["1 killed at half"]
    print(
        f"\nafter/before the kill: {cut['rate_after'] / cut['rate_before']:.2f}; whole run with the kill / without: "
        f"{cut['rate'] / base['rate']:.2f}; before the kill / without: {cut['rate_before'] / base['rate']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
