"""Killing process trees from /proc: a command's processes, its descendants, and whatever they fork meanwhile.

Part of the in-container runtime (stdlib only, run with the task image's own python3 >= 3.8): bash_session.py kills a
timed-out command's job and a dead shell's session with it, server.py an `exec` op's process and its children.
"""

from __future__ import annotations

import os
import signal
import time


def _procs() -> dict:
    """pid -> (ppid, pgrp, sid, state) for every process we can see in /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            rest = data[data.rfind(b")") + 2 :].split()
            out[int(name)] = (int(rest[1]), int(rest[2]), int(rest[3]), rest[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def kill_tree(select_root, spare=(), rounds=60) -> bool:
    """SIGKILL every process for which select_root(pid, info) is true plus all their descendants, repeatedly until
    none is left alive (a fork bomb keeps forking while we kill). Never kills ourselves or `spare`."""
    spare = set(spare) | {os.getpid()}
    spare_groups = {os.getpgrp()} | set(spare)
    for i in range(rounds):
        procs = _procs()
        targets = {p for p, info in procs.items() if p not in spare and select_root(p, info)}
        children: dict[int, list[int]] = {}
        for p, info in procs.items():
            children.setdefault(info[0], []).append(p)
        stack = list(targets)
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in targets:
                    targets.add(c)
                    stack.append(c)
        live = [p for p in targets - spare if procs[p][3] != b"Z"]  # zombies are for their parent to reap
        if not live:
            return True
        for g in {procs[p][1] for p in live} - spare_groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except OSError:
                pass
        for p in live:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(min(0.002 * (i + 1), 0.05))
    return False
