"""Benchmark of the pair miner: a synthetic SWE-smith-format set of 20k trajectories (realistic sizes: 20–50
messages, file views, tracebacks, test output, edits and a final diff) mined in a subprocess; prints the peak
resident memory of that subprocess (getrusage of the child) and trajectories per second.

    .venv/bin/python benchmarks/bench_mine.py [--trajectories 20000] [--keep DIR]

The input is made in a temporary folder and streamed to disk (the benchmark itself holds one trajectory at a time).
Repositories have Zipf-like sizes and bugs cluster on a few functions, as in SWE-smith, so every cascade stage has
work to do. Target: peak memory < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "value",
    "parser",
    "token",
    "stream",
    "buffer",
    "cache",
    "request",
    "response",
    "config",
    "schema",
    "field",
    "record",
    "index",
    "offset",
    "window",
    "frame",
    "column",
    "row",
    "table",
    "query",
    "filter",
    "sort",
    "merge",
    "split",
    "encode",
    "decode",
    "render",
    "format",
    "timezone",
    "date",
    "unicode",
    "path",
    "file",
    "directory",
    "socket",
    "timeout",
    "retry",
    "session",
    "user",
    "group",
    "permission",
    "handler",
    "event",
    "signal",
    "queue",
    "worker",
    "thread",
    "lock",
    "context",
    "manager",
    "iterator",
    "generator",
    "decorator",
    "metaclass",
    "attribute",
    "property",
    "serializer",
    "validator",
    "converter",
    "adapter",
    "plugin",
    "registry",
    "loader",
    "writer",
    "reader",
]
VOCAB = [f"{a}{b}" for a in WORDS for b in ("", "s", "ed", "ing", "er")] + [f"term{i}" for i in range(4000)]
SYSTEM = (
    "You are a helpful assistant that can interact with a computer to solve tasks.\n<IMPORTANT>\n* If user "
    "provides a path, you should NOT assume it's relative to the current working directory.\n</IMPORTANT>\n" * 6
)


def source_file(rng: random.Random, functions: list[str]) -> list[str]:
    lines = ['"""Module docstring."""', "import os", "import re", ""]
    for name in functions:
        args = ", ".join(rng.sample(WORDS, 2))
        lines += [f"def {name}({args}):", f'    """{" ".join(rng.sample(WORDS, 6)).capitalize()}."""']
        for k in range(rng.randint(6, 14)):
            a, b, c = rng.sample(WORDS, 3)
            lines.append(f"    {a}_{k} = {b}.get('{c}', {k}) if {b} else {rng.randint(0, 99)}")
        lines += [f"    return {a}_{k}", ""]
    return lines


class World:
    """Repositories → files → functions → source lines, drawn once."""

    def __init__(self, rng: random.Random, repos: int = 60):
        self.repos = []
        for r in range(repos):
            owner, name = rng.choice(WORDS), f"{rng.choice(WORDS)}{r}"
            files = {}
            for f in range(rng.randint(4, 12)):
                path = f"{name}/{rng.choice(WORDS)}_{f}.py"
                functions = [f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{j}" for j in range(rng.randint(4, 10))]
                files[path] = (functions, source_file(rng, functions))
            self.repos.append((f"{owner}__{name}", f"{rng.getrandbits(32):08x}", files))
        self.weights = [1 / (i + 1) ** 0.8 for i in range(repos)]


def trajectory(rng: random.Random, world: World, index: int) -> dict:
    repo, commit, files = rng.choices(world.repos, weights=world.weights)[0]
    paths = sorted(files)
    path = paths[min(int(rng.expovariate(0.7)), len(paths) - 1)]
    functions, lines = files[path]
    function = functions[min(int(rng.expovariate(0.6)), len(functions) - 1)]
    start = lines.index(next(line for line in lines if line.startswith(f"def {function}(")))
    end = lines.index("", start)
    target = rng.randrange(start + 2, end - 1)
    old = lines[target]
    new = f"    {rng.choice(WORDS)}_{index} = {old.split('=', 1)[1].strip()} or {rng.choice(WORDS)}_{index}"
    # Issues come in a few families per function (the same symptom reported again); a family shares its words, so
    # issues of one family are related, others are not: the related_issue stage has something to separate.
    family = random.Random(f"{repo}/{function}/{min(int(rng.expovariate(1.0)), 3)}")
    symptom = " ".join(family.choices(VOCAB, k=40))
    issue = (
        f"# {function} returns the wrong result\n\nWhen calling `{function}` {symptom}. "
        + " ".join(rng.choices(VOCAB, k=25))
        + f".\n\n```python\nfrom {path.split('/')[0]} import {function}\nprint({function}(None, None))\n```\n"
    )
    instance = f"{repo}.{commit[:8]}.func_pm_{rng.choice(WORDS)}__{index:07x}"
    messages = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": "<uploaded_files>\n/testbed\n</uploaded_files>\nConsider the following "
            f"PR description:\n\n<pr_description>\n{issue}</pr_description>\n\n"
            "Make the minimal changes to non-test files.",
        },
    ]
    calls = 0

    def step(name: str, arguments: dict, output: str, thought: str) -> None:
        nonlocal calls
        calls += 1
        messages.append(
            {
                "role": "assistant",
                "content": thought,
                "tool_calls": [
                    {
                        "id": f"call_{calls}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": f"call_{calls}", "content": output})

    def chatter(k: int = 30) -> str:
        return " ".join(rng.choices(WORDS, k=k)).capitalize() + "."

    step(
        "bash",
        {"command": "find /testbed -name '*.py' | head -50"},
        "\n".join(f"/testbed/{p}" for p in paths),
        "Let me explore the repository. " + chatter(),
    )
    for _ in range(rng.randint(9, 22)):
        kind = rng.random()
        if kind < 0.4:
            other = rng.choice(paths)
            shown = files[other][1][: rng.randint(40, 120)]
            step(
                "str_replace_editor",
                {"command": "view", "path": f"/testbed/{other}"},
                "Here's the result of running `cat -n`:\n" + "\n".join(f"{i + 1:6d}\t{l}" for i, l in enumerate(shown)),
                chatter(),
            )
        elif kind < 0.65:
            step(
                "bash",
                {"command": f"grep -rn {rng.choice(WORDS)} /testbed | head -20"},
                "\n".join(f"/testbed/{rng.choice(paths)}:{rng.randint(1, 200)}: {chatter(8)}" for _ in range(20)),
                chatter(),
            )
        elif kind < 0.85:
            trace = "\n".join(
                f'  File "/testbed/{rng.choice(paths)}", line {rng.randint(1, 300)}, in '
                f"{rng.choice(functions)}\n    {chatter(6)}"
                for _ in range(rng.randint(3, 10))
            )
            step(
                "bash",
                {"command": "python /testbed/reproduce.py"},
                f"Traceback (most recent call last):\n{trace}\nValueError: {chatter(6)}",
                chatter(),
            )
        else:
            step(
                "bash",
                {
                    "command": "cat > /testbed/reproduce.py <<'EOF'\n"
                    f"from {path.split('/')[0]} import {function}\nprint({function}(1, 2))\nEOF"
                },
                "",
                "Let me write a reproduction script. " + chatter(),
            )
    step(
        "str_replace_editor",
        {"command": "str_replace", "path": f"/testbed/{path}", "old_str": old, "new_str": new},
        f"The file /testbed/{path} has been edited. Here's a snippet:\n{new}\nReview the changes.",
        f"The bug is in `{function}`. I'll fix it:\n```python\n{new}\n```",
    )
    step(
        "bash",
        {"command": "python -m pytest -q"},
        "." * rng.randint(20, 200) + f"\n{rng.randint(5, 99)} passed",
        chatter(),
    )
    context = lines[max(start, target - 3) : target]
    after = lines[target + 1 : target + 4]
    patch = (
        f"diff --git a/{path} b/{path}\nindex 1234567..89abcde 100644\n--- a/{path}\n+++ b/{path}\n"
        f"@@ -{target - len(context) + 1},{len(context) + 1 + len(after)} "
        f"+{target - len(context) + 1},{len(context) + 1 + len(after)} @@ def {function}(\n"
        + "".join(f" {l}\n" for l in context)
        + f"-{old}\n+{new}\n"
        + "".join(f" {l}\n" for l in after)
    )
    step("bash", {"command": "git diff"}, patch, "Let me review the diff.")
    step("submit", {}, "Submitted.", "Done.")
    return {
        "instance_id": instance,
        "traj_id": f"{instance}.run{index}",
        "resolved": rng.random() < 0.7,
        "model": "bench",
        "patch": patch,
        "messages": messages,
    }


def write_set(path: Path, count: int, seed: int) -> tuple[int, float]:
    rng = random.Random(seed)
    world = World(rng)
    messages = 0
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[\n")
        for index in range(count):
            record = trajectory(rng, world, index)
            messages += len(record["messages"])
            handle.write(("," if index else "") + json.dumps(record) + "\n")
        handle.write("]\n")
    return messages, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trajectories", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the input and output in this folder.")
    parser.add_argument("--min-stage", default=None, help="Override the miner's min_stage (default: its own).")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_mine_"))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "trajectories.json"
    started = time.perf_counter()
    messages, size = write_set(data, args.trajectories, args.seed)
    print(
        f"input: {args.trajectories:,} trajectories, {messages / args.trajectories:.1f} messages each, "
        f"{size / 2**20:,.0f} MiB ({size / args.trajectories / 1024:.1f} KiB each), made in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )

    command = [
        sys.executable,
        "-m",
        "trainer.pairs",
        "mine",
        "-t",
        str(data),
        "--out",
        str(folder / "pairs.jsonl"),
        "--seed",
        str(args.seed),
        "--report-dir",
        str(folder / "report"),
    ]
    if args.min_stage:
        command += ["--min-stage", args.min_stage]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime  # on a shared machine, wall time also counts the others' load
    if done.returncode:
        print(done.stdout, done.stderr)
        raise SystemExit(f"miner failed with exit code {done.returncode}")
    funnel = json.loads((folder / "report" / "funnel.json").read_text())
    print("funnel: " + ", ".join(f"{row['stage']} {row['count']:,}" for row in funnel["funnel"]))
    print(
        f"mined in {seconds:.1f} s wall, {cpu:.1f} s CPU: {args.trajectories / seconds:,.0f} trajectories/s "
        f"({args.trajectories / cpu:,.0f} per CPU second); peak RSS of the miner {peak:,.0f} MiB "
        f"(target < 1024 MiB): {'OK' if peak < 1024 else 'OVER'}"
    )
    if not args.keep:
        for item in sorted(folder.rglob("*"), reverse=True):
            item.unlink() if item.is_file() else item.rmdir()
        folder.rmdir()


if __name__ == "__main__":
    main()
