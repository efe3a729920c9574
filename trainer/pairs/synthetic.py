"""Synthetic contrastive pairs from task instances, for the embedded default run (no mined pairs on a CPU machine).

Each pair is a line lookup in an agent trajectory: the query asks, in the words of one task's issue, where the code
in question is; the answer quotes a source line with its file and line number; the positive context is a short
trajectory of an agent on that task that printed this line (`sed -n` on the file), the negative a look-alike
trajectory on another task of the same repository (same tool call, same shape) that printed a different line. Only
the positive contains the answer's line, so picking it needs matching the answer against the contexts — reading the
context — not recognising the task: the query names the negative's task as often as the positive's.

The lines come from the tasks' patches and test patches (context and removed lines, with their original line
numbers). Train and held-out pairs use disjoint lines — no line appears in both splits, in either role — so
held-out accuracy cannot come from remembering a line's label.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.pairs.record import PairRecord

_FILE = re.compile(r"^diff --git a/(\S+) b/(\S+)$")
_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


@dataclass(frozen=True)
class SourceLine:
    task_id: str
    repo: str
    path: str
    number: int
    text: str


def source_lines(task: Any, min_chars: int = 16) -> list[SourceLine]:
    """Lines of the base commit that the task's patch and test patch show (context and removed lines), with their
    line numbers; only lines with at least `min_chars` non-blank characters and a letter."""
    lines: list[SourceLine] = []
    for patch in (task.patch, task.test_patch):
        path, number = None, 0
        for line in (patch or "").splitlines():
            match = _FILE.match(line)
            if match:
                path = match.group(1)
                continue
            hunk = _HUNK.match(line)
            if hunk:
                number = int(hunk.group(1))
                continue
            if path is None or line.startswith(("---", "+++", "index ", "\\", "new file", "deleted file")):
                continue
            tag, text = line[:1], line[1:]
            if tag == "+":
                continue
            if len(text.strip()) >= min_chars and re.search(r"[A-Za-z]", text):
                lines.append(SourceLine(task.instance_id, task.repo, path, number, text.rstrip()))
            number += 1
    return lines


def _title(task: Any) -> str:
    return (task.problem_statement or task.instance_id).strip().splitlines()[0]


def _context(line: SourceLine, workdir: str) -> str:
    """A two-message trajectory excerpt: the tool call that printed the line, and the tool's output."""
    command = f"sed -n '{line.number}p' {line.path}"
    call = json.dumps({"name": "execute_bash", "arguments": {"command": command}})
    return (
        f"[assistant]\n<tool_call>\n{call}\n</tool_call>\n"
        f"[tool: execute_bash]\n{line.text}\n[Current working directory: {workdir}]\n"
        "[Command finished with exit code 0]"
    )


def _bash(command: str, output: str, exit_code: int, workdir: str) -> str:
    call = json.dumps({"name": "execute_bash", "arguments": {"command": command}})
    shown = f"{output}\n" if output else ""
    return (
        f"[assistant]\n<tool_call>\n{call}\n</tool_call>\n[tool: execute_bash]\n{shown}"
        f"[Current working directory: {workdir}]\n[Command finished with exit code {exit_code}]"
    )


def _test_run(test_id: str, passed: bool, workdir: str, rng: random.Random) -> str:
    seconds = f"{rng.uniform(0.01, 0.4):.2f}s"
    name = test_id.rsplit("::", 1)[-1]
    if passed:
        output = f".{' ' * 71}[100%]\n1 passed in {seconds}"
    else:
        output = (
            f"F{' ' * 71}[100%]\n{'=' * 35} FAILURES {'=' * 35}\n{'_' * 20} {name} {'_' * 20}\n"
            f"E   AssertionError\nFAILED {test_id} - AssertionError\n1 failed in {seconds}"
        )
    return _bash(f"python -m pytest -q {test_id}", output, 0 if passed else 1, workdir)


