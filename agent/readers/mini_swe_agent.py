"""mini-swe-agent runs, in that agent's own output layout (`mini-extra swebench` writes it).

A run folder holds `<instance_id>/<instance_id>.traj.json`, one trajectory per instance (usually under `trajs/`),
plus files that are not trajectories: the predictions (`preds.json`, a mapping instance id → `model_patch`; some
exports name it `trajs/trajs.traj.json`), SWE-bench evaluation reports and the run's results table. A trajectory
file: `instance_id`, `trajectory_format` (`mini-swe-agent-1`, …), `info` (`exit_status`, `submission` = the final
patch, `model_stats`, `config`) and `messages` (role/content; each message's `extra` holds the raw API response, which
is dropped).

Actions are text: the agent runs the one ```bash block of an assistant message (mini-swe-agent rejects a message
with none or several and answers with a format error). Such a message gets one tool call `bash {"command": …}` and
keeps its THOUGHT text as content; the user message right after it is the command's output (role `tool`, verbatim:
`<returncode>…</returncode><output>…</output>`). A message with no block or several stays text and counts as
malformed. A run of the tool-calling versions (`tool_calls` on messages) is kept as it is.

- task_id: `instance_id`; episode_id: `<instance_id>/<hash of messages and submission>` (the layout has no run id).
- patch: `info.submission` (checked as in `common.checked_patch`); model: `info.config.model.model_name`.
- resolved: the record's own `resolved` when present, else the run's results (`read_results`), which `iter_run`
  attaches by instance id: the SWE-bench harness report (`{instance: {"resolved": bool}}`), an sb-cli report
  (`resolved_ids` / `unresolved_ids`), or a CSV with `instance_id` and `resolved` columns. Found in the run folder
  when not given; an instance none of them names stays `resolved=None` (unknown, not failed).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.readers.common import (
    SHELL_TOOL,
    ParsedAction,
    ReaderError,
    checked_patch,
    content_hash,
    count_turns,
    link_text_actions,
    malformed_structured_calls,
    normalize_message,
    require,
    reward_of,
)
from agent.trajectory import Trajectory

SOURCE = "mini-swe-agent"
TRAJ_SUFFIX = ".traj.json"
RESULT_CSV_NAMES = ("results_summary.csv", "results.csv")
"""Results tables looked for in a run folder (instance_id,resolved columns)."""

_BASH_BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)


def parse_bash_action(text: str) -> ParsedAction | None:
    """mini-swe-agent's action parser: exactly one ```bash block, else a format error (None). The thought is the
    text around the block, right-stripped."""
    blocks = list(_BASH_BLOCK.finditer(text))
    if len(blocks) != 1:
        return None
    block = blocks[0]
    thought = (text[: block.start()] + text[block.end() :]).rstrip()
    return thought, SHELL_TOOL["function"]["name"], {"command": block.group(1)}


def is_trajectory(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("messages"), list)
        and (
            str(record.get("trajectory_format", "")).startswith("mini-swe-agent")
            or isinstance(record.get("info"), dict)
        )
    )


def convert(record: dict[str, Any]) -> Trajectory:
    require(record, "instance_id", "messages")
    info = record.get("info")
    if not isinstance(info, dict):
        info = {}
    messages = [normalize_message(message, index) for index, message in enumerate(record["messages"])]
    if any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        tools: list[dict[str, Any]] = []
        malformed = malformed_structured_calls(messages)
    else:
        tools = [SHELL_TOOL]
        malformed = link_text_actions(messages, parse_bash_action)
    turns, calls = count_turns(messages)
    resolved = record.get("resolved") if isinstance(record.get("resolved"), bool) else None
    submission = info.get("submission")
    patch, extra = checked_patch(submission, messages)
    if info.get("exit_status") is not None:
        extra["exit_status"] = info["exit_status"]
    config = info.get("config")
    if not isinstance(config, dict):
        config = {}
    model_config = config.get("model")
    if not isinstance(model_config, dict):
        model_config = {}
    instance_id = record["instance_id"]
    return Trajectory(
        task_id=instance_id,
        episode_id=f"{instance_id}/"
        + content_hash([m.get("content") for m in record["messages"] if isinstance(m, dict)], submission),
        messages=messages,
        tools=tools,
        reward=reward_of(resolved),
        resolved=resolved,
        num_turns=turns,
        num_tool_calls=calls,
        malformed_tool_calls=malformed,
        model=str(model_config.get("model_name") or ""),
        source=SOURCE,
        patch=patch,
        **extra,
    )


# ---------------------------------------------------------------------------------------------------- run folders


def read_results(path: str | Path) -> dict[str, bool]:
    """instance id → resolved, from a results CSV, an sb-cli report or a SWE-bench harness report (JSON)."""
    path = Path(path)
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            if rows and not {"instance_id", "resolved"} <= set(rows[0]):
                raise ReaderError(
                    f"{path}: a results CSV needs instance_id and resolved columns, found {sorted(rows[0])}"
                )
            return {row["instance_id"]: row["resolved"].strip().lower() in ("true", "1", "yes") for row in rows}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise ReaderError(f"{path}: cannot read the results: {exc}") from None
    results = results_from_json(data)
    if results is None:
        raise ReaderError(
            f"{path}: not a results file (expected an sb-cli report with resolved_ids, a harness "
            f"report {{instance: {{resolved: …}}}} or a CSV)"
        )
    return results


def results_from_json(data: Any) -> dict[str, bool] | None:
    """Resolved flags from a parsed sb-cli report or harness report; None when `data` is neither."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("resolved_ids"), list):
        results = {str(i): False for i in data.get("unresolved_ids") or [] if isinstance(i, str)}
        results.update({str(i): True for i in data["resolved_ids"] if isinstance(i, str)})
        return results
    values = [value for value in data.values() if isinstance(value, dict)]
    if values and len(values) == len(data) and all(isinstance(v.get("resolved"), bool) for v in values):
        return {key: value["resolved"] for key, value in data.items()}
    return None


