"""Env server benchmark, every number measured side by side in one run (not a timed test).

1. Step latency of a trivial command through the HTTP API vs `docker exec` of the same command in a container of
   the same image (docker SDK `exec_run`, the cheapest per-step exec) — p50 / p99 and the ratio.
2. Reset latency with and without the warm pool (p50 / p99).
3. N concurrent sessions × M steps each: throughput and errors.
4. A burst of resets at once (an RL step's B × G), unannounced and announced ahead (`POST /v1/prefetch`): p50 / p99
   reset latency and sessions/s.

Targets (2-core machine): step p50 ≥ 10× faster than docker exec; warm reset p50 ≤ 150 ms; zero errors.

    python benchmarks/bench_envserver.py [--steps 200] [--resets 15] [--sessions 32] [--session-steps 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envserver.client import AsyncEnvClient, EnvClient
from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks
from tests.conftest import start_server, stop_server

COMMAND = "echo hi"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": 1000 * pct(values, 0.5),
        "p99_ms": 1000 * pct(values, 0.99),
        "mean_ms": 1000 * statistics.fmean(values),
        "n": len(values),
    }


def bench_steps(url: str, task_id: str, image: str, n: int) -> dict[str, dict[str, float]]:
    api: list[float] = []
    with EnvClient(url) as client:
        sid = client.reset(task_id, max_steps=500).session_id
        for _ in range(10):
            client.step(sid, "execute_bash", {"command": COMMAND})
        for _ in range(n):
            started = time.perf_counter()
            step = client.step(sid, "execute_bash", {"command": COMMAND})
            api.append(time.perf_counter() - started)
            assert step.observation.startswith("hi"), step.observation
        client.close_session(sid)
    engine = docker.from_env()
    container = engine.containers.run(
        image, ["sleep", "3600"], detach=True, network_mode="none", labels={"envserver.benchmark": "1"}
    )
    execs: list[float] = []
    try:
        for _ in range(5):
            container.exec_run(["bash", "-c", COMMAND])
        for _ in range(n):
            started = time.perf_counter()
            code, output = container.exec_run(["bash", "-c", COMMAND])
            execs.append(time.perf_counter() - started)
            assert code == 0 and output.startswith(b"hi")
    finally:
        container.remove(force=True)
    return {"http_api": summary(api), "docker_exec": summary(execs)}


def bench_resets(url: str, task_id: str, n: int, warm: bool) -> dict[str, float]:
    latencies: list[float] = []
    warm_hits = 0
    with EnvClient(url) as client:
        for _ in range(n):
            if warm:
                time.sleep(1.5)  # let the pool refill, as it does between resets of a real run
            started = time.perf_counter()
            reset = client.reset(task_id)
            latencies.append(time.perf_counter() - started)
            warm_hits += reset.info.warm_start
            client.close_session(reset.session_id)
    return {**summary(latencies), "warm_hits": warm_hits}


async def bench_concurrency(url: str, task_ids: list[str], sessions: int, steps: int) -> dict[str, float]:
    errors: list[str] = []
    done = 0

    async def one(index: int) -> None:
        nonlocal done
        async with AsyncEnvClient(url) as client:
            try:
                reset = await client.reset(task_ids[index % len(task_ids)], max_steps=steps + 1)
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(f"reset: {exc}")
                return
            try:
                for k in range(steps):
                    step = await client.step(reset.session_id, "execute_bash", {"command": f"echo s{index}-{k}"})
                    if not step.observation.startswith(f"s{index}-{k}"):
                        errors.append(f"wrong output: {step.observation[:100]!r}")
                    done += 1
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(f"step: {exc}")
            finally:
                await client.close_session(reset.session_id)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(sessions)))
    elapsed = time.perf_counter() - started
    return {
        "sessions": sessions,
        "steps": done,
        "wall_s": elapsed,
        "steps_per_s": done / elapsed,
        "errors": len(errors),
        "first_errors": errors[:3],
    }


async def bench_burst(url: str, task_ids: list[str], n: int, announce: bool) -> dict[str, float]:
    """`n` resets at once (an RL step's B × G), as they come; with `announce`, told ahead (`POST /v1/prefetch`) and
    fired once the pool has them ready (the trainer announces step t+1 while step t trains)."""
    counts: dict[str, int] = {}
    for index in range(n):
        counts[task_ids[index % len(task_ids)]] = counts.get(task_ids[index % len(task_ids)], 0) + 1
    async with AsyncEnvClient(url, max_capacity_wait_s=600) as client:
        prepared_s = 0.0
        if announce:
            started = time.perf_counter()
            await client.prefetch(counts, ttl_s=600)
            async with httpx.AsyncClient(base_url=url) as http:
                while (await http.get("/healthz")).json()["pool_ready"] < n:
                    if time.perf_counter() - started > 900:
                        raise RuntimeError("the announced containers did not all start within 900 s")
                    await asyncio.sleep(0.5)
            prepared_s = time.perf_counter() - started
        latencies: list[float] = []

        async def one(task_id: str) -> str:
            begun = time.perf_counter()
            reset = await client.reset(task_id)
            latencies.append(time.perf_counter() - begun)
            return reset.session_id

        started = time.perf_counter()
        sessions = await asyncio.gather(*(one(task_ids[i % len(task_ids)]) for i in range(n)))
        wall = time.perf_counter() - started
        await asyncio.gather(*(client.close_session(sid) for sid in sessions))
    return {**summary(latencies), "sessions_per_s": n / wall, "wall_s": wall, "prepared_s": prepared_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="Steps timed for the latency comparison (< 490).")
    parser.add_argument("--resets", type=int, default=15, help="Resets timed with and without the warm pool.")
    parser.add_argument("--sessions", type=int, default=32, help="Concurrent sessions.")
    parser.add_argument("--session-steps", type=int, default=50, help="Steps per concurrent session.")
    parser.add_argument(
        "--burst", type=int, default=128, help="Resets at once, with and without announcing them (0: skip)."
    )
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()

    tasks = load_tasks(SAMPLE_TASKS_PATH)
    task_id = tasks[0].instance_id
    tmp = Path(tempfile.mkdtemp(prefix="bench-envserver-"))
    results: dict[str, object] = {}

    # Trivial commands in every session: memory admission (4 GiB limits × host memory × 4) would cap the
    # concurrency measured, not protect anything.
    cold = start_server(tmp, "--max-sessions", str(args.sessions + 8), "--memory-overcommit", "0")
    try:
        image = httpx.get(f"{cold.url}/v1/tasks").json()["tasks"][0]["image"]
        print(f"[1/4] step latency: {args.steps} × `{COMMAND}` through the API and through docker exec …")
        results["steps"] = bench_steps(cold.url, task_id, image, args.steps)
        print(f"[2/4] cold resets ({args.resets}) …")
        results["reset_cold"] = bench_resets(cold.url, task_id, args.resets, warm=False)
        print(f"[3/4] {args.sessions} concurrent sessions × {args.session_steps} steps …")
        results["concurrency"] = asyncio.run(
            bench_concurrency(cold.url, [t.instance_id for t in tasks], args.sessions, args.session_steps)
        )
    finally:
        stop_server(cold)
    warm = start_server(tmp, "--warm-pool-size", "2", "--warm-pool-task", task_id)
    try:
        time.sleep(3)
        print(f"[4/4] warm resets ({args.resets}) …")
        results["reset_warm"] = bench_resets(warm.url, task_id, args.resets, warm=True)
    finally:
        stop_server(warm)
    if args.burst:
        burst = start_server(tmp, "--max-sessions", str(args.burst + 8), "--memory-overcommit", "0")
        try:
            ids = [t.instance_id for t in tasks]
            print(f"[burst] {args.burst} resets at once, unannounced …")
            results["burst_cold"] = asyncio.run(bench_burst(burst.url, ids, args.burst, announce=False))
            time.sleep(5)
            print(f"[burst] {args.burst} resets at once, announced ahead (POST /v1/prefetch) …")
            results["burst_announced"] = asyncio.run(bench_burst(burst.url, ids, args.burst, announce=True))
        finally:
            stop_server(burst)

    steps = results["steps"]
    api, execs = steps["http_api"], steps["docker_exec"]  # type: ignore[index]
    cold_r, warm_r, conc = results["reset_cold"], results["reset_warm"], results["concurrency"]
    speedup = execs["p50_ms"] / api["p50_ms"]
    print()
    print(f"{'measurement':<36}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'step via HTTP API':<36}{api['p50_ms']:>10.2f}{api['p99_ms']:>10.2f}")
    print(f"{'step via docker exec (baseline)':<36}{execs['p50_ms']:>10.2f}{execs['p99_ms']:>10.2f}")
    print(f"{'reset, cold (container start)':<36}{cold_r['p50_ms']:>10.1f}{cold_r['p99_ms']:>10.1f}")  # type: ignore[index]
    print(
        f"{'reset, warm pool':<36}{warm_r['p50_ms']:>10.1f}{warm_r['p99_ms']:>10.1f}"  # type: ignore[index]
        f"   ({warm_r['warm_hits']}/{warm_r['n']} handed over)"
    )  # type: ignore[index]
    print()
    print(f"step p50 speed-up over docker exec: {speedup:.1f}×   (target ≥ 10×)")
    print(
        f"warm reset p50: {warm_r['p50_ms']:.0f} ms, {cold_r['p50_ms'] / warm_r['p50_ms']:.1f}× faster than cold"  # type: ignore[index]
        "   (target ≤ 150 ms)"
    )
    print(
        f"{conc['sessions']} sessions × {args.session_steps} steps: {conc['steps']} steps in "  # type: ignore[index]
        f"{conc['wall_s']:.1f} s = {conc['steps_per_s']:.0f} steps/s, errors: {conc['errors']}"  # type: ignore[index]
        "   (target 0 errors)"
    )
    if args.burst:
        cold_b, told = results["burst_cold"], results["burst_announced"]
        print(
            f"{args.burst} resets at once: unannounced p50 {cold_b['p50_ms']:.0f} ms / p99 {cold_b['p99_ms']:.0f} ms, "  # type: ignore[index]
            f"{cold_b['sessions_per_s']:.1f} sessions/s; announced p50 {told['p50_ms']:.0f} ms / p99 "  # type: ignore[index]
            f"{told['p99_ms']:.0f} ms, {told['sessions_per_s']:.1f} sessions/s (its containers took "  # type: ignore[index]
            f"{told['prepared_s']:.0f} s to start ahead)   (target: announced p50 ≤ 100 ms)"
        )  # type: ignore[index]
    if conc["errors"]:  # type: ignore[index]
        print("first errors:", conc["first_errors"])  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
