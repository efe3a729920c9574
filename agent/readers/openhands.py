"""SWE-Gym OpenHands sampled trajectories (SWE-Gym/OpenHands-Sampled-Trajectories; OpenHands CodeAct, GPT-4o).

A record: `instance_id`, `run_id`, `resolved`, `messages` (OpenAI format with native `tool_calls` and `tool`
results), `tools`, `test_result` (`git_patch`, `report`, `test_output`, `apply_patch_output`). The messages are
already in our format: the reader drops None-valued keys (`function_call`, `index`, …), turns a None content into ""
and removes the None-valued entries pydantic left in the tool schemas (a tool without parameters gets an empty
object schema). Tool output is kept verbatim (it starts with `OBSERVATION:`).

- task_id: `instance_id` without the `_<n>` the agent-data-protocol export appends (that n becomes `group`; the
  original id is kept as `source_instance_id`); episode_id: `<task_id>/<run_id>` (a content hash without
  a run_id).
- model and max_iterations come from the run name OpenHands' evaluation writes, `<model>_maxiter_<n>_N_<version>…`;
  an episode whose last assistant turn calls no `finish` and that used all its iterations is truncated `max_turns`.
- resolved: `resolved`, else `test_result.report.resolved`; patch: `test_result.git_patch` (checked as in
  `common.checked_patch`); test_report: `test_result`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.readers.common import (
    checked_patch,
    content_hash,
    count_turns,
    drop_none,
    malformed_structured_calls,
    normalize_message,
    read_with,
    require,
    reward_of,
    split_instance_id,
)
from agent.trajectory import Trajectory, TruncationReason

SOURCE = "swe-gym-openhands"
FINISH_TOOLS = ("finish",)

_RUN_NAME = re.compile(r"(.+?)_maxiter_(\d+)_N_")


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        return []
    tools = []
    for tool in drop_none(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            function.setdefault("parameters", {"type": "object", "properties": {}})
        tools.append(tool)
    return tools


def convert(record: dict[str, Any]) -> Trajectory:
    require(record, "instance_id", "messages")
    if not isinstance(record["messages"], list):
        raise ValueError("'messages' must be a list")
    messages = [normalize_message(message, index) for index, message in enumerate(record["messages"])]
    task_id, group = split_instance_id(record["instance_id"])
    run_id = record.get("run_id") or ""
    test_result = record.get("test_result") if isinstance(record.get("test_result"), dict) else None
    report = (test_result or {}).get("report")
    resolved = record.get("resolved")
    if resolved is None and isinstance(report, dict):
        resolved = report.get("resolved")
    turns, calls = count_turns(messages)

    extra: dict[str, Any] = {}
    model = record.get("model") or ""
    truncation: TruncationReason | None = None
    run = _RUN_NAME.match(run_id)
    if run:
        model = model or run.group(1)
        extra["max_iterations"] = max_iterations = int(run.group(2))
        last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
        finished = last is not None and any(c["function"]["name"] in FINISH_TOOLS for c in last.get("tool_calls", []))
        if not finished and turns >= max_iterations:
            truncation = "max_turns"
    if run_id:
        extra["run_id"] = run_id
    if group is not None:
        extra["source_instance_id"] = record["instance_id"]
    patch, patch_extra = checked_patch((test_result or {}).get("git_patch"), messages)
    extra.update(patch_extra)
    return Trajectory(
        task_id=task_id,
        group=group or 0,
        episode_id=f"{task_id}/{run_id or content_hash(messages)}",
        messages=messages,
        tools=_tools(record.get("tools")),
        reward=reward_of(resolved),
        resolved=resolved,
        test_report=test_result,
        truncation=truncation,
        num_turns=turns,
        num_tool_calls=calls,
        malformed_tool_calls=malformed_structured_calls(messages),
        model=model,
        source=SOURCE,
        patch=patch,
        **extra,
    )


def read(path: str | Path) -> Iterator[Trajectory]:
    return read_with(path, convert)