@dataclass
class RunFolder:
    """What a run folder holds: its trajectory files (sorted, so record indices are stable across passes), the
    files that are not trajectories, and the resolved flags found in it."""

    root: Path
    files: list[Path]
    results: dict[str, bool] = field(default_factory=dict)
    results_from: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Files named like trajectories that are not (predictions, reports), with what they are."""


def scan_run(root: str | Path, results: str | Path | None = None) -> RunFolder:
    """The trajectory files under a run folder (any depth, `*.traj.json`) and the run's resolved flags: `results`
    when given, else every results table and report found in the folder (later ones fill gaps only)."""
    root = Path(root)
    if not root.is_dir():
        raise ReaderError(f"{root}: not a directory")
    run = RunFolder(root=root, files=[])
    if results is not None:
        run.results = read_results(results)
        run.results_from.append(str(results))
    for name in RESULT_CSV_NAMES:
        if results is None and (root / name).is_file():
            _fill(run, read_results(root / name), str(root / name))
    for path in sorted(root.rglob(f"*{TRAJ_SUFFIX}")):
        kind = _sniff_file(path)
        if kind == "trajectory":
            run.files.append(path)
            continue
        run.skipped.append(f"{path.relative_to(root)} ({kind})")
        if kind == "report" and results is None:
            report = results_from_json(json.loads(path.read_text(encoding="utf-8")))
            if report:
                _fill(run, report, str(path))
    return run


def _fill(run: RunFolder, found: dict[str, bool], where: str) -> None:
    new = {key: value for key, value in found.items() if key not in run.results}
    if new:
        run.results.update(new)
        run.results_from.append(where)


def _sniff_file(path: Path) -> str:
    """`trajectory`, `predictions`, `report` or `unknown`, from the file's top-level keys (read whole: these files
    are a few MB at most)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReaderError(f"{path}: cannot read: {exc}") from None
    if is_trajectory(data):
        return "trajectory"
    if results_from_json(data) is not None:
        return "report"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "model_patch" in v for v in data.values()):
        return "predictions"
    return "unknown"


def iter_run(run: RunFolder, wanted: set[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, record) per trajectory file in the run's sorted order (only the `wanted` indices when given: the others
    are not opened), with the run's resolved flag attached when the record has none."""
    for index, path in enumerate(run.files):
        if wanted is not None and index not in wanted:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReaderError(f"{path}: record {index}: cannot read: {exc}") from None
        instance = record.get("instance_id") if isinstance(record, dict) else None
        if isinstance(instance, str) and "resolved" not in record and instance in run.results:
            record["resolved"] = run.results[instance]
        yield index, record


def read(root: str | Path, results: str | Path | None = None) -> Iterator[Trajectory]:
    """Stream a run folder's trajectories (or one `.traj.json` file's)."""
    root = Path(root)
    if root.is_file():
        run = RunFolder(root=root.parent, files=[root], results=read_results(results) if results else {})
    else:
        run = scan_run(root, results)
    for index, record in iter_run(run):
        try:
            yield convert(record)
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ReaderError(f"{run.files[index]}: record {index}: {reason}") from exc