def test_outcome_pairs(
    tasks: Sequence[Any], heldout_fraction: float = 0.3, seed: int = 0, edit_command: Any = None
) -> tuple[list[PairRecord], list[PairRecord]]:
    """(train pairs, held-out pairs): "did the test pass?" pairs over the tasks' FAIL_TO_PASS and PASS_TO_PASS tests.

    For each test of each task, two pairs, one per answer ("… passes." / "… fails."): both contexts are the same
    trajectory excerpt on that task — the agent's edit (`edit_command(task)`, default: none shown), then a pytest
    run of that test — except for the run's outcome; the positive is the one whose outcome the answer states. So the
    label is in neither the query, nor the answer alone, nor one context alone (a passing run is the positive half the
    time): only answer and contexts together give it. Test ids are split between train and held-out (`seed`), so
    held-out pairs are about tests the training pairs never showed.
    """
    rng = random.Random(seed)
    items = [
        (task, test_id)
        for task in tasks
        for test_id in dict.fromkeys(list(task.FAIL_TO_PASS) + list(task.PASS_TO_PASS))
    ]
    test_ids = sorted({test_id for _, test_id in items})
    rng.shuffle(test_ids)
    heldout_ids = set(test_ids[: round(len(test_ids) * heldout_fraction)])
    out: dict[str, list[PairRecord]] = {"train": [], "heldout": []}
    for task, test_id in items:
        split = "heldout" if test_id in heldout_ids else "train"
        workdir = getattr(task, "workdir", "/testbed")
        prefix = ""
        if edit_command is not None:
            prefix = _bash(edit_command(task), "", 0, workdir) + "\n"
        runs = {passed: prefix + _test_run(test_id, passed, workdir, rng) for passed in (True, False)}
        for passed in (True, False):
            out[split].append(
                PairRecord(
                    pair_id=f"test-outcome-{split}-{len(out[split])}",
                    query=f"{_title(task)}\nWhat happened when the agent ran `{test_id}` after its change?",
                    answer=f"The test {test_id.rsplit('::', 1)[-1]} {'passes' if passed else 'fails'}.",
                    positive=runs[passed],
                    negative=runs[not passed],
                    provenance={
                        "source": "synthetic-test-outcome",
                        "split": split,
                        "task": task.instance_id,
                        "test": test_id,
                        "answer_outcome": "passed" if passed else "failed",
                    },
                    funnel_stage="synthetic",
                )
            )
    return out["train"], out["heldout"]


def synthetic_pairs(
    tasks: Sequence[Any],
    heldout_fraction: float = 0.3,
    seed: int = 0,
) -> tuple[list[PairRecord], list[PairRecord]]:
    """The embedded default's pairs: `test_outcome_pairs` (train, held-out)."""
    return test_outcome_pairs(tasks, heldout_fraction=heldout_fraction, seed=seed)


def line_lookup_pairs(
    tasks: Sequence[Any],
    heldout_fraction: float = 0.3,
    seed: int = 0,
) -> tuple[list[PairRecord], list[PairRecord]]:
    """(train pairs, held-out pairs) of line lookups (see the module docstring). Lines are split between the two sets
    first (by `seed`), then each line is the positive of one pair whose negative is a line of another task of the
    same repository from the same split, preferring the same file. Repositories with a single task give no pairs."""
    rng = random.Random(seed)
    by_task = {task.instance_id: task for task in tasks}
    unique: dict[tuple[str, str], SourceLine] = {}
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for task in tasks:
        for line in source_lines(task):
            key = (line.repo, line.text.strip())
            counts[key] += 1
            unique.setdefault(key, line)
    # A line text shown by several tasks cannot tell them apart: drop it.
    lines = [line for key, line in unique.items() if counts[key] == 1]
    lines.sort(key=lambda line: (line.task_id, line.path, line.number))
    rng.shuffle(lines)
    cut = round(len(lines) * heldout_fraction)
    splits = {"heldout": lines[:cut], "train": lines[cut:]}
    out: dict[str, list[PairRecord]] = {}
    for split, members in splits.items():
        pairs = []
        for index, positive in enumerate(members):
            others = [line for line in members if line.repo == positive.repo and line.task_id != positive.task_id]
            if not others:
                continue
            same_file = [line for line in others if line.path == positive.path]
            negative = rng.choice(same_file or others)
            # The query speaks of either task, so the query alone does not give the label away.
            asked = by_task[rng.choice([positive.task_id, negative.task_id])]
            workdir = getattr(by_task[positive.task_id], "workdir", "/testbed")
            pairs.append(
                PairRecord(
                    pair_id=f"synthetic-{split}-{index}",
                    query=f"{_title(asked)}\nWhich source line did the agent print while working on this?",
                    answer=f"{positive.path}, line {positive.number}: {positive.text.strip()}",
                    positive=_context(positive, workdir),
                    negative=_context(negative, workdir),
                    provenance={
                        "source": "synthetic-line-lookup",
                        "split": split,
                        "repo": positive.repo,
                        "positive_task": positive.task_id,
                        "negative_task": negative.task_id,
                        "positive_line": f"{positive.path}:{positive.number}",
                        "negative_line": f"{negative.path}:{negative.number}",
                    },
                    funnel_stage="synthetic",
                )
            )
        out[split] = pairs
    return out["train"], out["heldout"]
