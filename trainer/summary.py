"""Start vs end of a run from its metrics rows: the numbers that say whether it learned (summary.json, the console,
trainer.compare). Free of torch, so comparing runs needs only the metrics files."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

SUCCESS_EVAL_TASK_PREFIX = "success_eval_by_task/"
"""Metrics-row key prefix of one task's share resolved in the success evaluation (the rest of the key: its id)."""


def start_end_summary(rows: list[dict[str, Any]], window: int | None = None) -> dict[str, Any]:
    """Start vs end of the curves that show learning: the success rate — the success evaluation's before the first
    step and after the last when the run made both (`success_eval_episodes`), else the mean of the first and of the
    last `window` steps' rollouts — and the held-out selection accuracy (before RL, i.e. the step-0 row, and after
    the last step).

    window: None takes one pass over the task set — the steps until the first step's tasks come up again (tasks are
    drawn in epoch order, `tasks_per_step` at a time) — so both ends average over the same tasks: one step's success
    says more about which tasks it drew than about the policy. At most half the steps."""
    steps = [row for row in rows if row["step"] > 0]
    out: dict[str, Any] = {"steps": len(steps)}
    if steps:
        if window is None:
            seen: set[str] = set()
            window = 0
            for row in steps:
                if set(row.get("tasks") or []) <= seen and window:
                    break
                seen |= set(row.get("tasks") or [])
                window += 1
        window = max(1, min(window, len(steps) // 2 or 1))
        out["success_rate"] = {
            "start": statistics.fmean(r["success_rate"] for r in steps[:window]),
            "end": statistics.fmean(r["success_rate"] for r in steps[-window:]),
            "window_steps": window,
        }
    evaluations = [row for row in rows if "success_eval" in row]
    if len(evaluations) >= 2 and evaluations[0]["step"] == 0:
        out["success_eval"] = {
            "start": evaluations[0]["success_eval"],
            "end": evaluations[-1]["success_eval"],
            "start_by_task": _by_task(evaluations[0]),
            "end_by_task": _by_task(evaluations[-1]),
        }
    accuracy = [
        row["heldout_ca_accuracy"]
        for row in rows
        if row.get("heldout_ca_accuracy") == row.get("heldout_ca_accuracy") and "heldout_ca_accuracy" in row
    ]
    if accuracy:
        out["heldout_ca_accuracy"] = {"start": accuracy[0], "end": accuracy[-1]}
    return out


def _by_task(row: dict[str, Any]) -> dict[str, float]:
    return {
        key[len(SUCCESS_EVAL_TASK_PREFIX) :]: value
        for key, value in row.items()
        if key.startswith(SUCCESS_EVAL_TASK_PREFIX)
    }


def print_summary(summary: dict[str, Any], output_dir: Path) -> None:
    """Start vs end, the numbers that say whether the run learned."""
    lines = [f"after {summary.get('steps', 0)} steps:"]
    if "success_eval" in summary:
        e = summary["success_eval"]
        lines.append(
            f"  success rate (evaluation of {len(e['start_by_task'])} tasks, fixed seeds): start {e['start']:.2f} "
            f"-> end {e['end']:.2f}"
        )
        lines.extend(
            f"    {task}: {e['start_by_task'][task]:.2f} -> {e['end_by_task'].get(task, float('nan')):.2f}"
            for task in e["start_by_task"]
        )
    if "success_rate" in summary:
        s = summary["success_rate"]
        lines.append(
            f"  success rate (training rollouts, mean of {s['window_steps']} steps): start {s['start']:.2f} "
            f"-> end {s['end']:.2f}"
        )
    if "heldout_ca_accuracy" in summary:
        a = summary["heldout_ca_accuracy"]
        lines.append(f"  held-out context-selection accuracy: start {a['start']:.2f} -> end {a['end']:.2f}")
    lines.append(f"  metrics: {output_dir / 'metrics.jsonl'}  plot: {output_dir / 'metrics.png'}")
    print("\n".join(lines), flush=True)
