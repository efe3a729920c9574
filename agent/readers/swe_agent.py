"""nebius/SWE-agent-trajectories (SWE-agent 0.x runs of SWE-agent-LM models on SWE-bench-style tasks).

A record: `instance_id`, `model_name`, `target` (resolved), `exit_status`, `generated_patch`, `eval_logs` and
`trajectory`, a list of `{role: system|user|ai, text, system_prompt, mask, cutoff_date}` (the system turn's text is in
`system_prompt`). Roles map system/user/ai -> system/user/assistant.

Actions are text: SWE-agent runs the last top-level ``` block of an `ai` message in its shell (its
ThoughtActionParser). Such a message gets one tool call `bash {"command": <block text>}` (the `bash` tool is
synthesized into `tools`: there is no schema in the source) and keeps the text around the block as content; the user
message right after it is the command's output (role `tool`, verbatim, with SWE-agent's `(Open file: …)` prompt
lines). An `ai` message without a complete block stays text and counts as malformed.

- task_id: `instance_id` without the `_<n>` the agent-data-protocol export appends (n -> `group`, the original id ->
  `source_instance_id`); episode_id: `<task_id>/<hash of trajectory, model and patch>` (the set has no id).
- resolved: `target`; patch: `generated_patch` (checked as in `common.checked_patch`); test_report:
  `{"eval_logs": …}`; `exit_status` kept as an extra key (`exit_context` -> truncation `context_full`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.readers.common import (
    SHELL_TOOL,
    checked_patch,
    content_hash,
    count_turns,
    link_text_actions,
    malformed_structured_calls,
    normalize_message,
    parse_fenced_action,
    read_with,
    require,
    reward_of,
    split_instance_id,
)
from agent.trajectory import Trajectory

SOURCE = "swe-agent"
ROLES = {"system": "system", "user": "user", "ai": "assistant", "assistant": "assistant", "tool": "tool"}


def _message(step: Any, index: int) -> dict[str, Any]:
    if not isinstance(step, dict) or step.get("role") not in ROLES:
        role = step.get("role") if isinstance(step, dict) else None
        raise ValueError(f"trajectory step {index}: unknown role {role!r} (expected one of {sorted(ROLES)})")
    text = step.get("text")
    if text is None:
        text = step.get("content")
    if text is None and step["role"] == "system":
        text = step.get("system_prompt")
    return normalize_message({**step, "role": ROLES[step["role"]], "content": text}, index)


def convert(record: dict[str, Any]) -> Trajectory:
    require(record, "instance_id", "trajectory")
    if not isinstance(record["trajectory"], list):
        raise ValueError("'trajectory' must be a list")
    messages = [_message(step, index) for index, step in enumerate(record["trajectory"])]
    if any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        tools: list[dict[str, Any]] = []  # a function-calling export: the calls are structured already
        malformed = malformed_structured_calls(messages)
    else:
        tools = [SHELL_TOOL]
        malformed = link_text_actions(messages, parse_fenced_action)
    task_id, group = split_instance_id(record["instance_id"])
    turns, calls = count_turns(messages)
    resolved = record.get("target")
    exit_status = record.get("exit_status")
    extra: dict[str, Any] = {}
    if exit_status is not None:
        extra["exit_status"] = exit_status
    if group is not None:
        extra["source_instance_id"] = record["instance_id"]
    patch, patch_extra = checked_patch(record.get("generated_patch"), messages)
    extra.update(patch_extra)
    return Trajectory(
        task_id=task_id,
        group=group or 0,
        episode_id=f"{task_id}/"
        + content_hash(record["trajectory"], record.get("model_name"), record.get("generated_patch")),
        messages=messages,
        tools=tools,
        reward=reward_of(resolved),
        resolved=resolved,
        test_report={"eval_logs": record["eval_logs"]} if record.get("eval_logs") else None,
        truncation="context_full" if isinstance(exit_status, str) and "exit_context" in exit_status else None,
        num_turns=turns,
        num_tool_calls=calls,
        malformed_tool_calls=malformed,
        model=record.get("model_name") or record.get("model") or "",
        source=SOURCE,
        patch=patch,
        **extra,
    )


def read(path: str | Path) -> Iterator[Trajectory]:
    return read_with(path, convert)
