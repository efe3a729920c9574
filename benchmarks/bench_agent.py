"""Agent-loop benchmark (not a timed test): episodes per minute at concurrency 1, 8 and 32 with the tiny model on
the `hf` engine against a local env server on the sample tasks, and where the wall time went — engine, env server,
agent. Target: the agent's own share under 5% of episode wall time.

    python benchmarks/bench_agent.py [--turns 4] [--tokens-per-turn 32] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.collect import collect
from agent.engines.hf import HFEngine
from agent.loop import AgentConfig
from agent.tiny import build_tiny_model
from agent.tokenizer import build_qwen3_tokenizer
from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks
from tests.conftest import start_server, stop_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=4, help="Assistant turns per episode.")
    parser.add_argument("--tokens-per-turn", type=int, default=32, help="Tokens sampled per turn.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="Levels to measure.")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    tokenizer = build_qwen3_tokenizer()
    engine = HFEngine.from_pretrained(build_tiny_model(tmp / "tiny"))
    task_ids = [task.instance_id for task in load_tasks(SAMPLE_TASKS_PATH)]
    config = AgentConfig(max_turns=args.turns, max_tokens_per_turn=args.tokens_per_turn, seed=0)
    server = start_server(tmp, "--max-sessions", str(max(args.concurrency) + 8), "--memory-overcommit", "0")
    rows = []
    try:
        for level in args.concurrency:
            episodes = max(level, 8)
            groups = -(-episodes // len(task_ids))
            out = tmp / f"c{level}.jsonl"
            print(f"concurrency {level}: {len(task_ids) * groups} episodes …", flush=True)
            summary = asyncio.run(collect(engine, [server.url], task_ids, groups, out, config, tokenizer, level))
            busy = summary.engine_s + summary.env_s + summary.agent_s
            rows.append(
                (
                    level,
                    summary.episodes,
                    summary.wall_s,
                    60 * summary.episodes / summary.wall_s,
                    summary.engine_s / busy,
                    summary.env_s / busy,
                    summary.agent_s / busy,
                    summary.infra_failures + summary.errors,
                )
            )
    finally:
        stop_server(server)
    print()
    print(
        f"{'concurrency':>11}{'episodes':>10}{'wall s':>9}{'ep/min':>9}{'engine':>9}{'env':>8}{'agent':>8}{'errors':>8}"
    )
    for level, n, wall, rate, engine_share, env_share, agent_share, errors in rows:
        print(
            f"{level:>11}{n:>10}{wall:>9.1f}{rate:>9.1f}{100 * engine_share:>8.1f}%{100 * env_share:>7.1f}%"
            f"{100 * agent_share:>7.1f}%{errors:>8}"
        )
    worst = max(row[6] for row in rows)
    print(
        f"\nagent overhead: at most {100 * worst:.1f}% of episode wall time (target < 5%); "
        f"throughput at concurrency {rows[-1][0]} is {rows[-1][3] / rows[0][3]:.1f}x that at {rows[0][0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
