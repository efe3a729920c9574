"""The env server's embedded default: build the sample images if needed, start a local server, play every sample
task twice over HTTP — once applying its gold patch, once changing nothing — and print the rewards."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envserver.client import EnvClient
from envserver.local import LocalServer
from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks

ROOT = Path(__file__).resolve().parent.parent


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def run_demo(port: int) -> int:
    tasks = load_tasks(SAMPLE_TASKS_PATH)
    print(f"[1/3] sample images for {len(tasks)} tasks (built once, then reused) …", flush=True)
    subprocess.run([sys.executable, "-m", "images", "build-samples"], check=True)
    if not _port_free(port):
        print(f"port {port} is taken; pass --port", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="envserver-demo-"))
    print(f"[2/3] starting the env server on 127.0.0.1:{port} (log in {log_dir}) …", flush=True)
    try:
        server = LocalServer(log_dir, name=f"demo-{port}", port=port, wait_s=60)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    url = server.url
    try:
        print("[3/3] playing every task with its gold patch and with no change …", flush=True)
        failures = 0
        with EnvClient(url) as client:
            print(f"{'task':<40}{'gold patch':>12}{'no change':>12}{'steps/s':>10}")
            for task in tasks:
                rewards = []
                for gold in (True, False):
                    session = client.reset(task.instance_id).session_id
                    started, steps = time.perf_counter(), 0
                    if gold:
                        command = (
                            f"cd {task.workdir} && cat > /tmp/fix.patch <<'DEMO_EOF'\n{task.patch}DEMO_EOF\n"
                            "git apply /tmp/fix.patch && git status --short"
                        )
                        client.step(session, "execute_bash", {"command": command})
                        steps += 1
                    for _ in range(5):
                        client.step(session, "execute_bash", {"command": "ls"})
                        steps += 1
                    rate = steps / (time.perf_counter() - started)
                    result = client.step(session, "finish", {})
                    rewards.append(result.reward)
                    client.close_session(session)
                ok = rewards == [1.0, 0.0]
                failures += not ok
                print(
                    f"{task.instance_id:<40}{rewards[0]:>12.1f}{rewards[1]:>12.1f}{rate:>10.0f}"
                    f"{'' if ok else '   <-- unexpected'}",
                    flush=True,
                )
        print("all sample tasks graded as expected" if not failures else f"{failures} task(s) graded unexpectedly")
        return 1 if failures else 0
    finally:
        server.stop()
